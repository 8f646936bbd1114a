//! The waiting room of queued sales, as buyers use it: poll, confirm, leave. Joining is in
//! [`super::queue_join`]; the queue tick that draws the pre-queue, expires and admits is in
//! [`super::queue_tick`]; how an entry is read with its queue's counters is in
//! [`super::queue_entry`].
//!
//! Lock order, which rules out deadlocks: a buyer's statements lock their queue entry, then
//! the sale row (or the queue row); a join batch locks its buyers' entries in user order,
//! then the queue row. The tick's admission holds the sale row first and takes entries only
//! with SKIP LOCKED (it never waits on a buyer), then the queue row; its expiry locks
//! entries first (SKIP LOCKED too) and the sale row after, and a slice of the pre-queue's
//! draw entries first and the queue row after: the buyers' own order. The archive voids
//! holds as expiry does, entries first, but waits for an entry a buyer holds. (The outbox
//! migration's comment on the `hold.*` trigger counts admission among the statements that
//! lock entries first: it is wrong there, and stays, since an applied migration's text is
//! checksummed and never edited.)

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::jobs::enqueue_queue_tick;
use super::purchases::{HeldBought, PurchaseRow, buy_held, find_purchase};
use super::queue_entry::find_entry;
use super::{Store, StoreError};
use crate::domain::{Checkout, EntryStatus, Purchase, QueueEntry, Sale, SaleState};

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
    /// Released a hold: its units are back in stock.
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

impl Store {
    /// The buyer's entry in the sale's queue.
    pub async fn queue_entry(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<QueueEntry>, StoreError> {
        find_entry(&mut self.conn().await?, sale_id, user_id).await
    }

    /// Turns the buyer's live hold into a purchase of the units it holds.
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
        let mut tx = conn.begin().await?;
        let confirmed: Option<(i32, Option<String>)> = sqlx::query_as(
            "UPDATE queue_entries SET status = 'purchased', finished_at = now()
              WHERE sale_id = $1 AND user_id = $2 AND status = 'held' AND hold_expires_at > now()
             RETURNING quantity, variant",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((quantity, variant)) = confirmed else {
            tx.rollback().await?;
            return self.confirm_refusal(&mut conn, sale, user_id).await;
        };
        let purchase =
            match buy_held(&mut tx, sale.id, user_id, (quantity, variant.as_deref())).await? {
                HeldBought::Bought { purchase, .. } => purchase,
                HeldBought::Refused => {
                    tx.rollback().await?;
                    return Ok(ConfirmOutcome::NotActive(self.void_state(sale.id).await?));
                }
            };
        // Sent and unanswered, the commit may or may not have happened: a retry answers
        // ALREADY_PURCHASED or HOLD_EXPIRED, which tells the buyer which.
        tx.commit().await.map_err(StoreError::after_write)?;
        Ok(ConfirmOutcome::Purchased(purchase))
    }

    async fn confirm_refusal(
        &self,
        conn: &mut Db,
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

    /// Leaves the queue, or releases a hold: its units go back to stock at once and the
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
        let mut tx = conn.begin().await?;
        let before: Option<(String, i32)> = sqlx::query_as(
            "WITH target AS (
                 SELECT status FROM queue_entries
                  WHERE sale_id = $1 AND user_id = $2 FOR UPDATE
             )
             UPDATE queue_entries e SET status = 'left', finished_at = now()
               FROM target
              WHERE e.sale_id = $1 AND e.user_id = $2 AND e.status IN ('queued', 'held')
             RETURNING target.status, e.quantity",
        )
        .bind(sale.id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let quantity = before.as_ref().map_or(0, |(_, quantity)| *quantity);
        let outcome = match before.and_then(|(status, _)| EntryStatus::parse(&status)) {
            Some(EntryStatus::Queued) => {
                sqlx::query("UPDATE sale_queues SET waiting = waiting - 1 WHERE sale_id = $1")
                    .bind(sale.id)
                    .execute(&mut *tx)
                    .await?;
                LeaveOutcome::Left
            }
            Some(EntryStatus::Held) => {
                sqlx::query(
                    "UPDATE sales SET held = held - $2, available = available + $2 WHERE id = $1",
                )
                .bind(sale.id)
                .bind(quantity)
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
        .fetch_optional(&mut self.conn().await?)
        .await?;
        Ok(stats)
    }

    /// Buyers waiting and live holds of every open queued sale, by sku (for the metrics).
    /// Only from its start: the metrics must not publish the sku of a sale not open yet.
    pub async fn live_queues(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.sku, q.waiting::bigint, s.held::bigint
               FROM sales s JOIN sale_queues q ON q.sale_id = s.id
              WHERE s.archived_at IS NULL AND s.cancelled_at IS NULL
                AND s.starts_at <= now() AND now() < s.ends_at
              ORDER BY s.sku LIMIT 1000",
        )
        .fetch_all(&mut self.conn().await?)
        .await?)
    }

    /// A buyer's purchases across sales, newest first.
    pub async fn user_purchases(&self, user_id: &str) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            "SELECT id, sale_id, user_id, created_at, quantity, variant FROM purchases
              WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(user_id)
        .fetch_all(&mut self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(Purchase::from).collect())
    }
}
