//! The waiting room's door: joining a queued sale, group-committed like purchases.
//!
//! Every join must move the queue row (the next ticket, the count of waiting buyers that
//! the capacity is checked against), so a join that locked that row and held it through its
//! own commit made the row a hot spot: 352-455 joins a second, whatever the hardware. Here
//! the joins of one sale that arrive while its previous batch is in the database are
//! decided together ([`join_batch`]): one lock of the queue row and one commit (one
//! WAL flush) for up to [`MAX_JOIN_BATCH`] buyers, each told their own entry, ticket and
//! position only after that commit. Several instances each batch their own joins; the
//! statements are safe across them (see [`join_batch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

use super::batcher::{self, Batchers, claim};
use super::jobs::enqueue_queue_tick;
use super::purchases::find_purchase;
use super::queue_entry::{ENTRY_SQL_FOR_USERS, EntryRow, queue_counters_sql};
use super::sale_refs::{SaleRefs, Target};
use super::sales::{SALE_COLUMNS, SaleRow};
use super::{Store, StoreError, unanswered};
use crate::domain::{Checkout, EntryStatus, Purchase, QueueEntry, Sale, SaleState};

/// Most joins decided by one batch.
pub const MAX_JOIN_BATCH: usize = 2048;
/// Most joins waiting for one sale's batcher on one instance (then 503 at once).
const MAX_JOINS_WAITING: usize = 4 * MAX_JOIN_BATCH;

/// The result of joining a queue.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    /// Waiting (new, rejoined, or already waiting: joining is idempotent).
    Queued(QueueEntry),
    /// Already holding a unit.
    Held(QueueEntry),
    AlreadyPurchased(Purchase),
    /// No stock and no live holds: nothing can come back.
    SoldOut,
    NotActive(SaleState),
    /// The queue holds `queue_capacity` buyers already.
    QueueFull,
    WrongCheckout,
    SaleNotFound,
}

impl JoinOutcome {
    fn of_entry(entry: QueueEntry) -> Self {
        if entry.status == EntryStatus::Held {
            JoinOutcome::Held(entry)
        } else {
            JoinOutcome::Queued(entry)
        }
    }
}

/// A buyer's outcome, and whether the sale was live (not archived, not gone) when decided.
type Reply = batcher::Reply<(JoinOutcome, bool)>;

/// What one batch decided.
#[derive(Debug, Default)]
struct JoinBatch {
    outcomes: HashMap<String, JoinOutcome>,
    /// False when the sale is archived or gone: a caller who reached it through a cached
    /// reference asks again what the reference names now.
    sale_live: bool,
}

struct JoinRequest {
    user_id: String,
    reply: Reply,
}

/// The door of every queued sale: group commit of joins, per sale.
#[derive(Clone)]
pub struct JoinBatcher {
    store: Store,
    batchers: Batchers<JoinRequest>,
    /// `{sale}` references, resolved once a second at most.
    refs: SaleRefs,
    /// Longest wait for a join's answer; past it the outcome is unknown if the join was sent
    /// (a retry returns the entry if it committed: joining is idempotent).
    answer_timeout: Duration,
}

impl JoinBatcher {
    pub fn new(store: Store, answer_timeout: Duration) -> Self {
        Self {
            refs: SaleRefs::new(store.clone()),
            store,
            batchers: Batchers::new(MAX_JOIN_BATCH, MAX_JOINS_WAITING),
            answer_timeout,
        }
    }

    /// Joins the queue of the sale `sale_ref` (its id or sku), or returns the buyer's
    /// current entry. Every answer is about the sale the reference names when the request
    /// arrives: one decided on a cached resolution that found the sale archived or gone is
    /// thrown away, and the reference read again.
    pub async fn join(&self, sale_ref: &str, user_id: &str) -> Result<JoinOutcome, StoreError> {
        let Some(target) = self.refs.resolve(sale_ref, false).await? else {
            return Ok(JoinOutcome::SaleNotFound);
        };
        let (outcome, sale_live) = self.join_in(target, user_id).await?;
        if sale_live || !target.cached {
            return Ok(outcome);
        }
        match self.refs.resolve(sale_ref, true).await? {
            Some(fresh) => Ok(self.join_in(fresh, user_id).await?.0),
            None => Ok(JoinOutcome::SaleNotFound),
        }
    }

