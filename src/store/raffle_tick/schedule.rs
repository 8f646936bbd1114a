//! Scheduling raffle ticks: the one pending tick per sale, the next tick after one ran,
//! and the runner's backstop.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::db::Db;
use crate::store::{Store, StoreError};

/// Makes sure a raffle tick for the sale is due by `run_at` (now when `None`): at most one
/// waits per sale (`jobs_one_pending_raffle_tick`); a pending one only moves earlier.
pub(in crate::store) async fn enqueue_raffle_tick(
    conn: &mut Db,
    sale_id: Uuid,
    run_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (kind, sale_id, run_at) VALUES ('raffle_tick', $1, COALESCE($2, now()))
         ON CONFLICT (sale_id)
            WHERE kind = 'raffle_tick' AND lock_token IS NULL AND dead_at IS NULL
         DO UPDATE SET run_at = LEAST(jobs.run_at, EXCLUDED.run_at)
            WHERE jobs.run_at > EXCLUDED.run_at",
    )
    .bind(sale_id)
    .bind(run_at)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Queues the next raffle tick at `run_at` (now when `None`).
    pub async fn schedule_raffle_tick(
        &self,
        sale_id: Uuid,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        enqueue_raffle_tick(&mut self.conn().await?, sale_id, run_at).await
    }

    /// Queues the next raffle tick at the earliest live hold's expiry or after `interval`,
    /// whichever comes first (database clock).
    pub async fn schedule_next_raffle_tick(
        &self,
        sale_id: Uuid,
        interval: Duration,
    ) -> Result<(), StoreError> {
        let at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT LEAST(now() + make_interval(secs => $2), min(hold_expires_at))
               FROM raffle_entries WHERE sale_id = $1 AND status = 'selected'",
        )
        .bind(sale_id)
        .bind(interval.as_secs_f64())
        .fetch_one(&mut self.conn().await?)
        .await?;
        self.schedule_raffle_tick(sale_id, at).await
    }

    /// The backstop of the raffles: makes a raffle tick due for every raffle that is not
    /// finished, whose entry window has ended (or that is cancelled or archived), and that
    /// has no tick pending or running. Returns how many were missing.
    pub async fn ensure_raffle_ticks(&self) -> Result<u64, StoreError> {
        let added = sqlx::query(
            "INSERT INTO jobs (kind, sale_id)
             SELECT 'raffle_tick', s.id FROM sales s JOIN sale_raffles r ON r.sale_id = s.id
              WHERE r.finished_at IS NULL
                AND (now() >= s.ends_at OR s.cancelled_at IS NOT NULL OR s.archived_at IS NOT NULL)
                AND NOT EXISTS (
                    SELECT 1 FROM jobs j
                     WHERE j.kind = 'raffle_tick' AND j.sale_id = s.id AND j.dead_at IS NULL
                       AND (j.lock_token IS NULL OR j.locked_until > now()))
             ON CONFLICT (sale_id)
                WHERE kind = 'raffle_tick' AND lock_token IS NULL AND dead_at IS NULL
             DO NOTHING",
        )
        .execute(&mut self.conn().await?)
        .await?;
        Ok(added.rows_affected())
    }
}
