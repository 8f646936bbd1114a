//! Sales: create, resolve, read, list, and the state-change log; how a sale ends early
//! (cancel, DELETE, archive) is in `sales/ending.rs`.
//!
//! [`Store::resolve_sale`] is the one place that turns the `{sale}` of a path (a UUID or a
//! sku) into a sale; everything else in the store takes the sale's id.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::jobs::{self, JobKind};
use super::raffle_tick::enqueue_raffle_tick;
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, EndReason, NewSale, Sale};

mod ending;
mod variants;

use variants::create_variants;

/// The columns of a sale plus the database clock, in the order [`SaleRow`] reads them.
/// `queue_length` comes from the sale's queue row (absent for instant sales), `variants`
/// from its variant rows (JSON; NULL for a sale without variants), with the statement's
/// snapshot: a statement that waited for the sale row's lock (cancel) reads the row's
/// latest version but the variants of its older snapshot, so such a caller reads the sale
/// again to show it.
pub(super) const SALE_COLUMNS: &str = "id, sku, name, stock, available, held, sold, starts_at, \
     ends_at, checkout, hold_seconds, queue_capacity, max_active_holds, \
     COALESCE((SELECT q.waiting FROM sale_queues q WHERE q.sale_id = id), 0) AS queue_length, \
     per_customer_limit, max_per_order, allowlist, cancelled_at, archived_at, created_at, \
     now() AS observed_at, \
     (SELECT json_agg(json_build_object('position', v.position, 'code', v.code, \
             'stock', v.stock, 'available', v.available, 'held', v.held, 'sold', v.sold) \
             ORDER BY v.position)::text \
        FROM sale_variants v WHERE v.sale_id = id) AS variants";

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
    per_customer_limit: i32,
    max_per_order: i32,
    allowlist: bool,
    cancelled_at: Option<DateTime<Utc>>,
    archived_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    observed_at: DateTime<Utc>,
    variants: Option<String>,
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
            // The column's CHECK allows only the three values.
            checkout: Checkout::parse(&row.checkout).unwrap_or(Checkout::Instant),
            hold_seconds: row.hold_seconds,
            queue_capacity: row.queue_capacity,
            max_active_holds: row.max_active_holds,
            queue_length: row.queue_length,
            per_customer_limit: row.per_customer_limit,
            max_per_order: row.max_per_order,
            allowlist: row.allowlist,
            cancelled_at: row.cancelled_at,
            archived_at: row.archived_at,
            created_at: row.created_at,
            observed_at: row.observed_at,
            // Built by SALE_COLUMNS's own json_build_object: it always parses (logged if
            // not: the statements check an order's variant against the rows themselves).
            variants: row.variants.map_or_else(Vec::new, |json| {
                serde_json::from_str(&json).unwrap_or_else(|err| {
                    tracing::error!(sale = %row.id, error = %err, "unreadable variants");
                    Vec::new()
                })
            }),
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
    /// With `archived`: the live holds the archive voided (their units went back to stock).
    pub voided_holds: Option<i32>,
}

/// What a cancel did.
#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(Sale),
    /// The sale had already ended (by time, sell-out or an earlier cancel); nothing changed.
    AlreadyEnded(Sale),
    NotFound,
}

/// What a DELETE of a sale did.
#[derive(Debug)]
pub enum RemoveOutcome {
    /// Nothing was sold or held: the sale and every row of it are gone.
    Deleted,
    /// It had purchases or holds: archived (kept, hidden, sku freed); `voided_holds` live
    /// holds went back to stock.
    Archived {
        sale: Box<Sale>,
        voided_holds: i64,
    },
    NotFound,
}

impl Store {
    /// Creates a sale and queues the state jobs for its start and end, in one transaction.
    pub async fn create_sale(&self, new: &NewSale) -> Result<Sale, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let sql = format!(
            "INSERT INTO sales (id, sku, name, stock, available, starts_at, ends_at, checkout, \
                                hold_seconds, queue_capacity, max_active_holds, \
                                per_customer_limit, max_per_order, allowlist)
             SELECT $1, $2, $3, $4, $4, start_at, COALESCE($6, start_at + interval '1 hour'),
                    $7, $8, $9, $10, $11, $12, $13
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
            .bind(new.per_customer_limit)
            .bind(new.max_per_order)
            .bind(new.allowlist)
            .fetch_one(&mut *tx)
            .await;
        let sale: Sale = match inserted {
            Ok(row) => row.into(),
            Err(err) => {
                return Err(match violated_constraint(&err) {
                    Some("sales_live_sku") => StoreError::SkuTaken(new.sku.clone()),
                    Some("sales_window_ordered") => StoreError::EndBeforeStart,
                    _ => err.into(),
                });
            }
        };
        let sale = if new.variants.is_empty() {
            sale
        } else {
            create_variants(&mut tx, sale.id, new).await?
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
            create_queue(&mut tx, sale.id).await?;
            jobs::enqueue_queue_tick(&mut tx, sale.id, Some(sale.starts_at)).await?;
        }
        if sale.checkout == Checkout::Raffle {
            // The draw is the first tick's, at the end of the entry window.
            create_raffle(&mut tx, sale.id).await?;
            enqueue_raffle_tick(&mut tx, sale.id, Some(sale.ends_at)).await?;
        }
        tx.commit().await?;
        Ok(sale)
    }