    async fn join_in(
        &self,
        target: Target,
        user_id: &str,
    ) -> Result<(JoinOutcome, bool), StoreError> {
        if target.checkout != Checkout::Queued {
            return Ok((JoinOutcome::WrongCheckout, true));
        }
        let (reply, answer) = batcher::reply_channel();
        let answer_by = Instant::now() + self.answer_timeout;
        let request = JoinRequest {
            user_id: user_id.to_string(),
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
async fn decide(store: Store, timeout: Duration, sale_id: Uuid, batch: Vec<JoinRequest>) {
    let cut_off = Instant::now() + timeout;
    // One place per user: a user's extra requests in the batch are repeats of the first.
    let mut by_user: HashMap<String, Vec<Reply>> = HashMap::new();
    let mut users = Vec::new();
    for request in batch {
        let replies = by_user.entry(request.user_id.clone()).or_default();
        if replies.is_empty() {
            users.push(request.user_id);
        }
        replies.push(request.reply);
    }
    match decide_joins(&store, sale_id, &mut by_user, users, cut_off).await {
        Ok(mut batch) => {
            for (user, replies) in by_user {
                let outcome = batch
                    .outcomes
                    .remove(&user)
                    .unwrap_or(JoinOutcome::SaleNotFound);
                for reply in replies {
                    let _ = reply.send(Ok((outcome.clone(), batch.sale_live)));
                }
            }
        }
        Err(err) => {
            let callers = by_user.values().map(Vec::len).sum();
            err.log_batch_failure("join batch", sale_id, callers);
            for reply in by_user.into_values().flatten() {
                let _ = reply.send(Err(err.copy_for_caller()));
            }
        }
    }
}

/// Runs [`join_batch`] for the users (in arrival order) still waiting. The wait for a
/// connection and the transaction are cut off at `cut_off` apart: only a transaction whose
/// COMMIT was sent may leave the outcome unknown; one cut off before is rolled back with
/// its connection (nothing happened).
async fn decide_joins(
    store: &Store,
    sale_id: Uuid,
    by_user: &mut HashMap<String, Vec<Reply>>,
    mut users: Vec<String>,
    cut_off: Instant,
) -> Result<JoinBatch, StoreError> {
    let mut conn = store.conn_until(cut_off).await?;
    // From here the joins go out: callers who already gave up are left out.
    claim(by_user);
    users.retain(|user| by_user.contains_key(user));
    if users.is_empty() {
        // Nobody is left to answer.
        return Ok(JoinBatch::default());
    }
    let committing = AtomicBool::new(false);
    let joined = join_batch(&mut conn, sale_id, &users, &committing);
    match tokio::time::timeout_at(cut_off, joined).await {
        Ok(result) => result,
        Err(_) if committing.load(Ordering::Acquire) => Err(unanswered(&mut conn, "join batch")),
        Err(_) => {
            // The transaction dies with its connection: nothing was committed.
            conn.close_on_drop();
            Err(StoreError::Unavailable(None))
        }
    }
}

/// The sale and its locked queue row.
#[derive(sqlx::FromRow)]
struct DoorRow {
    #[sqlx(flatten)]
    sale: SaleRow,
    #[sqlx(flatten)]
    door: Door,
}

/// What the locked queue row says about new waits.
#[derive(sqlx::FromRow)]
struct Door {
    last_ticket: i64,
    waiting: i32,
    /// The pre-queue is closed: set by the first join or tick at or after the start.
    opened: bool,
    shuffle_seed: i64,
    /// The database clock has reached the sale's start.
    started: bool,
}

/// Joins the sale's queue for each of `users` (distinct), in their order, or returns
/// each one's current entry: one transaction, one lock of the queue row, one commit.
///
/// Race-free under READ COMMITTED, with any number of batches on any number of
/// instances:
/// 1. The entries of this batch's buyers that will be rejoined (`expired`, `left`) are
///    locked first, in user order (`COLLATE "C"`), so a leave or another batch cannot
///    change them under us, and two batches lock in one order (no deadlock). A buyer's
///    own statements lock their entry before the queue row too, and so does the draw.
/// 2. The queue row is locked (FOR UPDATE) and held to the commit. Every statement that
///    inserts an entry or moves `last_ticket` or `waiting` holds it (joins, leaves,
///    admission, the draw's opening), so from here no entry of this sale can be inserted
///    by anyone else, and `waiting` is exact.
/// 3. The entries of the batch's buyers are read with a snapshot taken after that lock,
///    so every earlier join is seen: the read tells exactly who waits, holds, bought, or
///    may (re)join. No ON CONFLICT is needed, and none can burn a ticket.
/// 4. New waits are accepted in arrival order while `waiting < queue_capacity` on the
///    locked row, so the capacity is never exceeded, and nobody is refused while there
///    is room. Tickets `last_ticket + 1 ...` go to those who join after the opening; a
///    buyer who joins before it takes no ticket, only a place in the seeded draw
///    (`draw_key`). The first join at or after the start closes the pre-queue
///    (`shuffled_at`), under the same lock, so every pre-queued entry is committed
///    before the draw can see the pre-queue closed, and every later join's ticket is
///    above `last_ticket` at the opening, above every ticket the draw deals.
/// 5. A tick is made due in the same transaction when someone joined an open queue, so
///    it cannot run without seeing them.
///
/// `committing` is set just before the COMMIT is sent (see [`decide_joins`]).
async fn join_batch(
    conn: &mut PgConnection,
    sale_id: Uuid,
    users: &[String],
    committing: &AtomicBool,
) -> Result<JoinBatch, StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        "SELECT 1 FROM queue_entries
          WHERE sale_id = $1 AND user_id = ANY($2) AND status IN ('expired', 'left')
          ORDER BY user_id COLLATE \"C\"
            FOR UPDATE",
    )
    .bind(sale_id)
    .bind(users)
    .execute(&mut *tx)
    .await?;
    // 2, with the sale as this statement found it.
    let sql = format!(
        "SELECT s.*, d.*, now() >= s.starts_at AS started
           FROM (SELECT {SALE_COLUMNS} FROM sales WHERE id = $1) s,
                (SELECT last_ticket, waiting, shuffled_at IS NOT NULL AS opened, shuffle_seed
                   FROM sale_queues WHERE sale_id = $1
                    FOR UPDATE) d"
    );
    // Built from constant text only.
    let row: Option<DoorRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(DoorRow { sale, door }) = row else {
        let outcomes = users
            .iter()
            .map(|user| (user.clone(), JoinOutcome::SaleNotFound))
            .collect();
        return Ok(JoinBatch {
            outcomes,
            sale_live: false,
        });
    };
    let sale = Sale::from(sale);
    // 3: whoever already has an entry is answered with it (as of this commit).
    let existing: HashMap<String, QueueEntry> = sqlx::query_as::<_, EntryRow>(ENTRY_SQL_FOR_USERS)
        .bind(sale_id)
        .bind(users)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            let entry = QueueEntry::from(row);
            (entry.user_id.clone(), entry)
        })
        .collect();

    let mut outcomes: HashMap<String, JoinOutcome> = HashMap::new();
    let refusal = match sale.state() {
        SaleState::Scheduled | SaleState::Active => None,
        SaleState::Ended if sale.is_sold_out() => Some(JoinOutcome::SoldOut),
        state => Some(JoinOutcome::NotActive(state)),
    };
    let mut room = i64::from(sale.queue_capacity) - i64::from(door.waiting);
    let (mut joining, mut rejoining, mut bought) = (Vec::new(), Vec::new(), Vec::new());
    for user in users {
        let entry = existing.get(user);
        match (entry.map(|entry| entry.status), &refusal) {
            (Some(EntryStatus::Queued | EntryStatus::Held), _) => {
                if let Some(entry) = entry {
                    outcomes.insert(user.clone(), JoinOutcome::of_entry(entry.clone()));
                }
            }
            (Some(EntryStatus::Purchased), _) => bought.push(user.as_str()),
            (_, Some(refusal)) => {
                outcomes.insert(user.clone(), refusal.clone());
            }
            _ if room <= 0 => {
                outcomes.insert(user.clone(), JoinOutcome::QueueFull);
            }
            (None, None) => {
                room -= 1;
                joining.push(user.as_str());
            }
            (Some(_), None) => {
                room -= 1;
                rejoining.push(user.as_str());
            }
        }
    }
    let accepted = (joining.len() + rejoining.len()) as i64;
    let prequeue = !door.opened && !door.started;
    let joined = if accepted > 0 {
        write_joins(&mut tx, sale_id, &door, prequeue, &joining, &rejoining).await?
    } else {
        Vec::new()
    };
    if accepted > 0 && !prequeue {
        // The pre-queue needs no wake-up: the tick due at the opening draws it. (Not
        // before the queue row's lock either: the pending tick's slot would then be held
        // while waiting for it, and every release's wake-up would queue behind.)
        enqueue_queue_tick(&mut tx, sale_id, None).await?;
    }
    // Told only after the commit; an unanswered commit leaves the outcome unknown (a
    // retry returns the entry: joining is idempotent).
    committing.store(true, Ordering::Release);
    tx.commit().await.map_err(StoreError::after_write)?;

    for row in joined {
        let entry = QueueEntry::from(row);
        outcomes.insert(entry.user_id.clone(), JoinOutcome::of_entry(entry));
    }
    for user in bought {
        let outcome = match find_purchase(conn, sale_id, user).await? {
            Some(purchase) => JoinOutcome::AlreadyPurchased(purchase),
            None => JoinOutcome::SaleNotFound,
        };
        outcomes.insert(user.to_string(), outcome);
    }
    Ok(JoinBatch {
        outcomes,
        sale_live: sale.archived_at.is_none(),
    })
}

