//! Instant purchases: the one statement that sells a unit, and the reads around it.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::JobKind;
use super::sales::find_sale;
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, Purchase, Sale, SaleState};

/// The result of an instant purchase attempt. Refusals are values, not errors.
#[derive(Debug)]
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
