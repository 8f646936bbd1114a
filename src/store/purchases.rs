//! Instant purchases: the one statement that sells a unit, and the reads around it.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::jobs::JobKind;
use super::sales::sale_by_id;
use super::{Store, StoreError, deadline_missed, violated_constraint};
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
/// - Cancel, archive, start and end are re-checked on the locked row with the statement's
///   `now()`.
/// - The unit that sells out the sale queues the state job in the same statement.
///
/// The buyer is answered after the implicit commit of this single statement.
const PURCHASE_SQL: &str = "
    WITH taken AS (
        UPDATE sales SET available = available - 1, sold = sold + 1
         WHERE id = $1 AND checkout = 'instant' AND available > 0
           AND cancelled_at IS NULL AND archived_at IS NULL
           AND starts_at <= now() AND now() < ends_at
        RETURNING id, available
    ), sold_out_job AS (
        INSERT INTO jobs (kind, sale_id) SELECT $4, id FROM taken WHERE available = 0
    )
    INSERT INTO purchases (id, sale_id, user_id)
    SELECT $3, id, $2 FROM taken
    RETURNING id, sale_id, user_id, created_at";

/// How often a purchase that failed while the sale looked sellable right after is retried
/// (the statement saw `now()` a moment before the start, for example).
const PURCHASE_ATTEMPTS: usize = 3;

impl Store {
    /// Tries to buy one unit of the sale `sale_id` for `user_id`, answered by `cut_off`: a
    /// connection not had by then is [`StoreError::Unavailable`] (nothing was sent), a
    /// statement not answered by then [`StoreError::OutcomeUnknown`].
    pub async fn purchase(
        &self,
        sale_id: Uuid,
        user_id: &str,
        cut_off: tokio::time::Instant,
    ) -> Result<PurchaseOutcome, StoreError> {
        let mut conn = self.conn_until(cut_off).await?;
        let sent = AtomicBool::new(false);
        let bought = purchase(&mut conn, sale_id, user_id, &sent);
        let bought = tokio::time::timeout_at(cut_off, bought).await;
        bought.unwrap_or_else(|_| {
            let sent = sent.load(Ordering::Acquire);
            Err(deadline_missed(&mut conn, sent, "purchase"))
        })
    }

    /// The user's purchase in the sale `sale_id`, if any. `None` for an unknown sale too;
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
/// sellable right after a refusal (a boundary moment). `sent` is set as the statement goes
/// out: a failure before it (behind a pooler, its BEGIN) wrote nothing.
async fn purchase(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
    sent: &AtomicBool,
) -> Result<PurchaseOutcome, StoreError> {
    let mut refusal = PurchaseOutcome::SaleNotFound;
    for _ in 0..PURCHASE_ATTEMPTS {
        let mut unit = conn.unit().await?;
        sent.store(true, Ordering::Release);
        let attempt = sqlx::query_as::<_, PurchaseRow>(PURCHASE_SQL)
            .bind(sale_id)
            .bind(user_id)
            .bind(Uuid::new_v4())
            .bind(JobKind::SyncSaleState.as_str())
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
            Err(err) if violated_constraint(&err) == Some("purchases_one_per_user") => {}
            Err(err) => return Err(StoreError::after_write(err)),
        }
        match classify_refusal(conn, sale_id, user_id).await? {
            Some(outcome) => refusal = outcome,
            // The sale is sellable now: the refusal was a boundary moment; try again.
            None => continue,
        }
        return Ok(refusal);
    }
    Ok(refusal)
}

