//! Webhook deliveries: fan-out from the event feed into one delivery row per (endpoint,
//! event); claim due deliveries with a lease; record what each attempt did; list, count and
//! replay them.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::events::{EVENT_COLUMNS, EventRow, FeedFilter, visible_events};
use super::lease::{Claim, Pick};
use super::{Store, StoreError};
use crate::domain::{Event, FeedCursor};

/// A delivery claimed for one attempt, with its event.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub lock_token: Uuid,
    pub attempts: i32,
    pub event: Event,
}

/// What one attempt did.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub delivery_id: i64,
    pub lock_token: Uuid,
    /// False when the round ran out of time before sending it: it goes back as it was.
    pub sent: bool,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// None on success (any 2xx).
    pub error: Option<String>,
    /// When failed: wait this long before the next attempt (unless the window has passed).
    pub retry_in: Duration,
}

/// How many attempts ended which way, after [`Store::record_attempts`].
#[derive(Debug, Default, Clone, Copy)]
pub struct AttemptTally {
    pub delivered: u64,
    /// Left unsent by a round out of time; claimable again.
    pub unsent: u64,
    pub retrying: u64,
    pub failed: u64,
}

/// A delivery as an admin sees it.
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryView {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub sale_id: Uuid,
    pub sequence: i64,
    pub status: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a replay did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    Replayed,
    /// Still pending: it is being tried anyway.
    Pending,
    NotFound,
}

