//! The queue tick of a queued sale: draw the pre-queue from the opening, return expired
//! holds to stock, admit the head of the queue to holds, and schedule the next tick. Safe to
//! run on several instances at once; each step says why.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

mod heads;
mod holds;

use heads::{HEAD, VARIANT_HEAD};

pub(super) use holds::{HoldsToReturn, return_holds};

use super::jobs::enqueue_queue_tick;
use super::{Store, StoreError};
use crate::domain::{Sale, SaleState};

/// How often an open queue is ticked even when nothing wakes it: the bound on how long a
/// buyer can wait while a unit is free (joins and releases wake it at once; this is the
/// safety net for a wake-up lost to a race or a crash).
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Tickets the draw deals per statement. Bounded, so that no statement of the opening runs
/// long, whatever the size of the pre-queue: the first slice is dealt (and admitted from)
/// at once, the rest a slice per tick, ticked again at once while any is left.
pub const DRAW_SLICE: i64 = 10_000;

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Pre-queued buyers this tick dealt a ticket in the draw (only on ticks that drew a
    /// slice or found the draw complete).
    pub shuffled: Option<i32>,
    /// The draw has more of the pre-queue to deal: tick again at once.
    pub drawing: bool,
    pub expired: i64,
    pub admitted: i64,
    /// The batch, not the stock, bounded this tick's admission: tick again at once.
    pub admitting: bool,
    /// Whether the queue still needs ticking (a scheduled or active sale, or holds left).
    pub needs_tick: bool,
}

