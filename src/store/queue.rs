//! The waiting room of queued sales: join, poll, confirm, leave, and the queue tick that
//! shuffles the pre-queue, expires holds and admits buyers.
//!
//! Lock order, which rules out deadlocks: a buyer's statements lock their queue entry, then
//! the sale row (or the queue row); the tick locks the sale row (or queue row) first but
//! takes entries only with SKIP LOCKED, so it never waits on an entry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::enqueue_queue_tick;
use super::purchases::{PurchaseRow, find_purchase};
use super::{Store, StoreError, violated_constraint};
use crate::domain::{Checkout, EntryStatus, Purchase, QueueEntry, Sale, SaleState};

/// How often an open queue is ticked even when nothing wakes it: the bound on how long a
/// buyer can wait while a unit is free (joins and releases wake it at once; this is the
/// safety net for a wake-up lost to a race or a crash).
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// How many times the opening shuffle starts again when a pre-queued buyer committed
/// their join while it was locking the pre-queue (possible only in the milliseconds around
/// the opening).
const SHUFFLE_ATTEMPTS: usize = 5;

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

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Buyers whose order the opening shuffle drew (only on the tick that shuffled).
    pub shuffled: Option<i32>,
    pub expired: i64,
    pub admitted: i64,
    /// Whether the queue still needs ticking (live sale or live holds).
    pub live: bool,
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

#[derive(FromRow)]
struct EntryRow {
    user_id: String,
    ticket: i64,
    prequeue: bool,
    status: String,
    joined_at: DateTime<Utc>,
    hold_expires_at: Option<DateTime<Utc>>,
    admitted_upto: i64,
    waiting: i32,
    shuffled: bool,
    admission_rate: Option<f64>,
}

impl From<EntryRow> for QueueEntry {
    fn from(row: EntryRow) -> Self {
        QueueEntry {
            user_id: row.user_id,
            ticket: row.ticket,
            prequeue: row.prequeue,
            // The column's CHECK allows only the five values.
            status: EntryStatus::parse(&row.status).unwrap_or(EntryStatus::Left),
            joined_at: row.joined_at,
            hold_expires_at: row.hold_expires_at,
            admitted_upto: row.admitted_upto,
            waiting: row.waiting,
            shuffled: row.shuffled,
            admission_rate: row.admission_rate,
        }
    }
}

/// An entry with its queue's counters: one row, one index probe each, no count.
const ENTRY_SQL: &str = "
    SELECT e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at,
           q.admitted_upto, q.waiting, q.shuffled_at IS NOT NULL AS shuffled,
           CASE WHEN q.admitted > 0 AND now() > q.first_admitted_at
                THEN q.admitted / EXTRACT(EPOCH FROM now() - q.first_admitted_at)::float8
           END AS admission_rate
      FROM queue_entries e JOIN sale_queues q ON q.sale_id = e.sale_id
     WHERE e.sale_id = $1 AND e.user_id = $2";

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

