//! Sales: create, resolve, read, list, cancel, delete or archive, and the state-change log.
//!
//! [`Store::resolve_sale`] is the one place that turns the `{sale}` of a path (a UUID or a
//! sku) into a sale; everything else in the store takes the sale's id.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::{self, JobKind};
use super::queue_tick::{HoldsToReturn, return_holds};
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, EndReason, NewSale, Sale};

/// The columns of a sale plus the database clock, in the order [`SaleRow`] reads them.
/// `queue_length` comes from the sale's queue row (absent for instant sales).
pub(super) const SALE_COLUMNS: &str = "id, sku, name, stock, available, held, sold, starts_at, \
     ends_at, checkout, hold_seconds, queue_capacity, max_active_holds, \
     COALESCE((SELECT q.waiting FROM sale_queues q WHERE q.sale_id = id), 0) AS queue_length, \
     cancelled_at, archived_at, created_at, now() AS observed_at";

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
    archived_at: Option<DateTime<Utc>>,
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
            archived_at: row.archived_at,
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
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
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
                    Some("sales_live_sku") => StoreError::SkuTaken(new.sku.clone()),
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
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(row.map(Sale::from))
    }

    /// The id of the live (not archived) sale with this sku.
    pub async fn live_sale_id(&self, sku: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM sales WHERE sku = $1 AND archived_at IS NULL")
                .bind(sku)
                .fetch_optional(&mut *self.conn().await?)
                .await?,
        )
    }

    /// The sale with this id (archived or not).
    pub async fn sale_by_id(&self, id: Uuid) -> Result<Option<Sale>, StoreError> {
        sale_by_id(&mut *self.conn().await?, id).await
    }

    /// Whether the sale with this id exists and is not archived: one primary-key probe, for
    /// answers from memory that must still be about the sku's current sale.
    pub async fn is_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let live: Option<bool> =
            sqlx::query_scalar("SELECT archived_at IS NULL FROM sales WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
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
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.into_iter().map(Sale::from).collect())
    }

    /// Ends a scheduled or active sale now.
    ///
    /// Race-free under READ COMMITTED: the UPDATE takes the sale's row lock, the same lock
    /// every purchase takes to decrement the stock, so a purchase either committed before the
    /// cancel (and counts) or re-checks `cancelled_at IS NULL` on the cancelled row and is
    /// refused. The state job is queued in the same statement, so a cancel is never lost.
    /// A queued sale's queue row is locked too (a no-op update), after the sale row, the
    /// order admission takes: a join batch holds that row while it reads the sale, so a
    /// join either read the sale after this commit (and is refused) or committed before it.
    pub async fn cancel_sale(&self, sale_id: Uuid) -> Result<CancelOutcome, StoreError> {
        let sql = format!(
            "WITH cancelled AS (
                 UPDATE sales SET cancelled_at = now()
                  WHERE id = $1 AND cancelled_at IS NULL AND archived_at IS NULL
                    AND now() < ends_at AND (available > 0 OR held > 0)
                 RETURNING *
             ), job AS (
                 INSERT INTO jobs (kind, sale_id) SELECT $2, id FROM cancelled
             ), states AS (
                 INSERT INTO sale_events (sale_id, state, reason, occurred_at)
                 SELECT c.id, v.state, v.reason, v.at
                   FROM cancelled c,
                        LATERAL (VALUES (1, 'active', NULL::text, c.starts_at),
                                        (2, 'ended', 'cancelled', c.cancelled_at))
                                AS v(ord, state, reason, at)
                  WHERE v.state = 'ended' OR c.starts_at < c.cancelled_at
                  ORDER BY v.ord
                 ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING
             ), door AS (
                 UPDATE sale_queues SET last_ticket = last_ticket
                  WHERE sale_id IN (SELECT id FROM cancelled)
             )
             SELECT {SALE_COLUMNS} FROM cancelled"
        );
        let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(JobKind::SyncSaleState.as_str())
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(match row {
            Some(row) => CancelOutcome::Cancelled(row.into()),
            None => match self.sale_by_id(sale_id).await? {
                Some(now) => CancelOutcome::AlreadyEnded(now),
                None => CancelOutcome::NotFound,
            },
        })
    }

    /// DELETE of a sale: removed outright when nothing was ever sold or held and nobody
    /// ever joined its queue (its jobs and events go with it by cascade), else archived
    /// (see [`archive_sale`](Self::archive_sale)): waiting buyers keep their entries and
    /// learn the sale is closed. Either way its sku is free at once.
    ///
    /// Race-free under READ COMMITTED, in one transaction, in the lock order of admission
    /// and of a cancel (sale row, then queue row):
    /// 1. The sale row FOR NO KEY UPDATE: every statement that sells or holds a unit changes
    ///    `sold`/`held` under this row's lock (the purchase UPDATE, the batch's FOR NO KEY
    ///    UPDATE, admission), so from here they wait; a join's foreign-key check (KEY SHARE)
    ///    does not, so a join in flight finishes.
    /// 2. The queue row FOR UPDATE (a queued sale): every join inserts under it, so from here
    ///    no entry can be added, and one just added is committed.
    /// 3. The DELETE, in a statement whose snapshot is taken after both locks, re-checks
    ///    `sold = 0 AND held = 0` and that no entry exists. A unit or an entry committed
    ///    first makes it match nothing, and the sale is archived instead. The
    ///    `ON DELETE RESTRICT` key of purchases would refuse the DELETE anyway.
    pub async fn remove_sale(&self, sale_id: Uuid) -> Result<RemoveOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for lock in [
            "SELECT 1 FROM sales WHERE id = $1 FOR NO KEY UPDATE",
            "SELECT 1 FROM sale_queues WHERE sale_id = $1 FOR UPDATE",
        ] {
            sqlx::query(lock).bind(sale_id).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query(
            "DELETE FROM sales WHERE id = $1 AND sold = 0 AND held = 0 AND archived_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM queue_entries WHERE sale_id = $1)",
        )
        .bind(sale_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        drop(conn);
        if deleted.rows_affected() > 0 {
            return Ok(RemoveOutcome::Deleted);
        }
        self.archive_sale(sale_id).await
    }

    /// Archives a sale: hidden from every listing, its sku free for a new sale, nothing sold
    /// or held from now on, and its live holds voided back to stock; its purchases, events
    /// and queue history stay, readable by the sale's id. Archiving again changes nothing.
    ///
    /// Two short transactions, in the lock order the buyers use:
    /// 1. Under the sale row's lock: set `archived_at` (and `cancelled_at`, when it could
    ///    still sell), record the `archived` event, queue the state job and, for a queued
    ///    sale, a tick; and lock the queue row after the sale's, as a cancel does (a join
    ///    batch reads the sale under that lock, so no join commits after the archive). From this commit on, a purchase, an admission or a confirm re-checks
    ///    `archived_at IS NULL` (or `cancelled_at`) on the locked row and is refused.
    /// 2. Void the live holds: lock the held entries (waiting for a confirm in flight, which
    ///    now fails), mark them expired and move their units from `held` to `available` in
    ///    one statement, entries before the sale row like a confirm or a release. Should the
    ///    service die in between, the queued tick's expiry treats an archived sale like a
    ///    cancelled one and voids what is left.
    pub async fn archive_sale(&self, sale_id: Uuid) -> Result<RemoveOutcome, StoreError> {
        let sql = format!(
            "WITH archived AS (
                 UPDATE sales
                    SET archived_at = now(),
                        cancelled_at = CASE WHEN cancelled_at IS NULL AND now() < ends_at
                                                 AND (available > 0 OR held > 0)
                                            THEN now() ELSE cancelled_at END
                  WHERE id = $1 AND archived_at IS NULL
                 RETURNING *
             ), event AS (
                 INSERT INTO sale_events (sale_id, state, reason, occurred_at, voided_holds)
                 SELECT a.id, v.state, v.reason, v.at, v.voided
                   FROM archived a,
                        LATERAL (VALUES (1, 'active', NULL::text, a.starts_at, NULL::int),
                                        (2, 'ended', 'cancelled', a.cancelled_at, NULL),
                                        (3, 'archived', NULL, a.archived_at, 0))
                                AS v(ord, state, reason, at, voided)
                  WHERE v.state = 'archived'
                     -- This archive cancelled it: the cancel's event, after its start's.
                     OR (a.cancelled_at = a.archived_at
                         AND (v.state = 'ended' OR a.starts_at < a.cancelled_at))
                  ORDER BY v.ord
                 ON CONFLICT ON CONSTRAINT sale_events_once DO NOTHING
             ), state_job AS (
                 INSERT INTO jobs (kind, sale_id) SELECT $2, id FROM archived
             ), door AS (
                 UPDATE sale_queues SET last_ticket = last_ticket
                  WHERE sale_id IN (SELECT id FROM archived)
             )
             SELECT {SALE_COLUMNS} FROM archived"
        );
        let archived = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(JobKind::SyncSaleState.as_str())
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        let Some(archived) = archived else {
            return Ok(match self.sale_by_id(sale_id).await? {
                // Archived before: nothing more to do.
                Some(sale) => RemoveOutcome::Archived {
                    sale: Box::new(sale),
                    voided_holds: 0,
                },
                None => RemoveOutcome::NotFound,
            });
        };
        if archived.checkout == Checkout::Queued.as_str() {
            jobs::enqueue_queue_tick(&mut *self.conn().await?, sale_id, None).await?;
        }
        let voided_holds = return_holds(&self.pool, sale_id, HoldsToReturn::All).await?;
        let sale = self
            .sale_by_id(sale_id)
            .await?
            .unwrap_or_else(|| archived.into());
        Ok(RemoveOutcome::Archived {
            sale: Box::new(sale),
            voided_holds,
        })
    }

    /// The recorded state changes of a sale, oldest first.
    pub async fn sale_events(&self, sale_id: Uuid) -> Result<Vec<SaleEvent>, StoreError> {
        let events = sqlx::query_as::<_, SaleEvent>(
            "SELECT state, reason, occurred_at, recorded_at, voided_holds FROM sale_events
              WHERE sale_id = $1 ORDER BY occurred_at, id",
        )
        .bind(sale_id)
        .fetch_all(&mut *self.conn().await?)
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
                .fetch_one(&mut *self.conn().await?)
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
    .execute(pool)
    .await?;
    Ok(())
}

/// The sale with this id on `conn` (archived or not).
pub(super) async fn sale_by_id(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Sale>, StoreError> {
    let sql = format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1");
    let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Sale::from))
}
