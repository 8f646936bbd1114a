//! Group commit for instant purchases: the requests for one sale that arrive while the
//! previous batch is in the database are decided together by one statement
//! (`purchase_batch`, in `purchases.rs`): one row lock and one WAL flush for many buyers, each answered
//! with their own exact outcome, and only after the commit.
//!
//! Batching is natural, not timed: a sale's batcher takes whatever has queued up while the
//! last batch ran (at most [`MAX_BATCH`]), so a lone buyer waits for nobody.
//!
//! The buyers a statement refuses hear why the sale refuses them, read just after. If it
//! turns out sellable, the refusal was a boundary moment: the statement's `now()` fell just
//! before the opening (a crowd waiting for it), or its INSERT skipped a buyer who bought
//! through another instance, leaving that unit unsold. Those buyers are decided again by the
//! same statement, up to [`BATCH_ATTEMPTS`] in all, never one statement each: 2,000 single
//! purchases in a row would keep the buyers queued behind past their answer timeout at the
//! busiest moment. A retry is sent only if it can be answered before the batch's first buyer
//! stops waiting; buyers still undecided then hear a retry-safe 503.
//!
//! A buyer hears "outcome unknown" only when their statement was sent: the wait for a
//! connection is cut off apart from the statement (a pool that times out is a plain 503),
//! and a buyer whose deadline passes while still in line is withdrawn from the batch (see
//! `batcher::Answer`).
//!
//! Orders ask for a quantity, all or nothing (see `purchases/batch.rs`). In a sale with the
//! per-customer limit 1 (the default) a buyer's repeats are one order: the extra requests
//! of a user in a batch hear `ALREADY_PURCHASED` with the first's purchase, as before
//! quantities. Above 1 every request is an order of its own: a user's second request in a
//! batch is decided by the next statement of that batch (each statement sees every buyer
//! once), after their first.
//!
//! Once a batch sees an instant sale's stock at zero it cannot come back, so later buyers of
//! that sale sell nothing: for stocks up to [`MAX_REMEMBERED_BUYERS`] the final buyer list is
//! loaded once and tells a repeat buyer (`ALREADY_PURCHASED`, or `LIMIT_REACHED` when the
//! order would pass the limit) from the rest (`SOLD_OUT`);
//! larger ones take one indexed read. A buyer who names the sale by id skips the batcher for
//! that; one who names it by a cached sku goes through it, so that one primary-key read per
//! batch confirms the sku still names that sale. Several instances each run their own
//! batchers; the statement is safe across them (see `BATCH_SQL`).
//!
//! Memory is bounded: at most [`MAX_WAITING_PER_SALE`] requests wait per sale (then 503),
//! and the sold-out memory and the reference cache are bounded caches (moka).
//!
//! This file resolves references and hands requests to the per-sale batchers (shared with
//! joins, `store/batcher.rs`); `decide` decides one batch (its
//! statements and every answer).

mod decide;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;
use uuid::Uuid;

use super::batcher::{self, Batchers};
use super::purchases::{Order, Owned, PurchaseOutcome};
use super::sale_refs::{SaleRefs, Target, VariantRefusal};
use super::{Store, StoreError};
use crate::domain::{Checkout, SaleState};

/// Most buyers decided by one statement.
pub const MAX_BATCH: usize = 2048;
/// Most statements that decide one batch: the first, and retries for the buyers it refused
/// while the sale was sellable right after. One retry settles the usual cases (the opening
/// moment, one skipped duplicate); the bound keeps a batch's time predictable.
const BATCH_ATTEMPTS: usize = 3;
/// Most purchases waiting for one sale's batcher on one instance: two full batches behind
/// the one in the database. Past it a buyer is told 503 at once (retry after a second)
/// instead of waiting in a line that only grows.
pub const MAX_WAITING_PER_SALE: usize = 2 * MAX_BATCH;
/// Largest stock whose buyers are held in memory once the sale sells out.
const MAX_REMEMBERED_BUYERS: i64 = 100_000;
/// Most buyers remembered across all sold-out sales (the cache evicts the least used sale
/// past it; an evicted sale is answered from the database instead).
const MAX_REMEMBERED_TOTAL: u64 = 1_000_000;

type Reply = batcher::Reply<PurchaseOutcome>;

