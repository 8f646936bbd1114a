//! Instant purchases: the one statement that sells an order, and why an order was refused.
//! The group-commit statement is in `purchases/batch.rs`, the reads of what buyers own in
//! `purchases/owned.rs`.
//!
//! An order buys `quantity` units, all or nothing. A buyer's orders in a sale form a chain
//! (`units_before`, unique per buyer and sale: the key `purchases_one_per_user`, see the
//! quantities migrations), which is how every statement here keeps a buyer within the
//! sale's `per_customer_limit` without a lock of its own.

mod batch;
mod held;
mod owned;

pub(super) use batch::purchase_batch;
pub use batch::{BatchBuyer, BatchResult};
pub(super) use held::{HeldBought, buy_held};
pub(super) use owned::{find_purchase, keyed_orders, owned_by};

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::allowlist::listed_of;
use super::db::Db;
use super::jobs::JobKind;
use super::sales::sale_by_id;
use super::{Store, StoreError, deadline_missed, violated_constraint};
use crate::domain::{Checkout, Purchase, Sale, SaleState};

/// The result of an instant purchase attempt. Refusals are values, not errors.
#[derive(Debug, Clone)]
pub enum PurchaseOutcome {
    /// Committed: the order's units are the buyer's.
    Purchased(Purchase),
    /// A sale with a limit of one: the user already owns its unit (their order is returned,
    /// so a retry learns it won).
    AlreadyPurchased(Purchase),
    /// Nothing left to sell.
    SoldOut,
    /// The variant asked for has nothing left to sell (others have).
    VariantSoldOut,
    /// The sale has variants and the order names none.
    VariantRequired,
    /// The order names a variant the sale does not have (or the sale has none).
    UnknownVariant,
    /// Some units are left, fewer than the order asks for (`available` of them, read after
    /// the refusal).
    InsufficientStock {
        available: i32,
    },
    /// The order would take the buyer past the sale's per-customer limit; `remaining` is
    /// what the buyer may still buy (0 at the limit).
    LimitReached {
        remaining: i32,
    },
    /// The order asks for more than the sale's `max_per_order`.
    QuantityTooLarge {
        max_per_order: i32,
    },
    /// Scheduled, ended by time, or cancelled.
    NotActive(SaleState),
    /// The sale uses the queued checkout or is a raffle.
    WrongCheckout,
    /// The sale has an allow-list and the buyer is not on it.
    NotEligible,
    SaleNotFound,
    /// The sale with this id was archived: nothing about it is answered here, so that a
    /// caller who reached it through a sku can look the sku up again (see `PurchaseBatcher`).
    SaleArchived,
}

#[derive(FromRow)]
pub(super) struct PurchaseRow {
    id: Uuid,
    sale_id: Uuid,
    user_id: String,
    created_at: DateTime<Utc>,
    quantity: i32,
    variant: Option<String>,
}

impl From<PurchaseRow> for Purchase {
    fn from(row: PurchaseRow) -> Self {
        Purchase {
            id: row.id,
            sale_id: row.sale_id,
            user_id: row.user_id,
            created_at: row.created_at,
            quantity: row.quantity,
            variant: row.variant,
        }
    }
}

/// What a buyer asks for: `quantity` units, of the variant at `variant` (its position, in a
/// sale with variants), and optionally their own key for the order (a request that names an
/// order key the buyer has used in the sale is answered `ALREADY_PURCHASED` with that
/// order, whatever the limit: a retry is safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub quantity: i32,
    pub key: Option<Uuid>,
    /// Set by the door from the code the buyer named (see `PurchaseBatcher`).
    pub variant: Option<i16>,
}

impl Order {
    /// One unit, no key, no variant: the order of a sale with the default limit.
    pub const ONE: Order = Order {
        quantity: 1,
        key: None,
        variant: None,
    };
}

/// What a buyer owns in a sale: their first order and the units of all their orders.
#[derive(Debug, Clone)]
pub struct Owned {
    pub first: Purchase,
    pub units: i32,
}

