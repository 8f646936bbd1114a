//! The waiting room of queued sales, as buyers use it: join, poll, confirm, leave. The
//! queue tick that shuffles, expires and admits is in [`super::queue_tick`]; how an entry is
//! read with its queue's counters is in [`super::queue_entry`].
//!
//! Lock order, which rules out deadlocks: a buyer's statements lock their queue entry, then
//! the sale row (or the queue row). The tick either holds the sale row and takes entries
//! only with SKIP LOCKED (admission, expiry), or locks entries first and the queue row after
//! (the opening shuffle), the buyers' own order; the archive voids holds the same way.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::{self, JobKind, enqueue_queue_tick};
use super::purchases::{PurchaseRow, find_purchase};
use super::queue_entry::{EntryRow, find_entry, queue_counters_sql};
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, EntryStatus, Purchase, QueueEntry, Sale, SaleState};

/// The result of joining a queue.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Waiting (new, rejoined, or already waiting: joining is idempotent).
    Queued(QueueEntry),
    /// Already holding a unit.
    Held(QueueEntry),
    AlreadyPurchased(Purchase),
    /// No stock and no live holds: nothing can come back.
    SoldOut,
    NotActive(SaleState),
    /// The queue holds `queue_capacity` buyers already.
    QueueFull,
    WrongCheckout,
    SaleNotFound,
}

/// The result of confirming a hold.
#[derive(Debug)]
pub enum ConfirmOutcome {
    Purchased(Purchase),
    /// The hold ran out (by the database clock) before the confirmation.
    HoldExpired,
    /// The buyer is still waiting for a hold.
    NoHold,
    AlreadyPurchased(Purchase),
    /// The sale was cancelled; the hold is void.
    NotActive(SaleState),
    NotInQueue,
    WrongCheckout,
}

/// The result of leaving a queue.
#[derive(Debug)]
pub enum LeaveOutcome {
    /// Left the queue while waiting.
    Left,
    /// Released a hold: the unit is back in stock.
    Released,
    /// Nothing to leave (already purchased, expired or left).
    Finished(EntryStatus),
    NotInQueue,
    WrongCheckout,
}

/// The queue counters shown to admins.
#[derive(Debug, Clone, FromRow)]
pub struct QueueStats {
    pub waiting: i32,
    pub admitted: i32,
    pub expired: i32,
    pub admitted_upto: i64,
    pub last_ticket: i64,
    pub shuffle_seed: i64,
    pub shuffled_at: Option<DateTime<Utc>>,
    pub prequeue_size: Option<i32>,
}