impl Store {
    /// Fan-out: turns the next `limit` events of the feed after the endpoint's cursor into
    /// deliveries (those its filter wants) and moves the cursor past them, in one
    /// transaction. Returns how many events were read (0: caught up, or another instance is
    /// fanning out for this endpoint right now).
    ///
    /// Race-free under READ COMMITTED: the endpoint row is locked with SKIP LOCKED, so one
    /// instance at a time advances a cursor (the others move on); the events read are only
    /// those no later commit can precede (see store/events.rs), so advancing past them skips
    /// nothing; a crash before the commit leaves both the deliveries and the cursor as they
    /// were, and the unique (endpoint, event) key would make a repeat a no-op anyway.
    pub async fn fan_out(
        &self,
        endpoint_id: Uuid,
        limit: i64,
        retry_for: Duration,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let endpoint = sqlx::query_as::<_, FanOutState>(
            "SELECT cursor_tx, cursor_sale, cursor_sequence, event_types, sale_id
               FROM webhook_endpoints WHERE id = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(endpoint_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(endpoint) = endpoint else {
            return Ok(0);
        };
        let after = FeedCursor {
            feed_tx: endpoint.cursor_tx,
            sale_id: endpoint.cursor_sale,
            sequence: endpoint.cursor_sequence,
        };
        let (types, sale_filter) = (endpoint.event_types, endpoint.sale_id);
        let events = visible_events(&mut tx, Some(after), &FeedFilter::default(), limit).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            return Ok(0);
        };
        let wanted: Vec<&Event> = events
            .iter()
            .filter(|event| sale_filter.is_none_or(|sale| sale == event.sale_id))
            .filter(|event| {
                types
                    .as_ref()
                    .is_none_or(|types| types.contains(&event.event_type))
            })
            .collect();
        if !wanted.is_empty() {
            let txs: Vec<i64> = wanted.iter().map(|event| event.cursor.feed_tx).collect();
            let sales: Vec<Uuid> = wanted.iter().map(|event| event.sale_id).collect();
            let sequences: Vec<i64> = wanted.iter().map(|event| event.sequence).collect();
            sqlx::query(
                "INSERT INTO webhook_deliveries (endpoint_id, event_tx, sale_id, sequence,
                                                 retry_until)
                 SELECT $1, t, s, q, now() + make_interval(secs => $5)
                   FROM unnest($2::bigint[], $3::uuid[], $4::bigint[]) AS u(t, s, q)
                 ON CONFLICT ON CONSTRAINT webhook_deliveries_once DO NOTHING",
            )
            .bind(endpoint_id)
            .bind(&txs)
            .bind(&sales)
            .bind(&sequences)
            .bind(retry_for.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE webhook_endpoints SET cursor_tx = $2, cursor_sale = $3, cursor_sequence = $4
              WHERE id = $1",
        )
        .bind(endpoint_id)
        .bind(last.feed_tx)
        .bind(last.sale_id)
        .bind(last.sequence)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Claims up to `limit` due deliveries of one endpoint for `lease`, oldest first.
    ///
    /// Race-free with any number of instances (the argument in full is [`Claim::sql`]'s):
    /// `FOR UPDATE SKIP LOCKED` gives each due row to one claimer, and the lease it sets
    /// hides the row from every other claim until it runs out; the lease is longer than an
    /// attempt can take (connect + answer timeouts), so no delivery is sent twice at once.
    /// The claim commits on its own: nothing is locked while the request is in flight, and
    /// no purchase ever waits for a delivery.
    pub async fn claim_deliveries(
        &self,
        endpoint_id: Uuid,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        static CLAIM_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
            Claim {
                table: "webhook_deliveries",
                picks: &[Pick {
                    name: "due_deliveries",
                    due: "endpoint_id = $1 AND status = 'pending' AND next_attempt_at <= now()",
                    order_by: "next_attempt_at, id",
                    limit: "$2",
                }],
                lease_secs: "$3",
                returning: "c.id, c.lock_token, c.attempts, c.event_tx, c.sale_id, c.sequence",
            }
            .sql(&format!(
                "SELECT c.id AS delivery_id, c.lock_token, c.attempts, {EVENT_COLUMNS}
               FROM claimed c
               JOIN events e ON e.feed_tx = c.event_tx AND e.sale_id = c.sale_id
                            AND e.sequence = c.sequence
              ORDER BY e.sale_id, e.sequence"
            ))
        });
        let rows = sqlx::query_as::<_, ClaimRow>(sqlx::AssertSqlSafe(CLAIM_DELIVERIES.as_str()))
            .bind(endpoint_id)
            .bind(limit)
            .bind(lease.as_secs_f64())
            .fetch_all(&mut self.conn().await?)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| ClaimedDelivery {
                id: row.delivery_id,
                lock_token: row.lock_token,
                attempts: row.attempts,
                event: row.event.into(),
            })
            .collect())
    }

    /// Records a round of attempts in one statement: 2xx → delivered; otherwise retried
    /// after its backoff, or failed for good once the next attempt would fall past its
    /// `retry_until`; one the round never sent goes back as it was (its attempt uncounted). Only the holder of the lease may record (a late finisher whose lease
    /// ran out records nothing; the delivery is someone else's now).
    pub async fn record_attempts(
        &self,
        results: &[AttemptResult],
    ) -> Result<AttemptTally, StoreError> {
        if results.is_empty() {
            return Ok(AttemptTally::default());
        }
        let ids: Vec<i64> = results.iter().map(|r| r.delivery_id).collect();
        let tokens: Vec<Uuid> = results.iter().map(|r| r.lock_token).collect();
        let statuses: Vec<Option<i32>> = results.iter().map(|r| r.status.map(i32::from)).collect();
        let errors: Vec<Option<&str>> = results.iter().map(|r| r.error.as_deref()).collect();
        let waits: Vec<f64> = results.iter().map(|r| r.retry_in.as_secs_f64()).collect();
        let sent: Vec<bool> = results.iter().map(|r| r.sent).collect();
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "UPDATE webhook_deliveries d
                SET status = CASE WHEN NOT r.sent THEN d.status
                                  WHEN r.error IS NULL THEN 'delivered'
                                  WHEN now() + make_interval(secs => r.wait) > d.retry_until
                                  THEN 'failed' ELSE 'pending' END,
                    finished_at = CASE WHEN NOT r.sent THEN NULL
                                       WHEN r.error IS NULL
                                         OR now() + make_interval(secs => r.wait) > d.retry_until
                                       THEN now() END,
                    next_attempt_at = CASE WHEN NOT r.sent OR r.error IS NULL
                                           THEN d.next_attempt_at
                                           ELSE now() + make_interval(secs => r.wait) END,
                    attempts = CASE WHEN r.sent THEN d.attempts ELSE d.attempts - 1 END,
                    last_status = CASE WHEN r.sent THEN r.status ELSE d.last_status END,
                    last_error = CASE WHEN r.sent THEN r.error ELSE d.last_error END,
                    locked_until = NULL, lock_token = NULL
               FROM unnest($1::bigint[], $2::uuid[], $3::int[], $4::text[], $5::float8[],
                           $6::bool[]) AS r(id, token, status, error, wait, sent)
              WHERE d.id = r.id AND d.lock_token = r.token
             RETURNING d.status, r.sent",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&statuses)
        .bind(&errors)
        .bind(&waits)
        .bind(&sent)
        .fetch_all(&mut self.conn().await?)
        .await?;
        let mut tally = AttemptTally::default();
        for (status, sent) in rows {
            match status.as_str() {
                _ if !sent => tally.unsent += 1,
                "delivered" => tally.delivered += 1,
                "failed" => tally.failed += 1,
                _ => tally.retrying += 1,
            }
        }
        Ok(tally)
    }

    /// Deliveries, newest first, optionally only those with `status` or of one endpoint.
    pub async fn list_deliveries(
        &self,
        status: Option<&str>,
        endpoint_id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        Ok(sqlx::query_as::<_, DeliveryView>(
            "SELECT d.id, d.endpoint_id, e.id AS event_id, e.type AS event_type, d.sale_id,
                    d.sequence, d.status, d.attempts, d.last_status, d.last_error,
                    d.next_attempt_at, d.created_at, d.finished_at
               FROM webhook_deliveries d
               JOIN events e ON e.feed_tx = d.event_tx AND e.sale_id = d.sale_id
                            AND e.sequence = d.sequence
              WHERE ($1::text IS NULL OR d.status = $1)
                AND ($2::uuid IS NULL OR d.endpoint_id = $2)
              ORDER BY d.id DESC LIMIT $3",
        )
        .bind(status)
        .bind(endpoint_id)
        .bind(limit)
        .fetch_all(&mut self.conn().await?)
        .await?)
    }

    /// Makes a finished delivery (failed, or delivered and wanted again) due now, with a
    /// fresh retry window.
    pub async fn replay_delivery(
        &self,
        id: i64,
        retry_for: Duration,
    ) -> Result<ReplayOutcome, StoreError> {
        let status: Option<(String,)> = sqlx::query_as(
            "WITH target AS (SELECT id, status FROM webhook_deliveries WHERE id = $1 FOR UPDATE),
             replayed AS (
                 UPDATE webhook_deliveries d
                    SET status = 'pending', next_attempt_at = now(), finished_at = NULL,
                        retry_until = now() + make_interval(secs => $2), attempts = 0
                   FROM target WHERE d.id = target.id AND target.status <> 'pending'
             )
             SELECT status FROM target",
        )
        .bind(id)
        .bind(retry_for.as_secs_f64())
        .fetch_optional(&mut self.conn().await?)
        .await?;
        Ok(match status {
            None => ReplayOutcome::NotFound,
            Some((status,)) if status == "pending" => ReplayOutcome::Pending,
            Some(_) => ReplayOutcome::Replayed,
        })
    }

    /// Deliveries by status, for the metrics: (pending, failed).
    pub async fn count_deliveries(&self) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),
                    (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed')",
        )
        .fetch_one(&mut self.conn().await?)
        .await?)
    }
}

#[derive(FromRow)]
struct FanOutState {
    cursor_tx: i64,
    cursor_sale: Uuid,
    cursor_sequence: i64,
    event_types: Option<Vec<String>>,
    sale_id: Option<Uuid>,
}

#[derive(FromRow)]
struct ClaimRow {
    delivery_id: i64,
    lock_token: Uuid,
    attempts: i32,
    #[sqlx(flatten)]
    event: EventRow,
}