/// Sells `$5` units of an active instant sale to `$2` as one order, in one statement.
///
/// Race-free under READ COMMITTED:
/// - No oversell: the UPDATE locks the sale row; a concurrent buyer blocks on that lock and,
///   when it is released, Postgres re-evaluates `available >= $5` against the newly
///   committed row (EvalPlanQual), never against the statement's older snapshot.
///   `CHECK (available >= 0)` and `sales_counters_balance` back this up.
/// - The buyer's limit: `owned` is read with the statement's snapshot, which may miss an
///   order of the same buyer committed since (another request, another instance). The order
///   is inserted as the next link of the buyer's chain (`units_before` = what `owned` saw),
///   with a plain INSERT: if an order committed since, it has that same `units_before`, so
///   the chain key (`purchases_one_per_user`, on sale, user and `units_before`) fails with
///   23505 and the whole statement, decrement included, is rolled back (the caller reads
///   why and may try again). An insert that succeeds therefore
///   saw every earlier order of the buyer, and `units_before + $5 <= per_customer_limit`
///   was checked against the truth. With the limit 1 this is the old one-purchase-per-user
///   key: a user racing themselves loses no unit.
/// - The buyer's order key (`$6`, optional): an order of the buyer with that key, committed
///   or in flight, makes the INSERT fail on `purchases_order_key` (it waits for one in
///   flight), so one key buys once; the caller then answers with that order.
/// - Cancel, archive, start and end are re-checked on the locked row with the statement's
///   `now()`.
/// - The order that sells out the sale queues the state job in the same statement.
/// - An allow-listed sale sells only to a listed buyer: `listed` locks the buyer's list row
///   FOR KEY SHARE, and only when the sale has a list (`NOT allowlist` decides first, on a
///   column that never changes: a sale without a list reads no list). The lock is taken
///   while the UPDATE's condition is evaluated, before the UPDATE waits for the sale row,
///   and held to the commit: a removal committed before it leaves no row to lock (the
///   buyer is refused), one that comes later waits for this commit (the purchase stays);
///   see `store/allowlist.rs`.
///
/// - A variant's order (`$7`, its position) is sold from that variant's units: `variant`
///   locks the variant row FOR NO KEY UPDATE after the sale row is locked (its one-time
///   condition reads `locked`, so the sale row is locked first, as every writer of a
///   variant does: one lock order, no deadlock) and so reads its latest committed
///   counters; no other writer of the variant can commit in between, since each holds the
///   sale row too. The sale's totals and the variant's move in the same statement by the
///   same units (`taken`, `vtaken`): both balances hold at the commit, and the CHECKs on
///   both rows back them up. Without a variant (`$7` NULL) `variant` reads nothing, and an
///   order naming none in a sale with variants (or one in a sale without) sells nothing
///   (the door refuses it first). `locked` reads the buyer's list row (`listed`) in its
///   row filter, below its lock: list row, then sale row, then variant row, the order of
///   every statement here (`store/allowlist.rs`).
///
/// The buyer is answered after the implicit commit of this single statement.
const PURCHASE_SQL: &str = "
    WITH listed AS (
        SELECT 1 FROM sale_allowlist WHERE sale_id = $1 AND user_id = $2
           FOR KEY SHARE
    ), owned AS (
        SELECT COALESCE(sum(quantity), 0)::int AS units FROM purchases
         WHERE sale_id = $1 AND user_id = $2
    ), locked AS (
        SELECT id FROM sales
         WHERE id = $1 AND $7::smallint IS NOT NULL
           AND (NOT allowlist OR EXISTS (SELECT 1 FROM listed))
           FOR NO KEY UPDATE
    ), variant AS (
        SELECT code, available FROM sale_variants
         WHERE sale_id = $1 AND position = $7 AND EXISTS (SELECT 1 FROM locked)
           FOR NO KEY UPDATE
    ), taken AS (
        UPDATE sales SET available = available - $5, sold = sold + $5
         WHERE id = $1 AND checkout = 'instant' AND available >= $5
           AND $5 <= max_per_order AND (SELECT units FROM owned) + $5 <= per_customer_limit
           AND cancelled_at IS NULL AND archived_at IS NULL
           AND starts_at <= now() AND now() < ends_at
           AND (NOT allowlist OR EXISTS (SELECT 1 FROM listed))
           AND ($7::smallint IS NULL OR (SELECT available FROM variant) >= $5)
           AND ($7::smallint IS NULL) = NOT EXISTS (SELECT 1 FROM sale_variants WHERE sale_id = $1)
        RETURNING id, available
    ), vtaken AS (
        UPDATE sale_variants SET available = available - $5, sold = sold + $5
         WHERE sale_id = $1 AND position = $7 AND EXISTS (SELECT 1 FROM taken)
    ), sold_out_job AS (
        INSERT INTO jobs (kind, sale_id) SELECT $4, id FROM taken WHERE available = 0
    )
    INSERT INTO purchases (id, sale_id, user_id, quantity, units_before, order_key, variant)
    SELECT $3, id, $2, $5, (SELECT units FROM owned), $6, (SELECT code FROM variant) FROM taken
    RETURNING id, sale_id, user_id, created_at, quantity, variant";

