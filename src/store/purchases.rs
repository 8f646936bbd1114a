//! Instant purchases: the one statement that sells a unit, and the reads around it.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::JobKind;
use super::sales::find_sale;
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, Purchase, Sale, SaleState};

/// The result of an instant purchase attempt. Refusals are values, not errors.
#[derive(Debug, Clone)]
pub enum PurchaseOutcome {
    /// Committed: the unit is the buyer's.
    Purchased(Purchase),
    /// The user already owns a unit of this sale (returned, so a retry learns it won).
    AlreadyPurchased(Purchase),
    /// Nothing left to sell.
    SoldOut,
    /// Scheduled, ended by time, or cancelled.
    NotActive(SaleState),
    /// The sale uses the queued checkout.
    WrongCheckout,
    SaleNotFound,
}

#[derive(FromRow)]
pub(super) struct PurchaseRow {
    id: Uuid,
    sale_id: Uuid,
    user_id: String,
    created_at: DateTime<Utc>,
}

impl From<PurchaseRow> for Purchase {
    fn from(row: PurchaseRow) -> Self {
        Purchase {
            id: row.id,
            sale_id: row.sale_id,
            user_id: row.user_id,
            created_at: row.created_at,
        }
    }
}

/// Sells one unit of an active instant sale to `$3`, in one statement.
///
/// Race-free under READ COMMITTED:
/// - No oversell: the UPDATE locks the sale row; a concurrent buyer blocks on that lock and,
///   when it is released, Postgres re-evaluates `available > 0` against the newly committed
///   row (EvalPlanQual), never against the statement's older snapshot. `CHECK (available >= 0)`
///   and `sales_counters_balance` back this up.
/// - No double sale: the plain INSERT (no ON CONFLICT) hits `purchases_one_per_user`. A
///   concurrent insert of the same (sale, user) waits for the first transaction; if it
///   committed, this statement fails with 23505 and the whole statement, decrement included,
///   is rolled back, so a user racing themselves loses no unit.
/// - Cancel, start and end are re-checked on the locked row with the statement's `now()`.
/// - The unit that sells out the sale queues the state job in the same statement.
///
/// The buyer is answered after the implicit commit of this single statement.
const PURCHASE_SQL: &str = "
    WITH target AS (
        SELECT id FROM sales WHERE id = $1 OR sku = $2
         ORDER BY id = $1 DESC NULLS LAST LIMIT 1
    ), taken AS (
        UPDATE sales SET available = available - 1, sold = sold + 1
         WHERE id = (SELECT id FROM target)
           AND checkout = 'instant' AND available > 0 AND cancelled_at IS NULL
           AND starts_at <= now() AND now() < ends_at
        RETURNING id, available
    ), sold_out_job AS (
        INSERT INTO jobs (kind, sale_id) SELECT $5, id FROM taken WHERE available = 0
    )
    INSERT INTO purchases (id, sale_id, user_id)
    SELECT $4, id, $3 FROM taken
    RETURNING id, sale_id, user_id, created_at";

/// How often a purchase that failed while the sale looked sellable right after is retried
/// (the statement saw `now()` a moment before the start, for example).
const PURCHASE_ATTEMPTS: usize = 3;

impl Store {
    /// Tries to buy one unit of the sale `sale_ref` (UUID or sku) for `user_id`.
    pub async fn purchase(
        &self,
        sale_ref: &str,
        user_id: &str,
    ) -> Result<PurchaseOutcome, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let sale_id = Uuid::parse_str(sale_ref).ok();
        let mut refusal = PurchaseOutcome::SaleNotFound;
        for _ in 0..PURCHASE_ATTEMPTS {
            let attempt = sqlx::query_as::<_, PurchaseRow>(PURCHASE_SQL)
                .bind(sale_id)
                .bind(sale_ref)
                .bind(user_id)
                .bind(Uuid::new_v4())
                .bind(JobKind::SyncSaleState.as_str())
                .fetch_optional(&mut *conn)
                .await;
            match attempt {
                Ok(Some(row)) => return Ok(PurchaseOutcome::Purchased(row.into())),
                Ok(None) => {}
                Err(err) if violated_constraint(&err) == Some("purchases_one_per_user") => {}
                Err(err) => return Err(err.into()),
            }
            match classify_refusal(&mut conn, sale_ref, user_id).await? {
                Some(outcome) => refusal = outcome,
                // The sale is sellable now: the refusal was a boundary moment; try again.
                None => continue,
            }
            return Ok(refusal);
        }
        Ok(refusal)
    }

    /// The user's purchase in the sale `sale_ref`, if any. `None` for an unknown sale too;
    /// callers that must tell the two apart look the sale up first.
    pub async fn find_purchase(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<Purchase>, StoreError> {
        find_purchase(&mut *self.pool.acquire().await?, sale_id, user_id).await
    }
}

