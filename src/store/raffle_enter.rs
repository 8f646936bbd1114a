//! A raffle's door: entering, group-committed like queue joins and purchases.
//!
//! Entering moves no counter: an entry is one row, inserted with ON CONFLICT DO NOTHING.
//! What an entry batch does hold is the sale row's lock, from before it checks the window
//! to its commit: it fences the entries against the draw's close (see [`enter_batch`]) and
//! numbers the batch's `raffle.entered` events (the outbox's per-sale sequence). So the
//! entries of one sale that arrive while its previous batch is in the database are decided
//! together: one lock and one commit (one WAL flush) for up to [`MAX_ENTRY_BATCH`]
//! entrants, each answered after that commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::allowlist::lock_listed;
use super::batcher::{self, Batchers, claim};
use super::db::Db;
use super::raffle::{ENTRY_COLUMNS, EntryRow};
use super::sale_refs::{SaleRefs, Target, VariantRefusal};
use super::sales::{SALE_COLUMNS, SaleRow};
use super::{Store, StoreError, deadline_missed};
use crate::domain::{Checkout, RaffleEntry, RaffleStatus, Sale, SaleState};

/// Most entries decided by one batch.
pub const MAX_ENTRY_BATCH: usize = 2048;
/// Most entries waiting for one sale's batcher on one instance (then 503 at once).
const MAX_ENTRIES_WAITING: usize = 4 * MAX_ENTRY_BATCH;

/// The result of entering a raffle.
#[derive(Debug, Clone)]
pub enum EnterOutcome {
    /// A new entry.
    Entered(RaffleEntry),
    /// The buyer had entered already: their entry as it is now (entering is idempotent;
    /// the first quantity stays).
    Existing(RaffleEntry),
    /// The buyer withdrew: a withdrawn entrant may not enter again.
    Withdrawn(RaffleEntry),
    /// Outside the entry window (scheduled, ended), cancelled or archived.
    NotAccepting(SaleState),
    /// More units than the sale's `max_per_order`.
    QuantityTooLarge {
        max_per_order: i32,
    },
    /// The sale has an allow-list and the buyer is not on it.
    NotEligible,
    /// The sale has variants and the entry names none.
    VariantRequired,
    /// The entry names a variant the sale does not have (or the sale has none).
    UnknownVariant,
    WrongCheckout,
    SaleNotFound,
}

impl EnterOutcome {
    fn of_existing(entry: RaffleEntry) -> Self {
        if entry.status == RaffleStatus::Withdrawn {
            EnterOutcome::Withdrawn(entry)
        } else {
            EnterOutcome::Existing(entry)
        }
    }
}

/// A buyer's outcome, and whether the sale was live (not archived, not gone) when decided.
type Reply = batcher::Reply<(EnterOutcome, bool)>;

struct EntryRequest {
    user_id: String,
    /// Units, and the variant's code (in a raffle with variants).
    ask: (i32, Option<String>),
    reply: Reply,
}

/// The door of every raffle: group commit of entries, per sale.
#[derive(Clone)]
pub struct EntryBatcher {
    store: Store,
    batchers: Batchers<EntryRequest>,
    /// `{sale}` references, resolved once a second at most.
    refs: SaleRefs,
    /// Longest wait for an entry's answer; past it the outcome is unknown if it was sent (a
    /// retry returns the entry if it committed: entering is idempotent).
    answer_timeout: Duration,
}

impl EntryBatcher {
    pub fn new(store: Store, answer_timeout: Duration) -> Self {
        Self {
            refs: SaleRefs::new(store.clone()),
            store,
            batchers: Batchers::new(MAX_ENTRY_BATCH, MAX_ENTRIES_WAITING),
            answer_timeout,
        }
    }

    /// Enters the raffle `sale_ref` (its id or sku) for `quantity` units, or returns the
    /// buyer's entry. As for joins, an answer decided through a cached reference that found
    /// the sale archived or gone is thrown away and the reference read again.
    pub async fn enter(
        &self,
        sale_ref: &str,
        user_id: &str,
        quantity: i32,
    ) -> Result<EnterOutcome, StoreError> {
        self.enter_variant(sale_ref, user_id, quantity, None).await
    }

    /// [`EntryBatcher::enter`] for units of the variant `variant` (its code): a raffle with
    /// variants needs one, one without takes none. A buyer who entered keeps their first
    /// quantity and variant.
    pub async fn enter_variant(
        &self,
        sale_ref: &str,
        user_id: &str,
        quantity: i32,
        variant: Option<&str>,
    ) -> Result<EnterOutcome, StoreError> {
        let Some(target) = self.refs.resolve(sale_ref, false).await? else {
            return Ok(EnterOutcome::SaleNotFound);
        };
        let (outcome, sale_unarchived) = self
            .enter_in(target.clone(), user_id, quantity, variant)
            .await?;
        if sale_unarchived || !target.cached {
            return Ok(outcome);
        }
        match self.refs.resolve(sale_ref, true).await? {
            Some(fresh) => Ok(self.enter_in(fresh, user_id, quantity, variant).await?.0),
            None => Ok(EnterOutcome::SaleNotFound),
        }
    }

