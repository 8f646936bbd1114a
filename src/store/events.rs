//! The outbox, read: the event feed, a sale's purchases page by page (for exports), and
//! retention. The events themselves are written by the triggers of migration
//! `20261122000004_outbox.sql`, in the statement of the change they report.
//!
//! The feed's order is `(feed_tx, sale_id, sequence)`. A transaction with a smaller id can
//! commit after one with a larger id, so a reader that simply paged by that key could pass
//! an event that commits later below its cursor. [`visible_events`] therefore only returns
//! events whose `feed_tx` is below the oldest transaction still running
//! (`pg_snapshot_xmin`): every transaction below that line has finished, and `feed_tx` is
//! never below its writer's own id, so nothing can appear behind a cursor that stayed below
//! it. A long transaction holds the line back; it delays the feed, never makes it skip.
//! This service's own sessions end a transaction left idle for 10 s
//! (`idle_in_transaction_session_timeout`, see `route.rs`); another client's (a psql
//! session, a backup, a migration's session) holds the line for as long as it lasts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::purchases::PurchaseRow;
use super::{Store, StoreError};
use crate::domain::{Event, FeedCursor, Purchase};

/// The event columns [`EventRow`] reads, for a table aliased `e`.
pub(super) const EVENT_COLUMNS: &str =
    "e.feed_tx, e.sale_id, e.sequence, e.id, e.type, e.sale_sku, e.occurred_at, e.data";

#[derive(FromRow)]
pub(super) struct EventRow {
    feed_tx: i64,
    sale_id: Uuid,
    sequence: i64,
    id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    sale_sku: String,
    occurred_at: DateTime<Utc>,
    data: sqlx::types::Json<serde_json::Value>,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            id: row.id,
            event_type: row.event_type,
            sale_id: row.sale_id,
            sale_sku: row.sale_sku,
            sequence: row.sequence,
            occurred_at: row.occurred_at,
            data: row.data.0,
            cursor: FeedCursor {
                feed_tx: row.feed_tx,
                sale_id: row.sale_id,
                sequence: row.sequence,
            },
        }
    }
}

/// Which events a feed read returns.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    pub sale_id: Option<Uuid>,
    /// `None`: every type.
    pub types: Option<Vec<String>>,
}

/// The events after `after` (from the start when `None`) that no later commit can precede,
/// in feed order, at most `limit`.
pub(super) async fn visible_events(
    conn: &mut Db,
    after: Option<FeedCursor>,
    filter: &FeedFilter,
    limit: i64,
) -> Result<Vec<Event>, StoreError> {
    let after = after.unwrap_or_default();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e
          WHERE (e.feed_tx, e.sale_id, e.sequence) > ($1, $2, $3)
            AND e.feed_tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
            AND ($4::uuid IS NULL OR e.sale_id = $4)
            AND ($5::text[] IS NULL OR e.type = ANY($5))
          ORDER BY e.feed_tx, e.sale_id, e.sequence
          LIMIT $6"
    );
    let rows = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql))
        .bind(after.feed_tx)
        .bind(after.sale_id)
        .bind(after.sequence)
        .bind(filter.sale_id)
        .bind(filter.types.as_deref())
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(Event::from).collect())
}

/// The position at which a new reader starts to see only what commits from now on: below it
/// every transaction has finished.
pub(super) async fn feed_horizon(conn: &mut Db) -> Result<FeedCursor, StoreError> {
    let tx_id: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(conn)
            .await?;
    // Strictly after (tx_id - 1, max, max): every event of tx_id itself and above.
    Ok(FeedCursor {
        feed_tx: tx_id - 1,
        sale_id: Uuid::max(),
        sequence: i64::MAX,
    })
}

/// Events of retention's age are pruned in steps of this many, so each statement stays short.
const PRUNE_STEP: i64 = 10_000;

/// What one call of [`Store::prune_events`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub deliveries: u64,
    /// The call stopped at its row budget: more may be left (or exactly nothing).
    pub more: bool,
}

impl Pruned {
    fn rows(&self) -> i64 {
        i64::try_from(self.events + self.deliveries).unwrap_or(i64::MAX)
    }
}

