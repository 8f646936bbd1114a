//! The raffle tick: from the end of the entry window, close the entries and rank the
//! entrants (the draw, in bounded slices), return expired holds to stock, select the next
//! entrants in draw order while the units available cover them, and tell those who can no
//! longer be served `not_selected`; then schedule the next tick. Safe to run on several
//! instances at once, and running it again changes nothing that is done: each step says
//! why.

use chrono::{DateTime, Utc};
use uuid::Uuid;

mod heads;
mod holds;
mod schedule;

use heads::{HOPELESS_OF_VARIANTS, RAFFLE_HEAD, RAFFLE_VARIANT_HEAD};

pub(super) use holds::{RaffleHolds, return_raffle_holds};
pub(super) use schedule::enqueue_raffle_tick;

use super::db::Db;
use super::{Store, StoreError};
use crate::domain::Checkout;

/// Entrants the draw ranks per statement (bounded, so no statement of a large draw runs
/// long; the tick runs again at once while any are left).
pub const RAFFLE_DRAW_SLICE: i64 = 10_000;

/// What one raffle tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RaffleTickReport {
    /// Entrants this tick ranked (`None` when it ranked no slice).
    pub ranked: Option<i64>,
    /// The draw has more entrants to rank: tick again at once.
    pub drawing: bool,
    pub expired: i64,
    pub selected: i64,
    pub not_selected: i64,
    /// The entry window is still open: the next tick is due at its end.
    pub opens_draw_at: Option<DateTime<Utc>>,
    /// Nothing is left to do: nobody waits and no hold is live.
    pub finished: bool,
}

impl Store {
    /// One tick of a raffle; see the module comment. `batch` bounds the holds expired,
    /// the entrants selected and those told `not_selected` per tick.
    pub async fn raffle_tick(
        &self,
        sale_id: Uuid,
        batch: i64,
    ) -> Result<RaffleTickReport, StoreError> {
        let mut report = RaffleTickReport::default();
        let Some(sale) = self.sale_by_id(sale_id).await? else {
            report.finished = true;
            return Ok(report);
        };
        if sale.checkout != Checkout::Raffle {
            report.finished = true;
            return Ok(report);
        }
        let void = sale.cancelled_at.is_some() || sale.archived_at.is_some();
        if !void && sale.observed_at < sale.ends_at {
            report.opens_draw_at = Some(sale.ends_at);
            return Ok(report);
        }
        if !void {
            self.close_entries(sale_id).await?;
            (report.ranked, report.drawing) = self.rank_slice(sale_id).await?;
        }
        let which = if void {
            RaffleHolds::Void { batch }
        } else {
            RaffleHolds::Due { batch }
        };
        report.expired = return_raffle_holds(&mut self.conn().await?, sale_id, which).await?;
        if void {
            report.not_selected = self.turn_away_entrants(sale_id, batch, None).await?;
        } else {
            (report.selected, report.not_selected) = self.select_entrants(sale_id, batch).await?;
        }
        report.finished = self.finish_raffle_if_done(sale_id, void).await?;
        Ok(report)
    }