/// Inserts the new entries, rejoins the returning ones, and moves the queue row's counters
/// (closing the pre-queue when the start has come), in one statement under the queue row's
/// lock (see [`join_batch`]); returns the entries with the queue's counters as this
/// statement left them. Tickets follow arrival order within the batch.
async fn write_joins(
    tx: &mut sqlx::PgConnection,
    sale_id: Uuid,
    door: &Door,
    prequeue: bool,
    joining: &[&str],
    rejoining: &[&str],
) -> Result<Vec<EntryRow>, StoreError> {
    let users: Vec<&str> = joining.iter().chain(rejoining).copied().collect();
    let rejoin: Vec<bool> = (0..users.len()).map(|i| i >= joining.len()).collect();
    let sql = format!(
        "WITH req AS (
             SELECT r.user_id, r.rejoin,
                    CASE WHEN $4 THEN NULL ELSE $3 + r.ord END AS ticket,
                    CASE WHEN $4 THEN decode(md5($5::bigint::text || r.user_id), 'hex') END AS draw_key
               FROM unnest($2::text[], $6::bool[]) WITH ORDINALITY AS r(user_id, rejoin, ord)
         ), joined AS (
             INSERT INTO queue_entries AS e (sale_id, user_id, ticket, draw_key, prequeue, status)
             SELECT $1, user_id, ticket, draw_key, $4, 'queued' FROM req WHERE NOT rejoin
             RETURNING {ENTRY}
         ), rejoined AS (
             UPDATE queue_entries e
                SET ticket = req.ticket, draw_key = req.draw_key, prequeue = $4,
                    status = 'queued', joined_at = now(), admitted_at = NULL,
                    hold_expires_at = NULL, finished_at = NULL
               FROM req
              WHERE req.rejoin AND e.sale_id = $1 AND e.user_id = req.user_id
                AND e.status IN ('expired', 'left')
             RETURNING {ENTRY}
         ), q AS (
             UPDATE sale_queues
                SET last_ticket = last_ticket + $7,
                    waiting = waiting + (SELECT count(*) FROM joined)
                                      + (SELECT count(*) FROM rejoined),
                    shuffled_at = CASE WHEN shuffled_at IS NULL AND NOT $4 THEN now()
                                       ELSE shuffled_at END
              WHERE sale_id = $1
             RETURNING *
         )
         SELECT e.*, {QUEUE_COUNTERS}
           FROM (SELECT * FROM joined UNION ALL SELECT * FROM rejoined) e, q",
        ENTRY = "e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at",
        QUEUE_COUNTERS = queue_counters_sql!()
    );
    // Built from constant text only.
    Ok(sqlx::query_as::<_, EntryRow>(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .bind(&users)
        .bind(door.last_ticket)
        .bind(prequeue)
        .bind(door.shuffle_seed)
        .bind(&rejoin)
        .bind(users.len() as i64)
        .fetch_all(&mut *tx)
        .await?)
}