impl Store {
    /// A page of the event feed: see the module's note for why it never skips an event.
    pub async fn events_after(
        &self,
        after: Option<FeedCursor>,
        filter: &FeedFilter,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        visible_events(&mut self.conn().await?, after, filter, limit).await
    }

    /// Where a reader that wants only new events starts.
    pub async fn feed_now(&self) -> Result<FeedCursor, StoreError> {
        feed_horizon(&mut self.conn().await?).await
    }

    /// A page of a sale's purchases: every order of up to `buyers` buyers in user-id order
    /// after `after_user` (from the first when `None`), each buyer's orders in the order
    /// they were bought. Purchases are never deleted, so paging by the user id returns each
    /// purchase once, and every purchase committed before a page is read.
    pub async fn purchases_page(
        &self,
        sale_id: Uuid,
        after_user: Option<&str>,
        buyers: i64,
    ) -> Result<Vec<Purchase>, StoreError> {
        let rows = sqlx::query_as::<_, PurchaseRow>(
            // One range scan of the chain index (sale, user, units_before), already in the
            // page's order: from the cursor to the page's last buyer (the highest of the
            // next `$3` distinct buyers). `user_id IN (page)` made a plan that walked every
            // purchase of the sale for each page (a hash join over a sequential scan: 0.46 s
            // a page at 1,000,000 purchases, EXPLAIN ANALYZE of the generic plan; an export
            // took 41 s); this takes 4.5 ms a page of 5,000. `COALESCE($2, '')`, not
            // `$2 IS NULL OR ...`, so that a generic plan keeps the bound in the index
            // condition: user ids are never empty, so every one sorts after ''.
            "SELECT id, sale_id, user_id, created_at, quantity, variant FROM purchases
              WHERE sale_id = $1 AND user_id > COALESCE($2::text, '')
                AND user_id <= (SELECT max(user_id) FROM (
                        SELECT DISTINCT user_id FROM purchases
                         WHERE sale_id = $1 AND user_id > COALESCE($2::text, '')
                         ORDER BY user_id LIMIT $3) page)
              ORDER BY user_id, units_before",
        )
        .bind(sale_id)
        .bind(after_user)
        .bind(buyers)
        .fetch_all(&mut self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(Purchase::from).collect())
    }

    /// The furthest feed position of any pruned event: a cursor before it would skip what
    /// was pruned (the feed answers 410 with this, the oldest complete cursor).
    pub async fn feed_pruned_through(&self) -> Result<Option<FeedCursor>, StoreError> {
        let row: Option<(i64, Uuid, i64)> =
            sqlx::query_as("SELECT feed_tx, sale_id, sequence FROM feed_pruned_through")
                .fetch_optional(&mut self.conn().await?)
                .await?;
        Ok(row.map(|(feed_tx, sale_id, sequence)| FeedCursor {
            feed_tx,
            sale_id,
            sequence,
        }))
    }