/// Why a purchase that sold nothing was refused, read after the fact; `None` when the sale is
/// sellable now. Order matters: a duplicate is never reported as sold out, and a sold-out sale
/// says so whatever else its state is.
async fn classify_refusal(
    conn: &mut PgConnection,
    sale_ref: &str,
    user_id: &str,
) -> Result<Option<PurchaseOutcome>, StoreError> {
    let Some(sale) = find_sale(conn, sale_ref).await? else {
        return Ok(Some(PurchaseOutcome::SaleNotFound));
    };
    if let Some(existing) = find_purchase(conn, sale.id, user_id).await? {
        return Ok(Some(PurchaseOutcome::AlreadyPurchased(existing)));
    }
    Ok(refusal_for(&sale))
}

fn refusal_for(sale: &Sale) -> Option<PurchaseOutcome> {
    if sale.checkout == Checkout::Queued {
        return Some(PurchaseOutcome::WrongCheckout);
    }
    if sale.available == 0 {
        return Some(PurchaseOutcome::SoldOut);
    }
    match sale.state() {
        SaleState::Active => None,
        state => Some(PurchaseOutcome::NotActive(state)),
    }
}

pub(super) async fn find_purchase(
    conn: &mut PgConnection,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<Purchase>, StoreError> {
    let row = sqlx::query_as::<_, PurchaseRow>(
        "SELECT id, sale_id, user_id, created_at FROM purchases
          WHERE sale_id = $1 AND user_id = $2",
    )
    .bind(sale_id)
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Purchase::from))
}

/// One buyer in a group-commit batch.
#[derive(Debug, Clone)]
pub struct BatchBuyer {
    pub user_id: String,
    pub purchase_id: Uuid,
}

/// Sells to a batch of distinct users of one sale in one statement: one row lock and one
/// commit (one WAL flush) for the whole batch.
///
/// Race-free under READ COMMITTED:
/// - `locked` takes the sale row with FOR NO KEY UPDATE (the lock an UPDATE of the counters
///   takes anyway; plain FOR UPDATE would also block the foreign-key checks of every insert
///   that references the sale); after waiting for the lock it sees the
///   latest committed counters, and the UPDATE in the same statement decrements by at most
///   that `available`, so the stock can never go below zero (the CHECKs back this up).
/// - Users who already own a purchase (as of the statement's snapshot) are left out. One who
///   bought through another instance after that snapshot makes the plain INSERT fail with
///   23505, which rolls back the whole statement, decrement included; the caller retries
///   the batch with a fresh snapshot. Users in one batch are distinct (the caller dedupes).
/// - The window, cancel and checkout are checked on the locked row.
/// - Winners are the first `n` in arrival order; the rest are refused only when the stock
///   is exhausted (or the sale is not sellable), so nobody hears `SOLD_OUT` while units remain.
const BATCH_SQL: &str = "
    WITH req AS (
        SELECT u.user_id, u.purchase_id, u.ord
          FROM unnest($2::text[], $3::uuid[]) WITH ORDINALITY AS u(user_id, purchase_id, ord)
    ), owned AS (
        SELECT p.id, p.user_id, p.created_at FROM purchases p
         WHERE p.sale_id = $1 AND p.user_id = ANY($2::text[])
    ), fresh AS (
        SELECT r.user_id, r.purchase_id, row_number() OVER (ORDER BY r.ord) AS place
          FROM req r WHERE NOT EXISTS (SELECT 1 FROM owned o WHERE o.user_id = r.user_id)
    ), locked AS (
        SELECT id, available FROM sales
         WHERE id = $1 AND checkout = 'instant' AND cancelled_at IS NULL
           AND starts_at <= now() AND now() < ends_at
           FOR NO KEY UPDATE
    ), taken AS (
        UPDATE sales s SET available = s.available - w.n, sold = s.sold + w.n
          FROM (SELECT LEAST(l.available, (SELECT count(*) FROM fresh))::int AS n FROM locked l) w
         WHERE s.id = $1 AND w.n > 0
        RETURNING w.n, s.available
    ), bought AS (
        INSERT INTO purchases (id, sale_id, user_id)
        SELECT f.purchase_id, $1, f.user_id FROM fresh f
         WHERE f.place <= (SELECT COALESCE(max(n), 0) FROM taken)
        RETURNING id, user_id, created_at
    ), sold_out_job AS (
        INSERT INTO jobs (kind, sale_id) SELECT $4, $1 FROM taken WHERE available = 0
    )
    SELECT true AS new, id, user_id, created_at FROM bought
    UNION ALL
    SELECT false AS new, id, user_id, created_at FROM owned";