    async fn enter_in(
        &self,
        target: Target,
        user_id: &str,
        quantity: i32,
        variant: Option<&str>,
    ) -> Result<(EnterOutcome, bool), StoreError> {
        if target.checkout != Checkout::Raffle {
            return Ok((EnterOutcome::WrongCheckout, true));
        }
        // A sale's variants never change (a cached target is checked again fresh).
        match target.variant_position(variant) {
            Ok(_) => {}
            Err(VariantRefusal::Required) => return Ok((EnterOutcome::VariantRequired, false)),
            Err(VariantRefusal::Unknown) => return Ok((EnterOutcome::UnknownVariant, false)),
        }
        if quantity > target.max_per_order {
            let max_per_order = target.max_per_order;
            return Ok((EnterOutcome::QuantityTooLarge { max_per_order }, true));
        }
        let (reply, answer) = batcher::reply_channel();
        let answer_by = Instant::now() + self.answer_timeout;
        let request = EntryRequest {
            user_id: user_id.to_string(),
            ask: (quantity, variant.map(str::to_string)),
            reply,
        };
        self.batchers.send(target.id, request, || {
            let (store, timeout) = (self.store.clone(), self.answer_timeout);
            move |sale_id, batch| decide(store.clone(), timeout, sale_id, batch)
        })?;
        answer.wait_until(answer_by).await
    }
}

/// Decides one batch and answers every request in it, after the commit.
async fn decide(store: Store, timeout: Duration, sale_id: Uuid, batch: Vec<EntryRequest>) {
    let cut_off = Instant::now() + timeout;
    // One entry per user: a user's extra requests in the batch are repeats of the first.
    let mut by_user: HashMap<String, Vec<Reply>> = HashMap::new();
    let mut users = Vec::new();
    let mut quantities = Vec::new();
    for request in batch {
        let replies = by_user.entry(request.user_id.clone()).or_default();
        if replies.is_empty() {
            users.push(request.user_id);
            quantities.push(request.ask);
        }
        replies.push(request.reply);
    }
    let result = async {
        let mut conn = store.conn_until(cut_off).await?;
        // From here the entries go out: callers who already gave up are left out.
        claim(&mut by_user);
        let (users, quantities): (Vec<String>, Vec<(i32, Option<String>)>) = users
            .into_iter()
            .zip(quantities)
            .filter(|(user, _)| by_user.contains_key(user))
            .unzip();
        if users.is_empty() {
            return Ok((HashMap::new(), true));
        }
        let committing = AtomicBool::new(false);
        let entered = enter_batch(&mut conn, sale_id, (&users, &quantities), &committing);
        match tokio::time::timeout_at(cut_off, entered).await {
            Ok(result) => result,
            Err(_) => {
                let committing = committing.load(Ordering::Acquire);
                Err(deadline_missed(&mut conn, committing, "entry batch"))
            }
        }
    }
    .await;
    match result {
        Ok((mut outcomes, sale_unarchived)) => {
            for (user, replies) in by_user {
                let outcome = outcomes.remove(&user).unwrap_or(EnterOutcome::SaleNotFound);
                for reply in replies {
                    let _ = reply.send(Ok((outcome.clone(), sale_unarchived)));
                }
            }
        }
        Err(err) => {
            let callers = by_user.values().map(Vec::len).sum();
            err.log_batch_failure("entry batch", sale_id, callers);
            for reply in by_user.into_values().flatten() {
                let _ = reply.send(Err(err.copy_for_caller()));
            }
        }
    }
}