    /// Prunes what retention allows, at most `max_rows` rows per call so that one run stays
    /// short (the retention job calls again at once while `more` says so): finished
    /// deliveries older than `keep`, then, sale by sale, the prefix of its events older than
    /// `keep` that no delivery names and every endpoint has fanned out, recording what was
    /// removed in `events_pruned` in the same statement (the audit counts it). Sales,
    /// purchases and holds are never touched.
    pub async fn prune_events(&self, keep: Duration, max_rows: i64) -> Result<Pruned, StoreError> {
        let keep_secs = keep.as_secs_f64();
        let mut pruned = Pruned::default();
        loop {
            let limit = PRUNE_STEP.min(max_rows - pruned.rows());
            if limit <= 0 {
                pruned.more = true;
                return Ok(pruned);
            }
            let deleted = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE id IN (
                     SELECT id FROM webhook_deliveries
                      WHERE status <> 'pending'
                        AND finished_at < now() - make_interval(secs => $1)
                      LIMIT $2)",
            )
            .bind(keep_secs)
            .bind(limit)
            .execute(&mut self.conn().await?)
            .await?;
            pruned.deliveries += deleted.rows_affected();
            if deleted.rows_affected() < limit as u64 {
                break;
            }
        }
        loop {
            let limit = PRUNE_STEP.min(max_rows - pruned.rows());
            if limit <= 0 {
                pruned.more = true;
                return Ok(pruned);
            }
            // The oldest events are the first in feed order (the primary key; there is no
            // index on the time, which would cost every purchase an insert). Per sale: the
            // highest sequence among them old enough, lowered below any event a delivery
            // still names (pending or finished: a delivery row is never removed with its
            // event, the key refuses it) and never past the slowest endpoint's fan-out
            // cursor (events it has not fanned out yet are kept for it). Race-free: a
            // cursor only moves forward, fan-out writes deliveries only for events past its
            // cursor, and a new endpoint starts at the present, so no delivery can appear
            // for an event this statement removes. Removing a prefix keeps the rest
            // gapless, which the audit checks against `events_pruned`; the furthest feed
            // position removed is kept for the feed's 410. Stops when a step removes
            // nothing.
            let step: i64 = sqlx::query_scalar(
                "WITH slowest AS (
                     SELECT cursor_tx, cursor_sale, cursor_sequence FROM webhook_endpoints
                      ORDER BY cursor_tx, cursor_sale, cursor_sequence LIMIT 1
                 ), old AS (
                     SELECT sale_id, max(sequence) AS upto FROM (
                         SELECT feed_tx, sale_id, sequence, occurred_at FROM events
                          ORDER BY feed_tx, sale_id, sequence LIMIT $2) o
                      WHERE occurred_at < now() - make_interval(secs => $1)
                        AND NOT EXISTS (
                            SELECT 1 FROM slowest c
                             WHERE (o.feed_tx, o.sale_id, o.sequence)
                                 > (c.cursor_tx, c.cursor_sale, c.cursor_sequence))
                      GROUP BY sale_id
                 ), bounded AS (
                     SELECT o.sale_id,
                            LEAST(o.upto, COALESCE((
                                SELECT min(d.sequence) - 1 FROM webhook_deliveries d
                                 WHERE d.sale_id = o.sale_id),
                                o.upto)) AS upto
                       FROM old o
                 ), removed AS (
                     DELETE FROM events e USING bounded b
                      WHERE e.sale_id = b.sale_id AND e.sequence <= b.upto
                     RETURNING e.feed_tx, e.sale_id, e.sequence, e.type
                 ), per_sale AS (
                     SELECT sale_id, max(sequence) AS through,
                            count(*) FILTER (WHERE type = 'purchase.created') AS purchases
                       FROM removed GROUP BY sale_id
                 ), furthest AS (
                     SELECT feed_tx, sale_id, sequence FROM removed
                      ORDER BY feed_tx DESC, sale_id DESC, sequence DESC LIMIT 1
                 ), position AS (
                     INSERT INTO feed_pruned_through AS t (feed_tx, sale_id, sequence)
                     SELECT feed_tx, sale_id, sequence FROM furthest
                     ON CONFLICT (only_row) DO UPDATE
                        SET feed_tx = EXCLUDED.feed_tx, sale_id = EXCLUDED.sale_id,
                            sequence = EXCLUDED.sequence
                      WHERE (t.feed_tx, t.sale_id, t.sequence)
                          < (EXCLUDED.feed_tx, EXCLUDED.sale_id, EXCLUDED.sequence)
                 ), recorded AS (
                     INSERT INTO events_pruned AS x (sale_id, through_sequence, purchase_events)
                     SELECT sale_id, through, purchases FROM per_sale
                     ON CONFLICT (sale_id) DO UPDATE
                        SET through_sequence = GREATEST(x.through_sequence,
                                                        EXCLUDED.through_sequence),
                            purchase_events = x.purchase_events + EXCLUDED.purchase_events
                 )
                 SELECT count(*) FROM removed",
            )
            .bind(keep_secs)
            .bind(limit)
            .fetch_one(&mut self.conn().await?)
            .await?;
            pruned.events += step as u64;
            if step == 0 {
                return Ok(pruned);
            }
        }
    }
}