/// Why a purchase that sold nothing was refused, read after the fact; `None` when the sale is
/// sellable now. Order matters: an archived sale answers nothing else; a duplicate is never
/// reported as sold out, and a sold-out sale says so whatever else its state is.
async fn classify_refusal(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<PurchaseOutcome>, StoreError> {
    let Some(sale) = sale_by_id(conn, sale_id).await? else {
        return Ok(Some(PurchaseOutcome::SaleNotFound));
    };
    if sale.archived_at.is_some() {
        return Ok(Some(PurchaseOutcome::SaleArchived));
    }
    if let Some(existing) = find_purchase(conn, sale.id, user_id).await? {
        return Ok(Some(PurchaseOutcome::AlreadyPurchased(existing)));
    }
    Ok(refusal_for(&sale))
}

fn refusal_for(sale: &Sale) -> Option<PurchaseOutcome> {
    if sale.archived_at.is_some() {
        return Some(PurchaseOutcome::SaleArchived);
    }
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
    conn: &mut Db,
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
///   that references the sale) and returns its latest committed version. Everything that
///   inserts a purchase of this sale (this statement, [`PURCHASE_SQL`], a confirm) does so
///   under that row lock, so no insert of this sale is in flight while we hold it.
/// - Winners are the first `available` fresh users in arrival order; the INSERT skips (ON
///   CONFLICT DO NOTHING) a user who bought elsewhere after this statement's snapshot (a
///   retry through another instance), instead of failing the whole batch. The decrement is
///   the number of rows actually inserted, so no unit is burnt by a skipped duplicate and
///   `available` can never go below zero (the CHECKs back this up).
/// - Sellability (checkout, window, cancel, archive) is decided on the locked row. Users
///   who own a purchase are reported only while the sale is not archived: an archived
///   sale's buyers are never told about it through a sku that now names another sale.
/// - Refused users are left for the caller, who reads why the sale refuses now, runs this
///   statement again for them while it is sellable, and reads their purchases after a
///   final refusal: nobody hears `SOLD_OUT` while units remain or after they bought.
const BATCH_SQL: &str = "
    WITH req AS (
        SELECT u.user_id, u.purchase_id, u.ord
          FROM unnest($2::text[], $3::uuid[]) WITH ORDINALITY AS u(user_id, purchase_id, ord)
    ), locked AS (
        SELECT available, archived_at IS NULL AS live,
               checkout = 'instant' AND cancelled_at IS NULL AND archived_at IS NULL
                   AND starts_at <= now() AND now() < ends_at AS sellable
          FROM sales WHERE id = $1
           FOR NO KEY UPDATE
    ), owned AS (
        SELECT p.id, p.user_id, p.created_at FROM purchases p
         WHERE p.sale_id = $1 AND p.user_id = ANY($2::text[])
           AND EXISTS (SELECT 1 FROM locked WHERE live)
    ), fresh AS (
        SELECT r.user_id, r.purchase_id, row_number() OVER (ORDER BY r.ord) AS place
          FROM req r WHERE NOT EXISTS (SELECT 1 FROM owned o WHERE o.user_id = r.user_id)
    ), bought AS (
        INSERT INTO purchases (id, sale_id, user_id)
        SELECT f.purchase_id, $1, f.user_id FROM fresh f
         WHERE f.place <= (SELECT available FROM locked WHERE sellable)
        ON CONFLICT ON CONSTRAINT purchases_one_per_user DO NOTHING
        RETURNING id, user_id, created_at
    ), taken AS (
        UPDATE sales SET available = available - (SELECT count(*) FROM bought),
                         sold = sold + (SELECT count(*) FROM bought)
         WHERE id = $1 AND (SELECT count(*) FROM bought) > 0
        RETURNING available
    ), sold_out_job AS (
        INSERT INTO jobs (kind, sale_id) SELECT $4, $1 FROM taken WHERE available = 0
    )
    SELECT 'bought' AS kind, id, user_id, created_at FROM bought
    UNION ALL
    SELECT 'owned', id, user_id, created_at FROM owned
    UNION ALL
    SELECT 'live', NULL, NULL, NULL FROM locked WHERE live";

#[derive(FromRow)]
struct BatchRow {
    kind: String,
    id: Option<Uuid>,
    user_id: Option<String>,
    created_at: Option<DateTime<Utc>>,
}

/// What a batch did for each user: bought now, owned already, or refused.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub bought: Vec<Purchase>,
    pub owned: Vec<Purchase>,
    /// False when the sale is archived or gone: nothing in the batch was about it.
    pub sale_unarchived: bool,
}

/// Runs [`BATCH_SQL`] on `conn` for `buyers` (distinct users) of the sale `sale_id`. `sent`
/// is set as the statement goes out: a failure before it (behind a pooler, its BEGIN)
/// wrote nothing.
pub(super) async fn purchase_batch(
    conn: &mut Db,
    sale_id: Uuid,
    buyers: &[BatchBuyer],
    sent: &AtomicBool,
) -> Result<BatchResult, StoreError> {
    let users: Vec<&str> = buyers.iter().map(|b| b.user_id.as_str()).collect();
    let ids: Vec<Uuid> = buyers.iter().map(|b| b.purchase_id).collect();
    let mut unit = conn.unit().await?;
    sent.store(true, Ordering::Release);
    let rows = sqlx::query_as::<_, BatchRow>(BATCH_SQL)
        .bind(sale_id)
        .bind(&users)
        .bind(&ids)
        .bind(JobKind::SyncSaleState.as_str())
        .fetch_all(&mut *unit)
        .await
        .map_err(StoreError::after_write)?;
    unit.commit().await.map_err(StoreError::after_write)?;
    let mut result = BatchResult::default();
    for row in rows {
        let (Some(id), Some(user_id), Some(created_at)) = (row.id, row.user_id, row.created_at)
        else {
            result.sale_unarchived |= row.kind == "live";
            continue;
        };
        let purchase = Purchase {
            id,
            sale_id,
            user_id,
            created_at,
        };
        if row.kind == "bought" {
            result.bought.push(purchase);
        } else {
            result.owned.push(purchase);
        }
    }
    Ok(result)
}

impl Store {
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
        .fetch_all(&mut self.conn().await?)
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
        .fetch_all(&mut self.conn().await?)
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