/// Enters each of `users` (distinct, in arrival order, each for its quantity), or answers
/// with their entry: one transaction, one lock of the sale row, one commit. Returns each
/// user's outcome and whether the sale is live (not archived, not gone).
///
/// Race-free under READ COMMITTED, with any number of batches on any number of
/// instances, and no entry ever slips in after the draw began:
/// 1. The sale row is locked (FOR NO KEY UPDATE) and held to the commit; then the sale is
///    read with the clock *after* the lock (`clock_timestamp()`), by a statement of its
///    own. The draw's close ([`super::raffle_tick`]) takes the same lock and records the
///    close only if the clock after its lock has reached `ends_at`. Either this batch
///    locked first, saw the window open, and committed before the close could lock (the
///    draw sees these entries), or the close locked first, and this batch's clock after
///    the lock is past `ends_at`: refused. A cancel or an archive updates the same row,
///    so each committed before this read (refused) or waits for this commit.
/// 2. New entries are inserted with ON CONFLICT DO NOTHING on (sale, user): another
///    batch's entry of the same buyer committed before this lock (batches of a sale run
///    one after the other on it), so a repeat inserts nothing and burns nothing; it is
///    read back below.
/// 3. Nothing else moves: no counter, no shared row but the sale's event numbering (the
///    outbox trigger, under the lock already held).
async fn enter_batch(
    conn: &mut Db,
    sale_id: Uuid,
    (users, asks): (&[String], &[(i32, Option<String>)]),
    committing: &AtomicBool,
) -> Result<(HashMap<String, EnterOutcome>, bool), StoreError> {
    let mut tx = conn.begin().await?;
    // An allow-listed sale: its buyers' list rows, locked before the sale row to the commit
    // (see `lock_listed`). An entrant removed later keeps their entry, as a queued buyer
    // keeps their place.
    let listed = lock_listed(&mut tx, sale_id, users).await?;
    // The draw's close is recorded too: once it began, nothing enters, whatever the clock
    // says (a database clock stepped back below `ends_at` would otherwise let an entry in
    // that the draw never ranks).
    let raffle: Option<(i64, bool)> = sqlx::query_as(
        "SELECT r.draw_seed, r.draw_started_at IS NOT NULL
           FROM sales s JOIN sale_raffles r ON r.sale_id = s.id
          WHERE s.id = $1 FOR NO KEY UPDATE OF s",
    )
    .bind(sale_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (seed, drawing) = raffle.unzip();
    let sql = format!(
        "SELECT {} FROM sales WHERE id = $1",
        SALE_COLUMNS.replace("now() AS observed_at", "clock_timestamp() AS observed_at")
    );
    // Built from constant text only.
    let sale: Option<SaleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
    let (Some(seed), Some(sale)) = (seed, sale.map(Sale::from)) else {
        tx.commit().await?;
        let gone = users
            .iter()
            .map(|user| (user.clone(), EnterOutcome::SaleNotFound));
        return Ok((gone.collect(), false));
    };
    let sale_unarchived = sale.archived_at.is_none();
    let state = match sale.state() {
        SaleState::Active if drawing == Some(true) => SaleState::Ended,
        state => state,
    };
    let mut outcomes = HashMap::new();
    let eligible = |user: &String| !sale.allowlist || listed.contains(user);
    let (users_in, asks_in): (Vec<String>, Vec<&(i32, Option<String>)>) = users
        .iter()
        .zip(asks)
        .filter(|(user, _)| eligible(user))
        .map(|(user, ask)| (user.clone(), ask))
        .unzip();
    let quantities_in: Vec<i32> = asks_in.iter().map(|(quantity, _)| *quantity).collect();
    let variants_in: Vec<Option<&str>> = asks_in.iter().map(|(_, v)| v.as_deref()).collect();
    if state == SaleState::Active && !users_in.is_empty() {
        let sql = format!(
            "WITH entered AS (
                 INSERT INTO raffle_entries AS e
                        (sale_id, user_id, quantity, status, draw_key, variant)
                 SELECT $1, r.user_id, r.quantity, 'entered',
                        decode(md5($4::bigint::text || r.user_id), 'hex'), r.variant
                   FROM unnest($2::text[], $3::int[], $5::text[])
                        WITH ORDINALITY AS r(user_id, quantity, variant, ord)
                  ORDER BY r.ord
                 ON CONFLICT (sale_id, user_id) DO NOTHING
                 RETURNING e.*
             )
             SELECT {ENTRY_COLUMNS} FROM entered e, sale_raffles r WHERE r.sale_id = $1"
        );
        // Built from constant text only.
        let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(&users_in)
            .bind(&quantities_in)
            .bind(seed)
            .bind(&variants_in)
            .fetch_all(&mut *tx)
            .await?;
        for entry in rows.into_iter().map(RaffleEntry::from) {
            outcomes.insert(entry.user_id.clone(), EnterOutcome::Entered(entry));
        }
    }
    let repeaters: Vec<&str> = users
        .iter()
        .filter(|user| !outcomes.contains_key(*user))
        .map(String::as_str)
        .collect();
    if !repeaters.is_empty() {
        // One primary-key probe per buyer (as the join batch's, whatever the statistics).
        let sql = format!(
            "SELECT {ENTRY_COLUMNS}
               FROM unnest($2::text[]) b(user_id)
              CROSS JOIN LATERAL (SELECT * FROM raffle_entries x
                                   WHERE x.sale_id = $1 AND x.user_id = b.user_id) e
               JOIN sale_raffles r ON r.sale_id = e.sale_id"
        );
        // Built from constant text only.
        let rows: Vec<EntryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(&repeaters)
            .fetch_all(&mut *tx)
            .await?;
        for entry in rows.into_iter().map(RaffleEntry::from) {
            outcomes.insert(entry.user_id.clone(), EnterOutcome::of_existing(entry));
        }
    }
    for user in users {
        let refusal = match state {
            SaleState::Active if !eligible(user) => EnterOutcome::NotEligible,
            state => EnterOutcome::NotAccepting(state),
        };
        outcomes.entry(user.clone()).or_insert(refusal);
    }
    committing.store(true, Ordering::Release);
    tx.commit().await.map_err(StoreError::after_write)?;
    Ok((outcomes, sale_unarchived))
}