async fn find_entry(
    conn: &mut PgConnection,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<QueueEntry>, StoreError> {
    let row = sqlx::query_as::<_, EntryRow>(ENTRY_SQL)
        .bind(sale_id)
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(QueueEntry::from))
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
        let mut conn = self.pool.acquire().await?;
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
                    q.admitted_upto, q.waiting, q.shuffled_at IS NOT NULL AS shuffled,
                    CASE WHEN q.admitted > 0 AND now() > q.first_admitted_at
                         THEN q.admitted / EXTRACT(EPOCH FROM now() - q.first_admitted_at)::float8
                    END AS admission_rate
               FROM q JOIN entry e ON true",
            ENTRY_SQL = entry_sql
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
        find_entry(&mut *self.pool.acquire().await?, sale_id, user_id).await
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
        let mut conn = self.pool.acquire().await?;
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
        let moved = sqlx::query(
            "UPDATE sales SET held = held - 1, sold = sold + 1
              WHERE id = $1 AND cancelled_at IS NULL AND archived_at IS NULL",
        )
        .bind(sale.id)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            let state = match self.sale_by_id(sale.id).await? {
                Some(now) if now.archived_at.is_some() => SaleState::Archived,
                _ => SaleState::Cancelled,
            };
            return Ok(ConfirmOutcome::NotActive(state));
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
        let mut conn = self.pool.acquire().await?;
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

    /// One tick of a queued sale: shuffle the pre-queue once the sale is open, return
    /// expired holds to stock, admit buyers to the units available. Safe to run on several
    /// instances at once (see each step).
    pub async fn queue_tick(&self, sale_id: Uuid, batch: i64) -> Result<TickReport, StoreError> {
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            return Ok(TickReport::default());
        };
        let mut report = TickReport {
            shuffled: self.shuffle_prequeue(&sale).await?,
            expired: self.expire_holds(&sale, batch).await?,
            ..TickReport::default()
        };
        report.admitted = self.admit(sale_id, batch).await?;
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            return Ok(report);
        };
        // Ticked while it can still admit or expire anything, whether or not anyone waits
        // right now: a join racing this tick is then seen by the next one at the latest.
        report.live =
            sale.held > 0 || matches!(sale.state(), SaleState::Scheduled | SaleState::Active);
        Ok(report)
    }

    /// Draws the pre-queue's order once the sale is open: the tickets the pre-queued buyers
    /// took are dealt out again in the order of `md5(seed || user_id)`, a permutation that
    /// anyone holding the recorded seed can replay. Every waiting pre-queued buyer is drawn.
    async fn shuffle_prequeue(&self, sale: &Sale) -> Result<Option<i32>, StoreError> {
        if sale.observed_at < sale.starts_at {
            return Ok(None);
        }
        for _ in 0..SHUFFLE_ATTEMPTS {
            if let Some(shuffled) = self.try_shuffle(sale.id).await? {
                return Ok(shuffled);
            }
        }
        // Buyers kept joining the pre-queue around the opening; the next tick draws.
        Ok(None)
    }

    /// One attempt at the draw; `None` when the pre-queue changed under it (start again).
    ///
    /// Race-free under READ COMMITTED, and no entry is ever skipped:
    /// 1. Lock every waiting pre-queued entry, in user order, *waiting* for one a buyer holds
    ///    (a re-join or a leave in flight). A buyer's transaction locks its one entry and then
    ///    at most the queue row, which is not held here yet, so each wait ends at its commit.
    /// 2. Lock the queue row and re-check `shuffled_at IS NULL`, so the draw happens once.
    /// 3. Every join and leave of a waiting buyer updates the queue row, so from here the set
    ///    of waiting pre-queued entries is fixed. The locked ones cannot have left (their
    ///    locks are ours); if a join added one between 1 and 2, the count differs and we
    ///    start over rather than lock it now (that buyer may hold it while waiting for the
    ///    queue row: a deadlock). New pre-queue joins end at the opening, so this settles.
    async fn try_shuffle(&self, sale_id: Uuid) -> Result<Option<Option<i32>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seed: Option<i64> = sqlx::query_scalar(
            "SELECT shuffle_seed FROM sale_queues WHERE sale_id = $1 AND shuffled_at IS NULL",
        )
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seed) = seed else {
            return Ok(Some(None));
        };
        let mut pre: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT user_id, ticket, md5($2 || user_id) FROM queue_entries
              WHERE sale_id = $1 AND prequeue AND status = 'queued'
              ORDER BY user_id
                FOR UPDATE",
        )
        .bind(sale_id)
        .bind(seed.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let still_to_draw: Option<bool> = sqlx::query_scalar(
            "SELECT true FROM sale_queues WHERE sale_id = $1 AND shuffled_at IS NULL FOR UPDATE",
        )
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
        if still_to_draw.is_none() {
            return Ok(Some(None));
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM queue_entries
              WHERE sale_id = $1 AND prequeue AND status = 'queued'",
        )
        .bind(sale_id)
        .fetch_one(&mut *tx)
        .await?;
        if waiting != pre.len() as i64 {
            tx.rollback().await?;
            return Ok(None);
        }
        // The draw: read, sort in Rust, one UPDATE by primary key (a single statement with
        // two window CTEs joined on their row numbers was planned as a nested loop: 23 s for
        // 10,000 buyers).
        let mut tickets: Vec<i64> = pre.iter().map(|(_, ticket, _)| *ticket).collect();
        tickets.sort_unstable();
        pre.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
        let drawn: Vec<String> = pre.into_iter().map(|(user_id, _, _)| user_id).collect();
        let shuffled = sqlx::query(
            "UPDATE queue_entries e SET ticket = drawn.ticket
               FROM unnest($2::text[], $3::bigint[]) AS drawn(user_id, ticket)
              WHERE e.sale_id = $1 AND e.user_id = drawn.user_id",
        )
        .bind(sale_id)
        .bind(&drawn)
        .bind(&tickets)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i32;
        sqlx::query(
            "UPDATE sale_queues SET shuffled_at = now(), prequeue_size = $2 WHERE sale_id = $1",
        )
        .bind(sale_id)
        .bind(shuffled)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Some(shuffled)))
    }

    /// Returns up to `batch` expired holds (all holds once the sale is cancelled or archived)
    /// to stock.
    ///
    /// Race-free under READ COMMITTED: entries are taken with SKIP LOCKED, so a hold being
    /// confirmed or released right now is left to that statement; the taken rows become
    /// `expired` and their units move from `held` to `available` in the same statement, so
    /// `sold + held + available = stock` holds at its commit.
    async fn expire_holds(&self, sale: &Sale, batch: i64) -> Result<i64, StoreError> {
        let expired: i64 = sqlx::query_scalar(
            "WITH due AS (
                 SELECT user_id FROM queue_entries
                  WHERE sale_id = $1 AND status = 'held'
                    AND (hold_expires_at <= now() OR $3)
                  ORDER BY hold_expires_at LIMIT $2
                  FOR UPDATE SKIP LOCKED
             ), expired AS (
                 UPDATE queue_entries e SET status = 'expired', finished_at = now()
                   FROM due WHERE e.sale_id = $1 AND e.user_id = due.user_id
                 RETURNING 1
             ), moved AS (
                 UPDATE sales SET held = held - (SELECT count(*) FROM expired),
                                  available = available + (SELECT count(*) FROM expired)
                  WHERE id = $1 AND (SELECT count(*) FROM expired) > 0
             ), counted AS (
                 UPDATE sale_queues SET expired = expired + (SELECT count(*) FROM expired)
                  WHERE sale_id = $1 AND (SELECT count(*) FROM expired) > 0
             )
             SELECT count(*) FROM expired",
        )
        .bind(sale.id)
        .bind(batch)
        .bind(sale.cancelled_at.is_some() || sale.archived_at.is_some())
        .fetch_one(&self.pool)
        .await?;
        Ok(expired)
    }

    /// Admits the head of the queue to holds while units are available.
    ///
    /// Race-free under READ COMMITTED: the sale row is locked first (FOR NO KEY UPDATE, the
    /// lock the counter UPDATE takes anyway; FOR UPDATE would also block the foreign-key
    /// checks of joins inserting entries for this sale, which hold the queue row: measured as
    /// deadlocks under load), so two admitters of one sale run one after the other and each reads the other's committed
    /// counters; the head entries are taken in ticket order with SKIP LOCKED (an entry being
    /// left right now is skipped, not waited on); the entries become `held` and their units
    /// move from `available` to `held` in the same statement. `available` never goes below
    /// zero because at most `available` entries are taken under the lock.
    async fn admit(&self, sale_id: Uuid, batch: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let room: Option<(i64, i32)> = sqlx::query_as(
            "SELECT LEAST(s.available::bigint, $2,
                          CASE WHEN s.max_active_holds > 0
                               THEN GREATEST(s.max_active_holds - s.held, 0)
                               ELSE s.available END),
                    s.hold_seconds
               FROM sales s JOIN sale_queues q ON q.sale_id = s.id
              WHERE s.id = $1 AND s.checkout = 'queued' AND s.cancelled_at IS NULL
                AND s.archived_at IS NULL AND s.starts_at <= now() AND now() < s.ends_at AND q.shuffled_at IS NOT NULL
                FOR NO KEY UPDATE OF s",
        )
        .bind(sale_id)
        .bind(batch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((room, hold_seconds)) = room.filter(|(room, _)| *room > 0) else {
            tx.commit().await?;
            return Ok(0);
        };
        let admitted: i64 = sqlx::query_scalar(
            "WITH head AS (
                 SELECT user_id FROM queue_entries
                  WHERE sale_id = $1 AND status = 'queued'
                  ORDER BY ticket LIMIT $2
                  FOR UPDATE SKIP LOCKED
             ), admitted AS (
                 UPDATE queue_entries e
                    SET status = 'held', admitted_at = now(),
                        hold_expires_at = now() + make_interval(secs => $3)
                   FROM head WHERE e.sale_id = $1 AND e.user_id = head.user_id
                 RETURNING e.ticket
             ), moved AS (
                 UPDATE sales SET available = available - (SELECT count(*) FROM admitted),
                                  held = held + (SELECT count(*) FROM admitted)
                  WHERE id = $1
             ), marked AS (
                 UPDATE sale_queues
                    SET waiting = waiting - (SELECT count(*) FROM admitted),
                        admitted = admitted + (SELECT count(*) FROM admitted),
                        admitted_upto = GREATEST(admitted_upto,
                                                 COALESCE((SELECT max(ticket) FROM admitted), 0)),
                        first_admitted_at = COALESCE(first_admitted_at, now())
                  WHERE sale_id = $1 AND (SELECT count(*) FROM admitted) > 0
             )
             SELECT count(*) FROM admitted",
        )
        .bind(sale_id)
        .bind(room)
        .bind(hold_seconds as f64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(admitted)
    }

    /// Queues the next tick of a sale at `run_at` (now when `None`).
    pub async fn schedule_queue_tick(
        &self,
        sale_id: Uuid,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        enqueue_queue_tick(&mut *self.pool.acquire().await?, sale_id, run_at).await
    }

    /// Queues the next tick at the earliest live hold's expiry or after `interval`,
    /// whichever comes first, or at the opening for a sale not open yet (database clock).
    pub async fn schedule_next_queue_tick(
        &self,
        sale_id: Uuid,
        interval: Duration,
    ) -> Result<(), StoreError> {
        let at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT CASE WHEN now() < s.starts_at AND h.first IS NULL THEN s.starts_at
                         ELSE LEAST(now() + make_interval(secs => $2), h.first) END
               FROM sales s,
                    (SELECT min(hold_expires_at) AS first FROM queue_entries
                      WHERE sale_id = $1 AND status = 'held') h
              WHERE s.id = $1",
        )
        .bind(sale_id)
        .bind(interval.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        match at {
            Some(at) => self.schedule_queue_tick(sale_id, Some(at)).await,
            // The sale was removed: nothing to tick.
            None => Ok(()),
        }
    }

    /// The queue counters of a queued sale.
    pub async fn queue_stats(&self, sale_id: Uuid) -> Result<Option<QueueStats>, StoreError> {
        let stats = sqlx::query_as::<_, QueueStats>(
            "SELECT waiting, admitted, expired, admitted_upto, last_ticket, shuffle_seed,
                    shuffled_at, prequeue_size
               FROM sale_queues WHERE sale_id = $1",
        )
        .bind(sale_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(stats)
    }

    /// A buyer's purchases across sales, newest first.
    pub async fn user_purchases(&self, user_id: &str) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            "SELECT id, sale_id, user_id, created_at FROM purchases
              WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Purchase::from).collect())
    }
}