struct Request {
    user_id: String,
    /// Units the order asks for.
    quantity: i32,
    /// The buyer's key for the order, if any.
    order_key: Option<Uuid>,
    /// The variant's position, in a sale with variants.
    variant: Option<i16>,
    /// The sale's per-customer limit (the same for every request of a batch): 1 merges a
    /// user's repeats into one order.
    limit: i32,
    reply: Reply,
    /// When the buyer stops waiting (and hears `OutcomeUnknown` if their statement was
    /// sent): a batch sends a retry only if it can be answered before its earliest buyer's
    /// moment.
    answer_by: Instant,
}

/// What the final buyers of a sold-out instant sale own, or `None` when too many to hold.
type SoldOutBuyers = Option<Arc<HashMap<String, Owned>>>;

/// The instant-checkout front door: group commit per sale, with the sold-out fast path.
/// Every cache is keyed by sale id (ids are never reused); only the reference cache is
/// keyed by name, and nothing is answered from it without a check.
#[derive(Clone)]
pub struct PurchaseBatcher {
    store: Store,
    batchers: Batchers<Request>,
    /// Sold-out instant sales: a sold-out instant sale never sells again, so its buyer set is
    /// final and answers a repeat buyer (`ALREADY_PURCHASED`) and everyone else (`SOLD_OUT`)
    /// without a query. Bounded by the number of buyers it holds.
    sold_out: Cache<Uuid, SoldOutBuyers>,
    /// `{sale}` references, resolved once a second at most.
    refs: SaleRefs,
    /// Off: every purchase is its own statement ([`Store::purchase`]), for comparison.
    batching: bool,
    /// Longest wait for a purchase's answer; past it the outcome is unknown.
    answer_timeout: Duration,
    /// Batch sizes and statement times, when set.
    metrics: Option<crate::metrics::Metrics>,
}

impl PurchaseBatcher {
    pub fn new(store: Store, batching: bool, answer_timeout: Duration) -> Self {
        Self {
            refs: SaleRefs::new(store.clone()),
            store,
            batchers: Batchers::new(MAX_BATCH, MAX_WAITING_PER_SALE),
            sold_out: Cache::builder()
                .max_capacity(MAX_REMEMBERED_TOTAL)
                .weigher(|_, buyers: &SoldOutBuyers| {
                    buyers.as_ref().map_or(1, |b| b.len().saturating_add(1)) as u32
                })
                .build(),
            batching,
            answer_timeout,
            metrics: None,
        }
    }

    /// Records each batch's size and statement time in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Buys one unit of the sale `sale_ref` (UUID or sku) for `user_id`: an order of one
    /// ([`PurchaseBatcher::purchase_units`]).
    pub async fn purchase(
        &self,
        sale_ref: &str,
        user_id: &str,
    ) -> Result<PurchaseOutcome, StoreError> {
        self.purchase_units(sale_ref, user_id, 1).await
    }

    /// Buys `quantity` units of the sale `sale_ref` (UUID or sku) for `user_id` as one
    /// order, all or nothing, exactly like [`Store::purchase`], batched with the other
    /// buyers of that sale.
    ///
    /// Every answer is about the sale the reference names when the request arrives: an
    /// answer that came from a cached resolution and says the sale is gone or archived is
    /// thrown away, the reference read again and the purchase tried on what it names now;
    /// an answer from the sold-out memory, when the sale was reached through a cached sku,
    /// is given only after the sale is checked to be still live.
    pub async fn purchase_units(
        &self,
        sale_ref: &str,
        user_id: &str,
        quantity: i32,
    ) -> Result<PurchaseOutcome, StoreError> {
        let order = Order {
            quantity,
            key: None,
            variant: None,
        };
        self.purchase_order(sale_ref, user_id, order, None).await
    }

