//! Sales: create, read, list, cancel, delete, and the state-change log.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::{self, JobKind};
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, EndReason, NewSale, Sale};

/// The columns of a sale plus the database clock, in the order [`SaleRow`] reads them.
/// `queue_length` comes from the sale's queue row (absent for instant sales).
pub(super) const SALE_COLUMNS: &str = "id, sku, name, stock, available, held, sold, starts_at, \
     ends_at, checkout, hold_seconds, queue_capacity, max_active_holds, \
     COALESCE((SELECT q.waiting FROM sale_queues q WHERE q.sale_id = id), 0) AS queue_length, \
     cancelled_at, created_at, now() AS observed_at";

#[derive(FromRow)]
pub(super) struct SaleRow {
    id: Uuid,
    sku: String,
    name: String,
    stock: i32,
    available: i32,
    held: i32,
    sold: i32,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    checkout: String,
    hold_seconds: i32,
    queue_capacity: i32,
    max_active_holds: i32,
    queue_length: i32,
    cancelled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    observed_at: DateTime<Utc>,
}

impl From<SaleRow> for Sale {
    fn from(row: SaleRow) -> Self {
        Sale {
            id: row.id,
            sku: row.sku,
            name: row.name,
            stock: row.stock,
            available: row.available,
            held: row.held,
            sold: row.sold,
            starts_at: row.starts_at,
            ends_at: row.ends_at,
            // The column's CHECK allows only the two values.
            checkout: Checkout::parse(&row.checkout).unwrap_or(Checkout::Instant),
            hold_seconds: row.hold_seconds,
            queue_capacity: row.queue_capacity,
            max_active_holds: row.max_active_holds,
            queue_length: row.queue_length,
            cancelled_at: row.cancelled_at,
            created_at: row.created_at,
            observed_at: row.observed_at,
        }
    }
}

/// One recorded state change of a sale.
#[derive(Debug, Clone, FromRow)]
pub struct SaleEvent {
    pub state: String,
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// What a cancel did.
#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(Sale),
    /// The sale had already ended (by time, sell-out or an earlier cancel); nothing changed.
    AlreadyEnded(Sale),
    NotFound,
}

/// The `{sale}` path segment: a UUID or a sku. A UUID that names no sale is tried as a sku.
fn sale_ref_id(sale_ref: &str) -> Option<Uuid> {
    Uuid::parse_str(sale_ref).ok()
}