    /// The sale a path's `{sale}` names, with its counters as of now: the sale with that id
    /// (archived ones included: ids are never reused), else the *live* sale with that sku.
    /// The only statement that reads a UUID-or-sku reference; resolve once, then use the id.
    pub async fn resolve_sale(&self, sale_ref: &str) -> Result<Option<Sale>, StoreError> {
        let sql = format!(
            "SELECT {SALE_COLUMNS} FROM sales
              WHERE id = $1 OR (sku = $2 AND archived_at IS NULL)
              ORDER BY id = $1 DESC NULLS LAST LIMIT 1"
        );
        let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::parse_str(sale_ref).ok())
            .bind(sale_ref)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(row.map(Sale::from))
    }

    /// The id of the live (not archived) sale with this sku.
    pub async fn live_sale_id(&self, sku: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM sales WHERE sku = $1 AND archived_at IS NULL")
                .bind(sku)
                .fetch_optional(&mut self.conn().await?)
                .await?,
        )
    }

    /// The sale with this id (archived or not).
    pub async fn sale_by_id(&self, id: Uuid) -> Result<Option<Sale>, StoreError> {
        sale_by_id(&mut self.conn().await?, id).await
    }

    /// Whether the sale with this id exists and is not archived: one primary-key probe, for
    /// answers from memory that must still be about the sku's current sale.
    pub async fn is_unarchived(&self, id: Uuid) -> Result<bool, StoreError> {
        let live: Option<bool> =
            sqlx::query_scalar("SELECT archived_at IS NULL FROM sales WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut self.conn().await?)
                .await?;
        Ok(live == Some(true))
    }

    /// Live (not archived) sales, newest first.
    pub async fn list_sales(&self, limit: i64, offset: i64) -> Result<Vec<Sale>, StoreError> {
        let sql = format!(
            "SELECT {SALE_COLUMNS} FROM sales WHERE archived_at IS NULL
              ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut self.conn().await?)
            .await?;
        Ok(rows.into_iter().map(Sale::from).collect())
    }

    /// The recorded state changes of a sale, oldest first.
    pub async fn sale_events(&self, sale_id: Uuid) -> Result<Vec<SaleEvent>, StoreError> {
        let events = sqlx::query_as::<_, SaleEvent>(
            "SELECT state, reason, occurred_at, recorded_at, voided_holds FROM sale_events
              WHERE sale_id = $1 ORDER BY occurred_at, id",
        )
        .bind(sale_id)
        .fetch_all(&mut self.conn().await?)
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
            record_event(
                &mut self.conn().await?,
                sale.id,
                "active",
                None,
                sale.starts_at,
            )
            .await?;
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
            record_event(
                &mut self.conn().await?,
                sale.id,
                "ended",
                Some(reason),
                occurred_at,
            )
            .await?;
        }
        Ok(Some(sale))
    }

    async fn last_sale_at(&self, sale_id: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT max(created_at) FROM purchases WHERE sale_id = $1")
                .bind(sale_id)
                .fetch_one(&mut self.conn().await?)
                .await?;
        Ok(at)
    }
}

async fn record_event(
    conn: &mut Db,
    sale_id: Uuid,
    state: &str,
    reason: Option<EndReason>,
    occurred_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // The sale row first, the order every writer of sale_events takes (see the migration
    // `state_events_in_tx`): the row lock is taken by the SELECT the INSERT reads from.
    sqlx::query(
        "INSERT INTO sale_events (sale_id, state, reason, occurred_at)
         SELECT id, $2, $3, $4 FROM sales WHERE id = $1 FOR NO KEY UPDATE
         ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING",
    )
    .bind(sale_id)
    .bind(state)
    .bind(reason.map(EndReason::as_str))
    .bind(occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The sale with this id on `conn` (archived or not).
pub(super) async fn sale_by_id(conn: &mut Db, id: Uuid) -> Result<Option<Sale>, StoreError> {
    let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
    let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Sale::from))
}

/// Creates the queue row of a new queued sale, with the seed of its pre-queue shuffle.
async fn create_queue(conn: &mut Db, sale_id: Uuid) -> Result<(), StoreError> {
    let seed = (Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
    sqlx::query("INSERT INTO sale_queues (sale_id, shuffle_seed) VALUES ($1, $2)")
        .bind(sale_id)
        .bind(seed)
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates the raffle row of a new raffle, with the seed of its draw.
async fn create_raffle(conn: &mut Db, sale_id: Uuid) -> Result<(), StoreError> {
    let seed = (Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
    sqlx::query("INSERT INTO sale_raffles (sale_id, draw_seed) VALUES ($1, $2)")
        .bind(sale_id)
        .bind(seed)
        .execute(conn)
        .await?;
    Ok(())
}