/// Creates the queue row of a new queued sale, with the seed of its pre-queue shuffle.
pub(super) async fn create_queue(conn: &mut PgConnection, sale_id: Uuid) -> Result<(), StoreError> {
    let seed = (Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
    sqlx::query("INSERT INTO sale_queues (sale_id, shuffle_seed) VALUES ($1, $2)")
        .bind(sale_id)
        .bind(seed)
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// Joins the sale's queue, or returns the buyer's current entry.
    ///
    /// Race-free under READ COMMITTED: the buyer's entry row is locked first (FOR UPDATE),
    /// so two joins of one buyer serialize; a first join of a buyer inserts under the
    /// primary key (sale, user), and the loser of that race gets 23505, rolls back its
    /// ticket and reads the winner's entry. The ticket and the `waiting` counter move in one
    /// UPDATE of the queue row, guarded by the capacity, so tickets are unique per sale and
    /// the capacity is never exceeded.
    pub async fn join_queue(&self, sale: &Sale, user_id: &str) -> Result<JoinOutcome, StoreError> {
        if sale.checkout != Checkout::Queued {
            return Ok(JoinOutcome::WrongCheckout);
        }
        let mut conn = self.conn().await?;
        for _ in 0..2 {
            match self.try_join(&mut conn, sale, user_id).await {
                Err(StoreError::Database(err))
                    if violated_constraint(&err) == Some("queue_entries_pkey") => {}
                other => return other,
            }
        }
        // The second try saw the entry the first one collided with.
        Ok(match find_entry(&mut conn, sale.id, user_id).await? {
            Some(entry) if entry.status == EntryStatus::Held => JoinOutcome::Held(entry),
            Some(entry) => JoinOutcome::Queued(entry),
            None => JoinOutcome::QueueFull,
        })
    }

    async fn try_join(
        &self,
        conn: &mut PgConnection,
        sale: &Sale,
        user_id: &str,
    ) -> Result<JoinOutcome, StoreError> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let existing: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM queue_entries WHERE sale_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let existing = existing.and_then(|(status,)| EntryStatus::parse(&status));
        match existing {
            Some(EntryStatus::Queued) | Some(EntryStatus::Held) => {
                let entry = find_entry(&mut tx, sale.id, user_id).await?;
                tx.commit().await?;
                return Ok(match entry {
                    Some(entry) if entry.status == EntryStatus::Held => JoinOutcome::Held(entry),
                    Some(entry) => JoinOutcome::Queued(entry),
                    None => JoinOutcome::SaleNotFound,
                });
            }
            Some(EntryStatus::Purchased) => {
                let purchase = find_purchase(&mut tx, sale.id, user_id).await?;
                tx.commit().await?;
                return Ok(
                    purchase.map_or(JoinOutcome::SaleNotFound, JoinOutcome::AlreadyPurchased)
                );
            }
            Some(EntryStatus::Expired) | Some(EntryStatus::Left) | None => {}
        }
        // A new wait: refused when the sale can sell nothing more.
        match sale.state() {
            SaleState::Scheduled | SaleState::Active => {}
            SaleState::Ended if sale.is_sold_out() => return Ok(JoinOutcome::SoldOut),
            state => return Ok(JoinOutcome::NotActive(state)),
        }
        // Ticket, counter and entry in one statement: the queue row's lock is held for it
        // and the commit only. Before the opening (no shuffle yet) the entry joins the
        // pre-queue; the shuffle happens under the queue row's lock, so it cannot miss it.
        // A first join inserts (a concurrent first join of the same user fails with 23505,
        // which rolls back the ticket too, and the caller retries and finds the entry); a
        // rejoin updates the entry whose lock this transaction holds.
        let entry_sql = if existing.is_none() {
            "INSERT INTO queue_entries (sale_id, user_id, ticket, prequeue, status)
                 SELECT $1, $2, q.last_ticket,
                        q.shuffled_at IS NULL AND now() < (SELECT starts_at FROM sales WHERE id = $1),
                        'queued'
                   FROM q"
        } else {
            "UPDATE queue_entries e
                    SET ticket = q.last_ticket, status = 'queued', joined_at = now(),
                        prequeue = q.shuffled_at IS NULL
                                   AND now() < (SELECT starts_at FROM sales WHERE id = $1),
                        admitted_at = NULL, hold_expires_at = NULL, finished_at = NULL
                   FROM q
                  WHERE e.sale_id = $1 AND e.user_id = $2 AND e.status IN ('expired', 'left')"
        };
        let sql = format!(
            "WITH q AS (
                 UPDATE sale_queues SET last_ticket = last_ticket + 1, waiting = waiting + 1
                  WHERE sale_id = $1 AND waiting < $3
                 RETURNING last_ticket, admitted_upto, waiting, shuffled_at, admitted,
                           first_admitted_at
             ), entry AS ({ENTRY_SQL}
                 RETURNING user_id, ticket, prequeue, status, joined_at, hold_expires_at
             )
             SELECT e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at,
                    {QUEUE_COUNTERS}
               FROM q JOIN entry e ON true",
            ENTRY_SQL = entry_sql,
            QUEUE_COUNTERS = queue_counters_sql!()
        );
        // Built from the two constant statements above.
        let row = sqlx::query_as::<_, EntryRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale.id)
            .bind(user_id)
            .bind(sale.queue_capacity)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(JoinOutcome::QueueFull);
        };
        // Wake the admission worker, always and in the join's own transaction: the tick
        // this makes due becomes visible with the entry, so it cannot run without seeing
        // it. (Deciding from the sale read before this transaction, as joins once did, lost
        // the race with a release whose tick ran before the join committed.) The periodic
        // tick bounds the wait should this wake-up ever be lost.
        enqueue_queue_tick(&mut tx, sale.id, None).await?;
        tx.commit().await?;
        Ok(JoinOutcome::Queued(row.into()))
    }

    /// The buyer's entry in the sale's queue.
    pub async fn queue_entry(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<QueueEntry>, StoreError> {
        find_entry(&mut *self.conn().await?, sale_id, user_id).await
    }

    /// Turns the buyer's live hold into a purchase.
    ///
    /// Race-free under READ COMMITTED: the first UPDATE locks the entry and decides, against
    /// the database clock, that the hold is live (`hold_expires_at > now()`); the expiry
    /// worker's UPDATE of the same row needs `hold_expires_at <= now()` and skips rows locked
    /// by a confirm. So a hold is either confirmed or returned to stock, never both: whichever
    /// locks the entry first wins, and the other re-checks `status = 'held'` and does
    /// nothing. The unit moves from `held` to `sold` in the same transaction, on the sale row
    /// whose `cancelled_at` is re-checked under its lock.
    pub async fn confirm_hold(
        &self,
        sale: &Sale,
        user_id: &str,
    ) -> Result<ConfirmOutcome, StoreError> {
        if sale.checkout != Checkout::Queued {
            return Ok(ConfirmOutcome::WrongCheckout);
        }
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let confirmed = sqlx::query(
            "UPDATE queue_entries SET status = 'purchased', finished_at = now()
              WHERE sale_id = $1 AND user_id = $2 AND status = 'held' AND hold_expires_at > now()",
        )
        .bind(sale.id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if confirmed.rows_affected() == 0 {
            tx.rollback().await?;
            return self.confirm_refusal(&mut conn, sale, user_id).await;
        }
        let moved: Option<bool> = sqlx::query_scalar(
            "UPDATE sales SET held = held - 1, sold = sold + 1
              WHERE id = $1 AND cancelled_at IS NULL AND archived_at IS NULL
             RETURNING available = 0 AND held = 0",
        )
        .bind(sale.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(sold_out) = moved else {
            tx.rollback().await?;
            let state = match self.sale_by_id(sale.id).await? {
                Some(now) if now.archived_at.is_some() => SaleState::Archived,
                _ => SaleState::Cancelled,
            };
            return Ok(ConfirmOutcome::NotActive(state));
        };
        if sold_out {
            // The last unit: record the sell-out (and emit sale.sold_out) now, not at the
            // end of the window; queued in this transaction, so it cannot be lost.
            jobs::enqueue(&mut tx, JobKind::SyncSaleState, sale.id, None).await?;
        }
        let purchase = sqlx::query_as::<_, PurchaseRow>(
            "INSERT INTO purchases (id, sale_id, user_id) VALUES ($1, $2, $3)
             RETURNING id, sale_id, user_id, created_at",
        )
        .bind(Uuid::new_v4())
        .bind(sale.id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        // Sent and unanswered, the commit may or may not have happened: a retry answers
        // ALREADY_PURCHASED or HOLD_EXPIRED, which tells the buyer which.
        tx.commit().await.map_err(StoreError::after_write)?;
        Ok(ConfirmOutcome::Purchased(purchase.into()))
    }

    async fn confirm_refusal(
        &self,
        conn: &mut PgConnection,
        sale: &Sale,
        user_id: &str,
    ) -> Result<ConfirmOutcome, StoreError> {
        let status: Option<(String, bool)> = sqlx::query_as(
            "SELECT status, hold_expires_at IS NOT NULL AND hold_expires_at <= now()
               FROM queue_entries WHERE sale_id = $1 AND user_id = $2",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((status, ran_out)) = status else {
            return Ok(ConfirmOutcome::NotInQueue);
        };
        Ok(match EntryStatus::parse(&status) {
            Some(EntryStatus::Purchased) => match find_purchase(conn, sale.id, user_id).await? {
                Some(purchase) => ConfirmOutcome::AlreadyPurchased(purchase),
                None => ConfirmOutcome::NotInQueue,
            },
            Some(EntryStatus::Queued) => ConfirmOutcome::NoHold,
            Some(EntryStatus::Held) if ran_out => ConfirmOutcome::HoldExpired,
            Some(EntryStatus::Expired) => ConfirmOutcome::HoldExpired,
            _ => ConfirmOutcome::NotInQueue,
        })
    }

    /// Leaves the queue, or releases a hold: the unit goes back to stock at once and the
    /// next buyer is admitted by a tick queued in the same transaction.
    ///
    /// Race-free under READ COMMITTED: the entry UPDATE locks the row and re-checks its status,
    /// so a release races a confirm or an expiry like they race each other (one wins); the unit
    /// moves from `held` to `available` in the same transaction.
    pub async fn leave_queue(
        &self,
        sale: &Sale,
        user_id: &str,
    ) -> Result<LeaveOutcome, StoreError> {
        if sale.checkout != Checkout::Queued {
            return Ok(LeaveOutcome::WrongCheckout);
        }
        let mut conn = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let before: Option<(String,)> = sqlx::query_as(
            "WITH target AS (
                 SELECT status FROM queue_entries
                  WHERE sale_id = $1 AND user_id = $2 FOR UPDATE
             )
             UPDATE queue_entries e SET status = 'left', finished_at = now()
               FROM target
              WHERE e.sale_id = $1 AND e.user_id = $2 AND e.status IN ('queued', 'held')
             RETURNING target.status",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match before.and_then(|(status,)| EntryStatus::parse(&status)) {
            Some(EntryStatus::Queued) => {
                sqlx::query("UPDATE sale_queues SET waiting = waiting - 1 WHERE sale_id = $1")
                    .bind(sale.id)
                    .execute(&mut *tx)
                    .await?;
                LeaveOutcome::Left
            }
            Some(EntryStatus::Held) => {
                sqlx::query(
                    "UPDATE sales SET held = held - 1, available = available + 1 WHERE id = $1",
                )
                .bind(sale.id)
                .execute(&mut *tx)
                .await?;
                enqueue_queue_tick(&mut tx, sale.id, None).await?;
                LeaveOutcome::Released
            }
            _ => {
                let status: Option<(String,)> = sqlx::query_as(
                    "SELECT status FROM queue_entries WHERE sale_id = $1 AND user_id = $2",
                )
                .bind(sale.id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
                match status.and_then(|(status,)| EntryStatus::parse(&status)) {
                    Some(status) => LeaveOutcome::Finished(status),
                    None => LeaveOutcome::NotInQueue,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// The queue counters of a queued sale.
    pub async fn queue_stats(&self, sale_id: Uuid) -> Result<Option<QueueStats>, StoreError> {
        let stats = sqlx::query_as::<_, QueueStats>(
            "SELECT waiting, admitted, expired, admitted_upto, last_ticket, shuffle_seed,
                    shuffled_at, prequeue_size
               FROM sale_queues WHERE sale_id = $1",
        )
        .bind(sale_id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(stats)
    }

    /// Buyers waiting and live holds of every live queued sale, by sku (for the metrics).
    pub async fn live_queues(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.sku, q.waiting::bigint, s.held::bigint
               FROM sales s JOIN sale_queues q ON q.sale_id = s.id
              WHERE s.archived_at IS NULL AND s.cancelled_at IS NULL AND now() < s.ends_at
              ORDER BY s.sku LIMIT 1000",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    /// A buyer's purchases across sales, newest first.
    pub async fn user_purchases(&self, user_id: &str) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            "SELECT id, sale_id, user_id, created_at FROM purchases
              WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(user_id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(Purchase::from).collect())
    }
}