impl Store {
    /// Creates a sale and queues the state jobs for its start and end, in one transaction.
    pub async fn create_sale(&self, new: &NewSale) -> Result<Sale, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "INSERT INTO sales (id, sku, name, stock, available, starts_at, ends_at, checkout, \
                                hold_seconds, queue_capacity, max_active_holds)
             SELECT $1, $2, $3, $4, $4, start_at, COALESCE($6, start_at + interval '1 hour'),
                    $7, $8, $9, $10
               FROM (SELECT COALESCE($5, now()) AS start_at) AS s
             RETURNING {SALE_COLUMNS}"
        );
        let inserted = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::new_v4())
            .bind(&new.sku)
            .bind(new.name.trim())
            .bind(new.stock)
            .bind(new.starts_at)
            .bind(new.ends_at)
            .bind(new.checkout.as_str())
            .bind(new.hold_seconds)
            .bind(new.queue_capacity)
            .bind(new.max_active_holds)
            .fetch_one(&mut *tx)
            .await;
        let sale: Sale = match inserted {
            Ok(row) => row.into(),
            Err(err) => {
                return Err(match violated_constraint(&err) {
                    Some("sales_sku_key") => StoreError::SkuTaken(new.sku.clone()),
                    Some("sales_window_ordered") => StoreError::EndBeforeStart,
                    _ => err.into(),
                });
            }
        };
        jobs::enqueue(
            &mut tx,
            JobKind::SyncSaleState,
            sale.id,
            Some(sale.starts_at),
        )
        .await?;
        jobs::enqueue(&mut tx, JobKind::SyncSaleState, sale.id, Some(sale.ends_at)).await?;
        if sale.checkout == Checkout::Queued {
            super::queue::create_queue(&mut tx, sale.id).await?;
            jobs::enqueue_queue_tick(&mut tx, sale.id, Some(sale.starts_at)).await?;
        }
        tx.commit().await?;
        Ok(sale)
    }

    /// The sale named by a UUID or sku, with its counters as of now.
    pub async fn find_sale(&self, sale_ref: &str) -> Result<Option<Sale>, StoreError> {
        find_sale(&mut *self.pool.acquire().await?, sale_ref).await
    }

    /// The sale with this id.
    pub async fn sale_by_id(&self, id: Uuid) -> Result<Option<Sale>, StoreError> {
        let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
        let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Sale::from))
    }

    /// Sales, newest first.
    pub async fn list_sales(&self, limit: i64, offset: i64) -> Result<Vec<Sale>, StoreError> {
        let sql = format!(
            "SELECT {SALE_COLUMNS} FROM sales ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Sale::from).collect())
    }

    /// Ends a scheduled or active sale now.
    ///
    /// Race-free under READ COMMITTED: the UPDATE takes the sale's row lock, the same lock
    /// every purchase takes to decrement the stock, so a purchase either committed before the
    /// cancel (and counts) or re-checks `cancelled_at IS NULL` on the cancelled row and is
    /// refused. The state job is queued in the same statement, so a cancel is never lost.
    pub async fn cancel_sale(&self, sale_ref: &str) -> Result<CancelOutcome, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(sale) = find_sale(&mut conn, sale_ref).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let sql = format!(
            "WITH cancelled AS (
                 UPDATE sales SET cancelled_at = now()
                  WHERE id = $1 AND cancelled_at IS NULL AND now() < ends_at
                    AND (available > 0 OR held > 0)
                 RETURNING *
             ), job AS (
                 INSERT INTO jobs (kind, sale_id) SELECT $2, id FROM cancelled
             )
             SELECT {SALE_COLUMNS} FROM cancelled"
        );
        let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale.id)
            .bind(JobKind::SyncSaleState.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match row {
            Some(row) => CancelOutcome::Cancelled(row.into()),
            None => match find_sale(&mut conn, &sale.id.to_string()).await? {
                Some(now) => CancelOutcome::AlreadyEnded(now),
                None => CancelOutcome::NotFound,
            },
        })
    }

    /// Deletes a sale and, by cascade, its purchases, events and jobs: the sku is free again
    /// at once and a new sale with it starts clean. Returns whether a sale was deleted.
    pub async fn delete_sale(&self, sale_ref: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM sales
              WHERE id = (SELECT id FROM sales WHERE id = $1 OR sku = $2
                           ORDER BY id = $1 DESC NULLS LAST LIMIT 1)",
        )
        .bind(sale_ref_id(sale_ref))
        .bind(sale_ref)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// The recorded state changes of a sale, oldest first.
    pub async fn sale_events(&self, sale_id: Uuid) -> Result<Vec<SaleEvent>, StoreError> {
        let events = sqlx::query_as::<_, SaleEvent>(
            "SELECT state, reason, occurred_at, recorded_at FROM sale_events
              WHERE sale_id = $1 ORDER BY occurred_at, id",
        )
        .bind(sale_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(events)
    }

    /// Records the state changes the sale has gone through by now (idempotent: each state is
    /// recorded once, by whichever runner gets there first). Returns the sale, or `None` when
    /// it was deleted.
    pub async fn record_state_changes(&self, sale_id: Uuid) -> Result<Option<Sale>, StoreError> {
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            return Ok(None);
        };
        let started = sale.observed_at >= sale.starts_at
            && sale.cancelled_at.is_none_or(|at| at > sale.starts_at);
        if started {
            record_event(&self.pool, sale.id, "active", None, sale.starts_at).await?;
        }
        if let Some(reason) = sale.end_reason() {
            let occurred_at = match reason {
                EndReason::Cancelled => sale.cancelled_at.unwrap_or(sale.observed_at),
                EndReason::Time => sale.ends_at,
                EndReason::SoldOut => self
                    .last_sale_at(sale.id)
                    .await?
                    .unwrap_or(sale.observed_at),
            };
            record_event(&self.pool, sale.id, "ended", Some(reason), occurred_at).await?;
        }
        Ok(Some(sale))
    }

    async fn last_sale_at(&self, sale_id: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(created_at) FROM purchases WHERE sale_id = $1")
                .bind(sale_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(at)
    }
}

async fn record_event(
    pool: &sqlx::PgPool,
    sale_id: Uuid,
    state: &str,
    reason: Option<EndReason>,
    occurred_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO sale_events (sale_id, state, reason, occurred_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING",
    )
    .bind(sale_id)
    .bind(state)
    .bind(reason.map(EndReason::as_str))
    .bind(occurred_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// The sale named by a UUID or sku on `conn`.
pub(super) async fn find_sale(
    conn: &mut PgConnection,
    sale_ref: &str,
) -> Result<Option<Sale>, StoreError> {
    let sql = format!(
        "SELECT {SALE_COLUMNS} FROM sales WHERE id = $1 OR sku = $2
          ORDER BY id = $1 DESC NULLS LAST LIMIT 1"
    );
    let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
        .bind(sale_ref_id(sale_ref))
        .bind(sale_ref)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Sale::from))
}