impl Store {
    /// One tick of a queued sale: draw a slice of the pre-queue once the sale is open,
    /// return expired holds to stock, admit buyers to the units available. Safe to run on
    /// several instances at once (see each step).
    pub async fn queue_tick(&self, sale_id: Uuid, batch: i64) -> Result<TickReport, StoreError> {
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            return Ok(TickReport::default());
        };
        let (shuffled, drawing) = self.draw_prequeue(&sale).await?;
        let mut report = TickReport {
            shuffled,
            drawing,
            expired: self.expire_holds(&sale, batch).await?,
            ..TickReport::default()
        };
        (report.admitted, report.admitting) = self.admit(sale_id, batch).await?;
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            return Ok(report);
        };
        // Ticked while it can still admit or expire anything, whether or not anyone waits
        // right now: a join racing this tick is then seen by the next one at the latest.
        report.needs_tick =
            sale.held > 0 || matches!(sale.state(), SaleState::Scheduled | SaleState::Active);
        Ok(report)
    }

    /// Opens the pre-queue's draw once the sale has started, and deals the next slice of
    /// it: tickets 1, 2, 3... to the pre-queued buyers in the order of
    /// `md5(seed || user_id)`, then `user_id` (byte order), a permutation that anyone
    /// holding the recorded seed can replay. Returns how many this call dealt (`None` when
    /// it had nothing to do) and whether more are left to deal.
    async fn draw_prequeue(&self, sale: &Sale) -> Result<(Option<i32>, bool), StoreError> {
        if sale.observed_at < sale.starts_at {
            return Ok((None, false));
        }
        // The opening, in a statement of its own (the queue row is locked after entries,
        // never before, so it must not be held into the slice below). Under the queue row's
        // lock, which every join holds while it decides, so every pre-queued entry is
        // committed before this, and every later join takes a ticket above `last_ticket`,
        // above all the draw can deal. A join at or after the start may have opened it
        // first.
        sqlx::query(
            "UPDATE sale_queues q SET shuffled_at = now()
               FROM sales s
              WHERE q.sale_id = $1 AND s.id = q.sale_id AND q.shuffled_at IS NULL
                AND s.starts_at <= now()",
        )
        .bind(sale.id)
        .execute(&mut self.conn().await?)
        .await?;
        self.draw_slice(sale.id).await
    }

    /// Deals one slice of the draw (see [`Store::draw_prequeue`]).
    ///
    /// Race-free under READ COMMITTED, and no entry is ever skipped or dealt twice:
    /// 1. One drawer per sale at a time (a transaction-level advisory lock; a tick that
    ///    finds it taken leaves the slice to the holder, which ticks again while any is
    ///    left), so `drawn`, read next, is the count of tickets dealt, and the slice's
    ///    tickets follow it.
    /// 2. The pre-queue is closed (the opening committed before this transaction began), so
    ///    the set of undrawn waiting entries only shrinks (a leave) from here.
    /// 3. The slice locks the next entries in draw order after the last one dealt (before
    ///    it, nothing undrawn is left: the order is fixed and only leaves remove entries),
    ///    *waiting* for one a buyer holds (a leave in flight: a buyer's transaction locks its
    ///    one entry and then at most the queue row, not held here yet, so each wait ends at
    ///    its commit). An entry that left
    ///    meanwhile fails the re-check and the scan goes on, so a short slice means the
    ///    pre-queue is exhausted: the draw is complete.
    /// 4. The queue row is locked last (entries first, the buyers' order) to record the
    ///    count dealt, and `prequeue_size` when complete.
    async fn draw_slice(&self, sale_id: Uuid) -> Result<(Option<i32>, bool), StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // The slice must walk `queue_entries_undrawn` in order and touch only its own rows.
        // With the pre-queue just filled, the statistics can still say the sale has no
        // entries, and the planner then sorted the whole pre-queue, or joined every entry of
        // the sale against every dealt one (both measured past the 5 s statement timeout at
        // 100,000, with seconds of JIT on top). So, for this transaction only: no sort where
        // an index gives the order, no sequential scan, no JIT; and the rows are updated by
        // the ctid the slice locked (a TID scan each; a locked row cannot move).
        let ours: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('flashsale.prequeue_draw'), hashtext($1::text))
                    AND set_config('enable_sort', 'off', true) IS NOT NULL
                    AND set_config('enable_seqscan', 'off', true) IS NOT NULL
                    AND set_config('jit', 'off', true) IS NOT NULL",
        )
        .bind(sale_id)
        .fetch_one(&mut *tx)
        .await?;
        let drawn: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT drawn, draw_after_key, draw_after_user FROM sale_queues
              WHERE sale_id = $1 AND shuffled_at IS NOT NULL AND prequeue_size IS NULL",
        )
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (true, Some((drawn, after_key, after_user))) = (ours, drawn) else {
            tx.commit().await?;
            return Ok((None, false));
        };
        // The scan starts after the last entry dealt (every undrawn entry before it has left),
        // so each slice reads its own part of the index, not the dealt ones before it.
        let (dealt, last_key, last_user): (i64, Option<Vec<u8>>, Option<String>) = sqlx::query_as(
            "WITH next AS (
                 SELECT ctid AS row_id, user_id, draw_key FROM queue_entries
                  WHERE sale_id = $1 AND prequeue AND status = 'queued' AND ticket IS NULL
                    AND (draw_key, user_id COLLATE \"C\") > ($4::bytea, $5::text COLLATE \"C\")
                  ORDER BY draw_key, user_id COLLATE \"C\"
                  LIMIT $2
                    FOR UPDATE
             ), dealt AS (
                 SELECT row_id,
                        row_number() OVER (ORDER BY draw_key, user_id COLLATE \"C\") AS n
                   FROM next
             ), updated AS (
                 UPDATE queue_entries e SET ticket = $3 + dealt.n
                   FROM dealt WHERE e.ctid = dealt.row_id
                 RETURNING dealt.n, e.draw_key, e.user_id
             )
             SELECT count(*), (array_agg(draw_key ORDER BY n DESC))[1],
                    (array_agg(user_id ORDER BY n DESC))[1]
               FROM updated",
        )
        .bind(sale_id)
        .bind(DRAW_SLICE)
        .bind(drawn)
        .bind(&after_key)
        .bind(&after_user)
        .fetch_one(&mut *tx)
        .await?;
        let complete = dealt < DRAW_SLICE;
        sqlx::query(
            "UPDATE sale_queues
                SET drawn = drawn + $2,
                    prequeue_size = CASE WHEN $3 THEN (drawn + $2)::int END,
                    draw_after_key = COALESCE($4, draw_after_key),
                    draw_after_user = COALESCE($5, draw_after_user)
              WHERE sale_id = $1",
        )
        .bind(sale_id)
        .bind(dealt)
        .bind(complete)
        .bind(last_key)
        .bind(last_user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((Some(dealt as i32), !complete))
    }

    /// Returns up to `batch` expired holds (all holds once the sale is cancelled or archived)
    /// to stock; see [`return_holds`].
    async fn expire_holds(&self, sale: &Sale, batch: i64) -> Result<i64, StoreError> {
        let which = if sale.cancelled_at.is_some() || sale.archived_at.is_some() {
            HoldsToReturn::Void { batch }
        } else {
            HoldsToReturn::Due { batch }
        };
        return_holds(&mut self.conn().await?, sale.id, which).await
    }

    /// Admits the head of the queue to holds while units are available, each hold
    /// reserving its entry's `quantity`.
    ///
    /// Race-free under READ COMMITTED: the sale row is locked first (FOR NO KEY UPDATE, the
    /// lock the counter UPDATE takes anyway; FOR UPDATE would also block the foreign-key
    /// checks of joins inserting entries for this sale, which hold the queue row: measured as
    /// deadlocks under load), so two admitters of one sale run one after the other and each
    /// reads the other's committed counters; the head entries are taken in ticket order with
    /// SKIP LOCKED (an entry being left right now is skipped, not waited on); the entries
    /// become `held` and their units move from `available` to `held` in the same statement.
    /// `available` never goes below zero because at most `available` entries are taken under
    /// the lock. While the draw is still dealing, only tickets already dealt (`<= drawn`)
    /// are taken: every later join's ticket is above them, so nobody who joined after the
    /// opening passes a pre-queued buyer not drawn yet (a stale `drawn` only admits fewer).
    ///
    /// Units: `room` counts units. The head is taken in ticket order up to `room` entries
    /// (each asks for one unit at least), and admitted while the running sum of their
    /// quantities fits in `room`: strictly in ticket order, a hold never split. An entry
    /// asking for more than `available + held` (under the lock) can never be served, since
    /// stock never comes back past that; it is passed over rather than blocking everyone
    /// behind it (its poll says `sold_out`): filtered before the head's `LIMIT`, so no number
    /// of them can fill the head. A skipped-locked entry is passed over as before.
    ///
    /// A sale with variants: each variant's line is taken against its own units under its
    /// row's lock, and the entries' units move between the variant's counters by the
    /// trigger on their status change (see `heads::VARIANT_HEAD`).
    ///
    /// Returns the entries admitted, and whether the batch (not the stock or the holds' cap)
    /// bounded the room: then more may be admitted at once. Counting entries would not tell:
    /// a batch of 500 units admits fewer than 500 entries of several units.
    async fn admit(&self, sale_id: Uuid, batch: i64) -> Result<(i64, bool), StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let room: Option<(i64, i32, i64, i64, bool)> = sqlx::query_as(
            "SELECT LEAST(s.available::bigint, $2,
                          CASE WHEN s.max_active_holds > 0
                               THEN GREATEST(s.max_active_holds - s.held, 0)
                               ELSE s.available END),
                    s.hold_seconds,
                    (s.available + s.held)::bigint,
                    CASE WHEN q.prequeue_size IS NULL THEN q.drawn ELSE 9223372036854775807 END,
                    EXISTS (SELECT 1 FROM sale_variants v WHERE v.sale_id = s.id)
               FROM sales s JOIN sale_queues q ON q.sale_id = s.id
              WHERE s.id = $1 AND s.checkout = 'queued' AND s.cancelled_at IS NULL
                AND s.archived_at IS NULL AND s.starts_at <= now() AND now() < s.ends_at AND q.shuffled_at IS NOT NULL
                FOR NO KEY UPDATE OF s",
        )
        .bind(sale_id)
        .bind(batch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((room, hold_seconds, servable, front_limit, has_variants)) =
            room.filter(|(room, ..)| *room > 0)
        else {
            tx.commit().await?;
            return Ok((0, false));
        };
        let head = if has_variants { VARIANT_HEAD } else { HEAD };
        let sql = format!(
            "WITH {head}, fitting AS (
                 SELECT row_id FROM (
                     SELECT row_id, sum(quantity) OVER (ORDER BY ticket) AS through FROM head
                 ) h
                  WHERE through <= $2
             ), admitted AS (
                 UPDATE queue_entries e
                    SET status = 'held', admitted_at = now(),
                        hold_expires_at = now() + make_interval(secs => $3)
                  WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM fitting))
                 RETURNING e.ticket, e.quantity
             ), moved AS (
                 UPDATE sales
                    SET available = available - (SELECT COALESCE(sum(quantity), 0) FROM admitted),
                        held = held + (SELECT COALESCE(sum(quantity), 0) FROM admitted)
                  WHERE id = $1
             )
             SELECT count(*), max(ticket) FROM admitted"
        );
        // Built from the constant texts above.
        let (admitted, front): (i64, Option<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(room)
            .bind(hold_seconds as f64)
            .bind(front_limit)
            .bind(servable)
            .fetch_one(&mut *tx)
            .await?;
        if admitted > 0 {
            // The queue row last, in a statement of its own: joins wait on it, so it is held
            // for this short UPDATE and the commit only, not while the grants and their events
            // are written above. Same transaction, so the counters move with the grants.
            sqlx::query(
                "UPDATE sale_queues
                    SET waiting = waiting - $2, admitted = admitted + $2,
                        admitted_upto = GREATEST(admitted_upto, $3),
                        first_admitted_at = COALESCE(first_admitted_at, now())
                  WHERE sale_id = $1",
            )
            .bind(sale_id)
            .bind(admitted as i32)
            .bind(front.unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((admitted, admitted > 0 && room >= batch))
    }

    /// Queues the next tick of a sale at `run_at` (now when `None`).
    pub async fn schedule_queue_tick(
        &self,
        sale_id: Uuid,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        enqueue_queue_tick(&mut self.conn().await?, sale_id, run_at).await
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
        .fetch_optional(&mut self.conn().await?)
        .await?;
        match at {
            Some(at) => self.schedule_queue_tick(sale_id, Some(at)).await,
            // The sale was removed: nothing to tick.
            None => Ok(()),
        }
    }
}