    /// Closes the entries, once the window's end has come.
    ///
    /// Race-free under READ COMMITTED: the sale row is locked first (FOR NO KEY UPDATE, as
    /// every entry batch locks it before it checks the window), then the close is recorded
    /// only if the clock *after* that lock (`clock_timestamp()`) has reached `ends_at`. So
    /// every entry batch either committed before this lock (and the draw, whose slices run
    /// in later transactions, sees its entries) or reads the clock after this commit, past
    /// `ends_at`, and is refused. Closing again changes nothing (`draw_started_at IS NULL`).
    async fn close_entries(&self, sale_id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT 1 FROM sales WHERE id = $1 FOR NO KEY UPDATE")
            .bind(sale_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE sale_raffles r SET draw_started_at = clock_timestamp()
               FROM sales s
              WHERE r.sale_id = $1 AND s.id = r.sale_id AND r.draw_started_at IS NULL
                AND clock_timestamp() >= s.ends_at",
        )
        .bind(sale_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ranks the next slice of the entrants: positions `drawn + 1, ...` in the order of
    /// `md5(seed || user_id)` (the entry's `draw_key`), then `user_id` in byte order, the
    /// permutation anyone holding the seed replays with one ORDER BY. Returns how many this
    /// call ranked (`None` when it had nothing to do) and whether more are left.
    ///
    /// Race-free under READ COMMITTED, and no entrant is skipped or ranked twice (the
    /// queue's pre-queue draw, store/queue_tick.rs, with the same argument):
    /// 1. One ranker per sale at a time (a transaction-level advisory lock; a tick that
    ///    finds it taken leaves the slice to the holder), so `drawn` is the count ranked.
    /// 2. Entries are closed (the close committed before this transaction began): the set
    ///    of unranked entrants only shrinks (a withdrawal) from here.
    /// 3. The slice locks the next unranked entrants after the last one ranked, waiting for
    ///    one an entrant holds (a withdrawal in flight, which locks its entry and then the
    ///    sale row, never held here before the end); an entry withdrawn meanwhile fails the
    ///    re-check and the scan goes on, so a short slice means the draw is complete.
    /// 4. The raffle row records the count; when complete, `drawn_at` and `entrants`, and
    ///    its trigger emits `raffle.drawn` once (the row changes from NULL only once).
    async fn rank_slice(&self, sale_id: Uuid) -> Result<(Option<i64>, bool), StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // As the queue's draw: walk the index in order, touch only the slice's rows (by
        // the ctid the lock returned), whatever the statistics say about a fresh crowd.
        let ours: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('flashsale.raffle_draw'), hashtext($1::text))
                    AND set_config('enable_sort', 'off', true) IS NOT NULL
                    AND set_config('enable_seqscan', 'off', true) IS NOT NULL
                    AND set_config('jit', 'off', true) IS NOT NULL",
        )
        .bind(sale_id)
        .fetch_one(&mut *tx)
        .await?;
        let drawn: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT drawn, draw_after_key, draw_after_user FROM sale_raffles
              WHERE sale_id = $1 AND draw_started_at IS NOT NULL AND drawn_at IS NULL",
        )
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (true, Some((drawn, after_key, after_user))) = (ours, drawn) else {
            tx.commit().await?;
            return Ok((None, false));
        };
        let (ranked, last_key, last_user): (i64, Option<Vec<u8>>, Option<String>) = sqlx::query_as(
            "WITH next AS (
                     SELECT ctid AS row_id, user_id, draw_key FROM raffle_entries
                      WHERE sale_id = $1 AND draw_position IS NULL AND status = 'entered'
                        AND (draw_key, user_id COLLATE \"C\") > ($4::bytea, $5::text COLLATE \"C\")
                      ORDER BY draw_key, user_id COLLATE \"C\"
                      LIMIT $2
                        FOR UPDATE
                 ), ranked AS (
                     SELECT row_id,
                            row_number() OVER (ORDER BY draw_key, user_id COLLATE \"C\") AS n
                       FROM next
                 ), updated AS (
                     UPDATE raffle_entries e SET draw_position = $3 + ranked.n
                       FROM ranked WHERE e.ctid = ranked.row_id
                     RETURNING ranked.n, e.draw_key, e.user_id
                 )
                 SELECT count(*), (array_agg(draw_key ORDER BY n DESC))[1],
                        (array_agg(user_id ORDER BY n DESC))[1]
                   FROM updated",
        )
        .bind(sale_id)
        .bind(RAFFLE_DRAW_SLICE)
        .bind(drawn)
        .bind(&after_key)
        .bind(&after_user)
        .fetch_one(&mut *tx)
        .await?;
        let complete = ranked < RAFFLE_DRAW_SLICE;
        sqlx::query(
            "UPDATE sale_raffles
                SET drawn = drawn + $2,
                    draw_after_key = COALESCE($4, draw_after_key),
                    draw_after_user = COALESCE($5, draw_after_user),
                    entrants = CASE WHEN $3 THEN (drawn + $2)::int END,
                    drawn_at = CASE WHEN $3 THEN now() END
              WHERE sale_id = $1",
        )
        .bind(sale_id)
        .bind(ranked)
        .bind(complete)
        .bind(last_key)
        .bind(last_user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((Some(ranked), !complete))
    }

    /// Selects the next ranked entrants in draw order while the units available cover
    /// them, then tells `not_selected` those who can never be served; one transaction.
    ///
    /// Race-free under READ COMMITTED, as the queue's admission: the sale row is locked
    /// first (FOR NO KEY UPDATE), so two selectors of one sale run one after the other and
    /// each reads the other's committed counters; the head entrants are taken in draw order
    /// with SKIP LOCKED (an entrant withdrawing right now is passed over, never waited on);
    /// they become `selected` and their units move from `available` to `held` in the same
    /// statement, at most `available` units in all (a running sum in draw order, a hold
    /// never split, strictly in order: an entrant who does not fit yet stops the selection
    /// until units come back). `available + held` under the lock is every unit that can
    /// still reach an entrant (stock never comes back from `sold`, and a confirm, which
    /// lowers it, waits for this lock): an entrant asking for more can never be served and
    /// is told so.
    async fn select_entrants(&self, sale_id: Uuid, batch: i64) -> Result<(i64, i64), StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let room: Option<(i64, i32, i64, i32, bool)> = sqlx::query_as(
            "SELECT LEAST(s.available::bigint, $2), s.hold_seconds,
                    (s.available + s.held)::bigint, s.max_per_order,
                    EXISTS (SELECT 1 FROM sale_variants v WHERE v.sale_id = s.id)
               FROM sales s JOIN sale_raffles r ON r.sale_id = s.id
              WHERE s.id = $1 AND s.cancelled_at IS NULL AND s.archived_at IS NULL
                AND r.draw_started_at IS NOT NULL
                FOR NO KEY UPDATE OF s",
        )
        .bind(sale_id)
        .bind(batch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((room, hold_seconds, servable, max_per_order, has_variants)) = room else {
            tx.commit().await?;
            return Ok((0, 0));
        };
        let head = if has_variants {
            RAFFLE_VARIANT_HEAD
        } else {
            RAFFLE_HEAD
        };
        let sql = format!(
            "WITH {head}, fitting AS (
                     SELECT row_id FROM (
                         SELECT row_id, sum(quantity) OVER (ORDER BY draw_position) AS through
                           FROM head
                     ) h
                      WHERE through <= $2
                 ), selected AS (
                     UPDATE raffle_entries e
                        SET status = 'selected', selected_at = now(),
                            hold_expires_at = now() + make_interval(secs => $3)
                      WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM fitting))
                     RETURNING e.quantity
                 ), moved AS (
                     UPDATE sales
                        SET available = available - (SELECT COALESCE(sum(quantity), 0) FROM selected),
                            held = held + (SELECT COALESCE(sum(quantity), 0) FROM selected)
                      WHERE id = $1
                 )
                 SELECT count(*) FROM selected"
        );
        let selected: i64 = if room > 0 {
            // Built from the constant texts of `heads`.
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(sale_id)
                .bind(room)
                .bind(f64::from(hold_seconds))
                .bind(servable)
                .fetch_one(&mut *tx)
                .await?
        } else {
            0
        };
        // Nobody asks for more than `max_per_order`: while that much can still come, no
        // entrant is hopeless, and the walk over the waiting entrants is skipped.
        let not_selected = if has_variants {
            turn_away_hopeless_of_variants(&mut tx, sale_id, batch, max_per_order).await?
        } else if servable < i64::from(max_per_order) {
            turn_away(&mut tx, sale_id, batch, Some(servable)).await?
        } else {
            0
        };
        tx.commit().await?;
        Ok((selected, not_selected))
    }

    /// Tells up to `batch` waiting entrants `not_selected`: every one (a void raffle) or
    /// those asking for more than `servable` units.
    async fn turn_away_entrants(
        &self,
        sale_id: Uuid,
        batch: i64,
        servable: Option<i64>,
    ) -> Result<i64, StoreError> {
        turn_away(&mut self.conn().await?, sale_id, batch, servable).await
    }

    /// Records that the raffle is done (nobody waits, no hold is live, and the draw is
    /// complete or the raffle void); true once it is. Each probe matches one partial index
    /// (waiting ranked, waiting unranked, live holds), so a tick never walks the entrants.
    async fn finish_raffle_if_done(&self, sale_id: Uuid, void: bool) -> Result<bool, StoreError> {
        let finished: Option<bool> = sqlx::query_scalar(
            "UPDATE sale_raffles r
                SET finished_at = COALESCE(finished_at,
                                           CASE WHEN (drawn_at IS NOT NULL OR $2)
                                                     AND NOT EXISTS (SELECT 1 FROM raffle_entries e
                                                          WHERE e.sale_id = $1 AND e.status = 'entered'
                                                            AND e.draw_position IS NOT NULL)
                                                     AND NOT EXISTS (SELECT 1 FROM raffle_entries e
                                                          WHERE e.sale_id = $1 AND e.status = 'entered'
                                                            AND e.draw_position IS NULL)
                                                     AND NOT EXISTS (SELECT 1 FROM raffle_entries e
                                                          WHERE e.sale_id = $1 AND e.status = 'selected')
                                                THEN now() END)
              WHERE sale_id = $1
             RETURNING finished_at IS NOT NULL",
        )
        .bind(sale_id)
        .bind(void)
        .fetch_optional(&mut self.conn().await?)
        .await?;
        Ok(finished.unwrap_or(true))
    }
}

