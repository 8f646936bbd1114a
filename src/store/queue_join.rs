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

use tokio::time::Instant;
use uuid::Uuid;

mod batch;

use batch::{JoinBatch, join_batch};

use super::batcher::{self, Batchers, claim};
use super::sale_refs::{SaleRefs, Target, VariantRefusal};
use super::{Store, StoreError, deadline_missed};
use crate::domain::{Checkout, EntryStatus, Purchase, QueueEntry, SaleState};

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
    /// The variant asked for has no stock and no live holds (others have).
    VariantSoldOut,
    /// The sale has variants and the join names none.
    VariantRequired,
    /// The join names a variant the sale does not have (or the sale has none).
    UnknownVariant,
    NotActive(SaleState),
    /// The queue holds `queue_capacity` buyers already.
    QueueFull,
    /// The join asks for more units than the sale's `max_per_order`.
    QuantityTooLarge {
        max_per_order: i32,
    },
    /// The join asks for more units than the sale has left unsold (`unsold`: available and
    /// held), so its hold could never be granted.
    InsufficientStock {
        unsold: i32,
    },
    WrongCheckout,
    /// The sale has an allow-list and the buyer is not on it.
    NotEligible,
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

/// What a buyer asks a hold for: `quantity` units of `variant` (its code; none in a sale
/// without variants).
#[derive(Debug, Clone)]
pub(super) struct Ask {
    pub(super) quantity: i32,
    pub(super) variant: Option<String>,
}

/// A buyer's outcome, and whether the sale was live (not archived, not gone) when decided.
type Reply = batcher::Reply<(JoinOutcome, bool)>;

struct JoinRequest {
    user_id: String,
    /// Units the hold is to reserve, and of which variant (its code).
    ask: Ask,
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
        self.join_units(sale_ref, user_id, 1).await
    }

    /// [`JoinBatcher::join`] for a hold of `quantity` units (at most the sale's
    /// `max_per_order`). A buyer already in the queue keeps the quantity they joined with.
    pub async fn join_units(
        &self,
        sale_ref: &str,
        user_id: &str,
        quantity: i32,
    ) -> Result<JoinOutcome, StoreError> {
        self.join_order(sale_ref, user_id, quantity, None).await
    }

    /// [`JoinBatcher::join_units`] of the variant `variant` (its code): a sale with variants
    /// needs one, a sale without takes none. A buyer already in the queue keeps the variant
    /// they joined with.
    pub async fn join_order(
        &self,
        sale_ref: &str,
        user_id: &str,
        quantity: i32,
        variant: Option<&str>,
    ) -> Result<JoinOutcome, StoreError> {
        let Some(target) = self.refs.resolve(sale_ref, false).await? else {
            return Ok(JoinOutcome::SaleNotFound);
        };
        let (outcome, sale_unarchived) = self
            .join_in(target.clone(), user_id, quantity, variant)
            .await?;
        let too_large = matches!(outcome, JoinOutcome::QuantityTooLarge { .. });
        if (sale_unarchived && !too_large) || !target.cached {
            return Ok(outcome);
        }
        match self.refs.resolve(sale_ref, true).await? {
            Some(fresh) => Ok(self.join_in(fresh, user_id, quantity, variant).await?.0),
            None => Ok(JoinOutcome::SaleNotFound),
        }
    }

    async fn join_in(
        &self,
        target: Target,
        user_id: &str,
        quantity: i32,
        variant: Option<&str>,
    ) -> Result<(JoinOutcome, bool), StoreError> {
        if target.checkout != Checkout::Queued {
            return Ok((JoinOutcome::WrongCheckout, true));
        }
        // A sale's variants never change (a cached target is checked again fresh).
        match target.variant_position(variant) {
            Ok(_) => {}
            Err(VariantRefusal::Required) => return Ok((JoinOutcome::VariantRequired, false)),
            Err(VariantRefusal::Unknown) => return Ok((JoinOutcome::UnknownVariant, false)),
        }
        if quantity > target.max_per_order {
            let max_per_order = target.max_per_order;
            return Ok((JoinOutcome::QuantityTooLarge { max_per_order }, true));
        }
        let (reply, answer) = batcher::reply_channel();
        let answer_by = Instant::now() + self.answer_timeout;
        let request = JoinRequest {
            user_id: user_id.to_string(),
            ask: Ask {
                quantity,
                variant: variant.map(str::to_string),
            },
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
    let mut asks = HashMap::new();
    for request in batch {
        let replies = by_user.entry(request.user_id.clone()).or_default();
        if replies.is_empty() {
            asks.insert(request.user_id.clone(), request.ask);
            users.push(request.user_id);
        }
        replies.push(request.reply);
    }
    match decide_joins(&store, sale_id, &mut by_user, (users, &asks), cut_off).await {
        Ok(mut batch) => {
            for (user, replies) in by_user {
                let outcome = batch
                    .outcomes
                    .remove(&user)
                    .unwrap_or(JoinOutcome::SaleNotFound);
                for reply in replies {
                    let _ = reply.send(Ok((outcome.clone(), batch.sale_unarchived)));
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
    (mut users, asks): (Vec<String>, &HashMap<String, Ask>),
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
    let joined = join_batch(&mut conn, sale_id, (&users, asks), &committing);
    match tokio::time::timeout_at(cut_off, joined).await {
        Ok(result) => result,
        // Before its COMMIT, the transaction dies with its connection: nothing was committed.
        Err(_) => {
            let committing = committing.load(Ordering::Acquire);
            Err(deadline_missed(&mut conn, committing, "join batch"))
        }
    }
}
