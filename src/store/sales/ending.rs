//! How a sale ends before its time: a cancel, a DELETE (removed outright or archived) and
//! the archive, each with its race argument under READ COMMITTED.

use uuid::Uuid;

use super::{CancelOutcome, RemoveOutcome, SALE_COLUMNS, SaleRow};
use crate::domain::Checkout;
use crate::store::jobs::{self, JobKind};
use crate::store::queue_tick::{HoldsToReturn, return_holds};
use crate::store::raffle_tick::{RaffleHolds, enqueue_raffle_tick, return_raffle_holds};
use crate::store::{Store, StoreError};

impl Store {
    /// Ends a scheduled or active sale now.
    ///
    /// Race-free under READ COMMITTED: the UPDATE takes the sale's row lock, the same lock
    /// every purchase takes to decrement the stock, so a purchase either committed before the
    /// cancel (and counts) or re-checks `cancelled_at IS NULL` on the cancelled row and is
    /// refused. The state job is queued in the same statement, so a cancel is never lost.
    /// A queued sale's queue row is locked too (a no-op update), after the sale row, the
    /// order admission takes: a join batch holds that row while it reads the sale, so a
    /// join either read the sale after this commit (and is refused) or committed before it.
    /// A raffle's entry batch holds the sale row itself while it reads the sale; its tick
    /// is made due now, to tell the entrants `not_selected`.
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
             ), raffle_tick AS (
                 INSERT INTO jobs (kind, sale_id)
                 SELECT 'raffle_tick', id FROM cancelled WHERE checkout = 'raffle'
                 ON CONFLICT (sale_id)
                    WHERE kind = 'raffle_tick' AND lock_token IS NULL AND dead_at IS NULL
                 DO UPDATE SET run_at = LEAST(jobs.run_at, now())
             )
             SELECT {SALE_COLUMNS} FROM cancelled"
        );
        let row = sqlx::query_as::<_, SaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(JobKind::SyncSaleState.as_str())
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(match row {
            // Read again: the statement's variants subquery saw its snapshot, from before a
            // purchase it waited for (the row itself is the latest version). A new
            // statement sees every commit before the cancel's.
            Some(row) => match self.sale_by_id(sale_id).await? {
                Some(now) => CancelOutcome::Cancelled(now),
                None => CancelOutcome::Cancelled(row.into()),
            },
            None => match self.sale_by_id(sale_id).await? {
                Some(now) => CancelOutcome::AlreadyEnded(now),
                None => CancelOutcome::NotFound,
            },
        })
    }

    /// DELETE of a sale: removed outright when nothing was ever sold or held and nobody
    /// ever joined its queue (its jobs, state log and queue row go with it by cascade; the
    /// outbox's `events` have no foreign key and stay until retention prunes them), else archived
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
    ///    `sold = 0 AND held = 0` and that no queue or raffle entry exists (a raffle's
    ///    entry batch holds the sale row's lock of step 1). A unit or an entry committed
    ///    first makes it match nothing, and the sale is archived instead. The
    ///    `ON DELETE RESTRICT` key of purchases would refuse the DELETE anyway.
    ///
    /// Before all that, the sale's allow-list rows (none for most sales), under the list's
    /// writer lock and in user order, like every writer of the list: a buyer's statement
    /// locks its list row before the sale row, so a DELETE that took the sale row first and
    /// then waited for a list row (the cascade) could deadlock with it.
    pub async fn remove_sale(&self, sale_id: Uuid) -> Result<RemoveOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        for lock in [
            "SELECT pg_advisory_xact_lock(hashtextextended('allowlist:' || $1::text, 0))",
            "SELECT 1 FROM (SELECT user_id FROM sale_allowlist WHERE sale_id = $1
                             ORDER BY user_id COLLATE \"C\" FOR UPDATE) l",
            "SELECT 1 FROM sales WHERE id = $1 FOR NO KEY UPDATE",
            "SELECT 1 FROM sale_queues WHERE sale_id = $1 FOR UPDATE",
        ] {
            sqlx::query(lock).bind(sale_id).execute(&mut *tx).await?;
        }
        let deleted = sqlx::query(
            "DELETE FROM sales WHERE id = $1 AND sold = 0 AND held = 0 AND archived_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM queue_entries WHERE sale_id = $1)
                AND NOT EXISTS (SELECT 1 FROM raffle_entries WHERE sale_id = $1)",
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
    /// Two short transactions, in the lock order the buyers use, and a tick between them:
    /// 1. Under the sale row's lock: set `archived_at` (and `cancelled_at`, when it could
    ///    still sell), record the `archived` event and queue the state job; and lock the
    ///    queue row after the sale's, as a cancel does (a join batch reads the sale under
    ///    that lock, so no join commits after the archive). From this commit on, a
    ///    purchase, an admission or a confirm re-checks `archived_at IS NULL` (or
    ///    `cancelled_at`) on the locked row and is refused.
    /// 2. For a queued sale, a queue tick is queued, in a statement of its own after that
    ///    commit.
    /// 3. Void the live holds: lock the held entries (waiting for a confirm in flight, which
    ///    now fails), mark them expired and move their units from `held` to `available` in
    ///    one statement, entries before the sale row like a confirm or a release. Should the
    ///    service die before this, the tick's expiry treats an archived sale like a
    ///    cancelled one and voids what is left (and should it die before the tick was
    ///    queued, the runner's backstop queues one for a sale that still holds units).
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
            .fetch_optional(&mut self.conn().await?)
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
            jobs::enqueue_queue_tick(&mut self.conn().await?, sale_id, None).await?;
        }
        let voided_holds = if archived.checkout == Checkout::Raffle.as_str() {
            // The tick tells the entrants still waiting `not_selected`.
            enqueue_raffle_tick(&mut self.conn().await?, sale_id, None).await?;
            return_raffle_holds(&mut self.conn().await?, sale_id, RaffleHolds::All).await?
        } else {
            return_holds(&mut self.conn().await?, sale_id, HoldsToReturn::All).await?
        };
        let sale = self
            .sale_by_id(sale_id)
            .await?
            .unwrap_or_else(|| archived.into());
        Ok(RemoveOutcome::Archived {
            sale: Box::new(sale),
            voided_holds,
        })
    }
}