/// [`Store::turn_away_entrants`] on `conn` (the selection's transaction, under the sale row lock,
/// or a void raffle's own statement). Entries are locked with SKIP LOCKED (an entrant
/// withdrawing is passed over) and re-checked `entered`, so each is told once.
async fn turn_away(
    conn: &mut Db,
    sale_id: Uuid,
    batch: i64,
    servable: Option<i64>,
) -> Result<i64, StoreError> {
    let turned: i64 = sqlx::query_scalar(
        "WITH doomed AS (
             SELECT ctid AS row_id FROM raffle_entries
              WHERE sale_id = $1 AND status = 'entered'
                AND ($3::bigint IS NULL OR (draw_position IS NOT NULL AND quantity > $3))
              ORDER BY draw_position NULLS LAST
              LIMIT $2
                FOR UPDATE SKIP LOCKED
         ), turned AS (
             UPDATE raffle_entries e SET status = 'not_selected', finished_at = now()
              WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM doomed)) AND e.status = 'entered'
             RETURNING 1
         )
         SELECT count(*) FROM turned",
    )
    .bind(sale_id)
    .bind(batch)
    .bind(servable)
    .fetch_one(conn)
    .await?;
    Ok(turned)
}

/// Tells `not_selected` the entrants of a raffle with variants whose variant can never
/// serve them (see [`HOPELESS_OF_VARIANTS`]), inside the selection's transaction; each is
/// re-checked `entered` and told once.
async fn turn_away_hopeless_of_variants(
    conn: &mut Db,
    sale_id: Uuid,
    batch: i64,
    max_per_order: i32,
) -> Result<i64, StoreError> {
    let sql = format!(
        "WITH doomed AS ({HOPELESS_OF_VARIANTS}
         ), turned AS (
             UPDATE raffle_entries e SET status = 'not_selected', finished_at = now()
              WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM doomed)) AND e.status = 'entered'
             RETURNING 1
         )
         SELECT count(*) FROM turned"
    );
    // Built from the constant text of `heads`.
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(sale_id)
        .bind(batch)
        .bind(max_per_order)
        .fetch_one(conn)
        .await?)
}