    /// [`PurchaseBatcher::purchase_units`] with the buyer's own key for the order, if any
    /// (a key the buyer has used in the sale is answered `ALREADY_PURCHASED` with its
    /// order), and the code of the variant it buys (a sale with variants needs one, a sale
    /// without takes none; `order.variant` is set from it here).
    pub async fn purchase_order(
        &self,
        sale_ref: &str,
        user_id: &str,
        order: Order,
        variant: Option<&str>,
    ) -> Result<PurchaseOutcome, StoreError> {
        let Some(mut target) = self.refs.resolve(sale_ref, false).await? else {
            return Ok(PurchaseOutcome::SaleNotFound);
        };
        let mut outcome = self
            .purchase_in(target.clone(), user_id, order, variant)
            .await?;
        if target.cached
            && matches!(
                outcome,
                PurchaseOutcome::SaleArchived
                    | PurchaseOutcome::SaleNotFound
                    | PurchaseOutcome::QuantityTooLarge { .. }
                    | PurchaseOutcome::VariantRequired
                    | PurchaseOutcome::UnknownVariant
            )
        {
            let Some(fresh) = self.refs.resolve(sale_ref, true).await? else {
                return Ok(PurchaseOutcome::SaleNotFound);
            };
            target = fresh;
            outcome = self
                .purchase_in(target.clone(), user_id, order, variant)
                .await?;
        }
        if !matches!(outcome, PurchaseOutcome::SaleArchived) {
            return Ok(outcome);
        }
        // Named by its id (or archived a moment ago): say what is true of it.
        Ok(match self.store.find_purchase(target.id, user_id).await? {
            Some(purchase) if target.per_customer_limit == 1 => {
                PurchaseOutcome::AlreadyPurchased(purchase)
            }
            _ => PurchaseOutcome::NotActive(SaleState::Archived),
        })
    }

    async fn purchase_in(
        &self,
        target: Target,
        user_id: &str,
        mut order: Order,
        variant: Option<&str>,
    ) -> Result<PurchaseOutcome, StoreError> {
        let answer_by = Instant::now() + self.answer_timeout;
        let quantity = order.quantity;
        // A sale's variants never change (a cached target is checked again fresh).
        order.variant = match target.variant_position(variant) {
            Ok(position) => position,
            Err(VariantRefusal::Required) => return Ok(PurchaseOutcome::VariantRequired),
            Err(VariantRefusal::Unknown) => return Ok(PurchaseOutcome::UnknownVariant),
        };
        // A sale's max_per_order never changes (a cached target is checked again fresh).
        if quantity > target.max_per_order {
            return Ok(PurchaseOutcome::QuantityTooLarge {
                max_per_order: target.max_per_order,
            });
        }
        if !self.batching || target.checkout != Checkout::Instant {
            return self
                .store
                .purchase(target.id, user_id, order, answer_by)
                .await;
        }
        // Reached by id or by a sku read just now, a sold-out sale is answered from memory at
        // once. Through a cached sku it goes to the batcher, which checks once per batch that
        // the sale is still live (a query started after every request in it arrived). An
        // order with a key goes to the batcher too, which looks the key up.
        if !(target.cached && target.via_sku)
            && order.key.is_none()
            && let Some(buyers) = self.sold_out.get(&target.id)
        {
            let owned = match buyers {
                Some(buyers) => buyers.get(user_id).cloned(),
                None => self
                    .store
                    .owned_of(target.id, &[user_id])
                    .await?
                    .remove(user_id),
            };
            return Ok(sold_out_answer(owned, quantity, target.per_customer_limit));
        }
        let (reply, answer) = batcher::reply_channel();
        self.enqueue(
            target.id,
            Request {
                user_id: user_id.to_string(),
                quantity,
                order_key: order.key,
                variant: order.variant,
                limit: target.per_customer_limit,
                reply,
                answer_by,
            },
        )?;
        answer.wait_until(answer_by).await
    }

    /// Hands a request to its sale's batcher; refuses at once when the sale's line is full.
    fn enqueue(&self, sale_id: Uuid, request: Request) -> Result<(), StoreError> {
        self.batchers.send(sale_id, request, || {
            let this = self.clone();
            move |sale_id, batch| {
                let this = this.clone();
                async move { this.decide(sale_id, batch).await }
            }
        })
    }
}

/// What a sold-out sale with the per-customer `limit` answers a buyer's order of
/// `quantity`: their purchase (limit 1), `LIMIT_REACHED` when the order would pass the
/// limit, else `SOLD_OUT`.
fn sold_out_answer(owned: Option<Owned>, quantity: i32, limit: i32) -> PurchaseOutcome {
    match owned {
        Some(owned) if limit == 1 => PurchaseOutcome::AlreadyPurchased(owned.first),
        Some(owned) if owned.units + quantity > limit => PurchaseOutcome::LimitReached {
            remaining: (limit - owned.units).max(0),
        },
        _ => PurchaseOutcome::SoldOut,
    }
}