/// How often a purchase that failed while the sale looked sellable right after is retried
/// (the statement saw `now()` a moment before the start, for example).
const PURCHASE_ATTEMPTS: usize = 3;

impl Store {
    /// Tries to buy `order` in the sale `sale_id` for `user_id`, answered by `cut_off`: a
    /// connection not had by then is [`StoreError::Unavailable`] (nothing was sent), a
    /// statement not answered by then [`StoreError::OutcomeUnknown`].
    pub async fn purchase(
        &self,
        sale_id: Uuid,
        user_id: &str,
        order: Order,
        cut_off: tokio::time::Instant,
    ) -> Result<PurchaseOutcome, StoreError> {
        let mut conn = self.conn_until(cut_off).await?;
        let sent = AtomicBool::new(false);
        let bought = purchase(&mut conn, sale_id, user_id, order, &sent);
        let bought = tokio::time::timeout_at(cut_off, bought).await;
        bought.unwrap_or_else(|_| {
            let sent = sent.load(Ordering::Acquire);
            Err(deadline_missed(&mut conn, sent, "purchase"))
        })
    }

    /// The user's first order in the sale `sale_id`, if any. `None` for an unknown sale too;
    /// callers that must tell the two apart look the sale up first.
    pub async fn find_purchase(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<Purchase>, StoreError> {
        find_purchase(&mut self.conn().await?, sale_id, user_id).await
    }
}

/// [`Store::purchase`] on `conn`: the statement, and retries while the sale turns out
/// sellable right after a refusal (a boundary moment, or an order of the same buyer that
/// took the chain's next link first). `sent` is set as the statement goes out: a failure
/// before it (behind a pooler, its BEGIN) wrote nothing. Still sellable after the last
/// attempt: [`StoreError::Overloaded`], a retry-safe 503 (nothing was written for this
/// order), never a refusal the sale did not make.
async fn purchase(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
    order: Order,
    sent: &AtomicBool,
) -> Result<PurchaseOutcome, StoreError> {
    for _ in 0..PURCHASE_ATTEMPTS {
        let mut unit = conn.unit().await?;
        sent.store(true, Ordering::Release);
        let attempt = sqlx::query_as::<_, PurchaseRow>(PURCHASE_SQL)
            .bind(sale_id)
            .bind(user_id)
            .bind(Uuid::new_v4())
            .bind(JobKind::SyncSaleState.as_str())
            .bind(order.quantity)
            .bind(order.key)
            .bind(order.variant)
            .fetch_optional(&mut *unit)
            .await;
        let attempt = match attempt {
            Ok(row) => unit.commit().await.map(|()| row),
            Err(err) => {
                // Rolled back (behind a pooler) before the next statement.
                drop(unit);
                Err(err)
            }
        };
        match attempt {
            Ok(Some(row)) => return Ok(PurchaseOutcome::Purchased(row.into())),
            Ok(None) => {}
            Err(err)
                if matches!(
                    violated_constraint(&err),
                    Some("purchases_one_per_user" | "purchases_order_key")
                ) => {}
            Err(err) => return Err(StoreError::after_write(err)),
        }
        // `None`: the sale is sellable now: the refusal was a boundary moment; try again.
        if let Some(refusal) = classify_refusal(conn, sale_id, user_id, order).await? {
            return Ok(refusal);
        }
    }
    Err(StoreError::Overloaded)
}

/// Why a purchase that sold nothing was refused, read after the fact; `None` when the sale
/// could sell the order now (see [`refusal_for_buyer`] for which reason wins).
async fn classify_refusal(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
    order: Order,
) -> Result<Option<PurchaseOutcome>, StoreError> {
    let Some(sale) = sale_by_id(conn, sale_id).await? else {
        return Ok(Some(PurchaseOutcome::SaleNotFound));
    };
    let keyed = match order.key {
        Some(key) => keyed_orders(conn, sale.id, &[(user_id, key)])
            .await?
            .remove(user_id),
        None => None,
    };
    let owned = owned_by(conn, sale.id, &[user_id]).await?.remove(user_id);
    let eligible = !sale.allowlist || !listed_of(conn, sale.id, &[user_id]).await?.is_empty();
    Ok(refusal_for_buyer(&sale, keyed, owned, order, eligible))
}

/// Why the sale refuses this buyer's `order` now, given the order their key
/// names (`keyed`), what they own and whether they are on its allow-list (`eligible`:
/// true for a sale without one), all read after the sale; `None` when it could sell it.
/// The one place that decides a refusal, for lone purchases and group-commit batches
/// alike. Order matters: an archived sale answers nothing else (its buyers are never told
/// about it through a sku that may name another sale now); an order whose key the buyer
/// has used answers with that order; a repeat buyer of a limit-one sale hears
/// `ALREADY_PURCHASED`, and any buyer the order would take past the limit `LIMIT_REACHED`,
/// never `SOLD_OUT` (so a removed buyer's repeat hears about their purchase); a sold-out
/// sale says so whatever else its state is (to listed and unlisted buyers alike, as the
/// sold-out memory of group commit does without reading the list), and so does a sold-out
/// variant; then an off-list buyer hears `NOT_ELIGIBLE` whatever the sale's state. Units
/// are the order's variant's (the sale's for an order naming none).
pub(super) fn refusal_for_buyer(
    sale: &Sale,
    keyed: Option<Purchase>,
    owned: Option<Owned>,
    order: Order,
    eligible: bool,
) -> Option<PurchaseOutcome> {
    let quantity = order.quantity;
    if sale.archived_at.is_some() {
        return Some(PurchaseOutcome::SaleArchived);
    }
    if let Some(keyed) = keyed {
        return Some(PurchaseOutcome::AlreadyPurchased(keyed));
    }
    if quantity > sale.max_per_order {
        return Some(PurchaseOutcome::QuantityTooLarge {
            max_per_order: sale.max_per_order,
        });
    }
    if let Some(owned) = owned {
        if sale.per_customer_limit == 1 {
            return Some(PurchaseOutcome::AlreadyPurchased(owned.first));
        }
        if owned.units + quantity > sale.per_customer_limit {
            return Some(PurchaseOutcome::LimitReached {
                remaining: (sale.per_customer_limit - owned.units).max(0),
            });
        }
    }
    if sale.checkout != Checkout::Instant {
        return Some(PurchaseOutcome::WrongCheckout);
    }
    if sale.available == 0 {
        return Some(PurchaseOutcome::SoldOut);
    }
    // The door checks the variant against the sale first; a statement that sold nothing
    // for a mismatch must not read as "sellable now".
    match order.variant {
        None if !sale.variants.is_empty() => return Some(PurchaseOutcome::VariantRequired),
        Some(position) if sale.variant_at(position).is_none() => {
            return Some(PurchaseOutcome::UnknownVariant);
        }
        _ => {}
    }
    let available = sale.available_for(order.variant);
    if available == 0 {
        return Some(PurchaseOutcome::VariantSoldOut);
    }
    if !eligible {
        return Some(PurchaseOutcome::NotEligible);
    }
    match sale.state() {
        SaleState::Active if available < quantity => {
            Some(PurchaseOutcome::InsufficientStock { available })
        }
        SaleState::Active => None,
        state => Some(PurchaseOutcome::NotActive(state)),
    }
}

impl Store {
    /// Why an instant purchase of one unit in the sale `sale_id` would be refused now, for a
    /// user known to own nothing; `None` when the sale is sellable.
    pub async fn refusal_now(&self, sale_id: Uuid) -> Result<Option<PurchaseOutcome>, StoreError> {
        Ok(match self.sale_by_id(sale_id).await? {
            None => Some(PurchaseOutcome::SaleNotFound),
            Some(sale) => refusal_for_buyer(&sale, None, None, Order::ONE, true),
        })
    }
}