#[derive(FromRow)]
struct BatchRow {
    new: bool,
    id: Uuid,
    user_id: String,
    created_at: DateTime<Utc>,
}

/// What a batch did for each user: bought now, owned already, or refused.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub bought: Vec<Purchase>,
    pub owned: Vec<Purchase>,
}

/// How often a batch is retried after a duplicate from another instance (23505).
const BATCH_ATTEMPTS: usize = 3;

impl Store {
    /// Runs [`BATCH_SQL`] for `buyers` (distinct users) of the sale `sale_id`. `Ok(None)` when
    /// it kept colliding with concurrent purchases of the same users elsewhere: the caller
    /// then buys one by one.
    pub async fn purchase_batch(
        &self,
        sale_id: Uuid,
        buyers: &[BatchBuyer],
    ) -> Result<Option<BatchResult>, StoreError> {
        let users: Vec<&str> = buyers.iter().map(|b| b.user_id.as_str()).collect();
        let ids: Vec<Uuid> = buyers.iter().map(|b| b.purchase_id).collect();
        for _ in 0..BATCH_ATTEMPTS {
            let rows = sqlx::query_as::<_, BatchRow>(BATCH_SQL)
                .bind(sale_id)
                .bind(&users)
                .bind(&ids)
                .bind(JobKind::SyncSaleState.as_str())
                .fetch_all(&self.pool)
                .await;
            match rows {
                Ok(rows) => {
                    let mut result = BatchResult::default();
                    for row in rows {
                        let purchase = Purchase {
                            id: row.id,
                            sale_id,
                            user_id: row.user_id,
                            created_at: row.created_at,
                        };
                        if row.new {
                            result.bought.push(purchase);
                        } else {
                            result.owned.push(purchase);
                        }
                    }
                    return Ok(Some(result));
                }
                Err(err) if violated_constraint(&err) == Some("purchases_one_per_user") => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(None)
    }

    /// Every purchase of the sale when it has at most `limit` (else `None`).
    pub async fn buyers_if_at_most(
        &self,
        sale_id: Uuid,
        limit: i64,
    ) -> Result<Option<Vec<Purchase>>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            "SELECT id, sale_id, user_id, created_at FROM purchases WHERE sale_id = $1 LIMIT $2",
        )
        .bind(sale_id)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok((rows.len() as i64 <= limit).then(|| rows.into_iter().map(Purchase::from).collect()))
    }

    /// The purchases these users own in the sale, read now.
    pub async fn purchases_of(
        &self,
        sale_id: Uuid,
        users: &[&str],
    ) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            "SELECT id, sale_id, user_id, created_at FROM purchases
              WHERE sale_id = $1 AND user_id = ANY($2::text[])",
        )
        .bind(sale_id)
        .bind(users)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Purchase::from).collect())
    }

    /// Why an instant purchase in the sale `sale_id` would be refused now, for a user known
    /// not to own one; `None` when the sale is sellable.
    pub async fn refusal_now(&self, sale_id: Uuid) -> Result<Option<PurchaseOutcome>, StoreError> {
        Ok(match self.sale_by_id(sale_id).await? {
            None => Some(PurchaseOutcome::SaleNotFound),
            Some(sale) => refusal_for(&sale),
        })
    }
}
