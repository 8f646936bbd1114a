//! Jobs that failed for good (parked after [`super::MAX_ATTEMPTS`]), as an admin lists and
//! requeues them.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use crate::store::{Store, StoreError, violated_constraint};

/// A job that failed for good, as an admin sees it.
#[derive(Debug, Clone, FromRow)]
pub struct FailedJob {
    pub id: i64,
    pub kind: String,
    pub sale_id: Option<Uuid>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub dead_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// What a requeue did.
#[derive(Debug, PartialEq, Eq)]
pub enum RequeueOutcome {
    Requeued,
    /// The job exists but has not failed for good.
    NotFailed,
    NotFound,
}

impl Store {
    /// Jobs that failed for good, newest first.
    pub async fn failed_jobs(&self, limit: i64) -> Result<Vec<FailedJob>, StoreError> {
        let jobs = sqlx::query_as::<_, FailedJob>(
            "SELECT id, kind, sale_id, attempts, last_error, dead_at, created_at FROM jobs
              WHERE dead_at IS NOT NULL ORDER BY dead_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut self.conn().await?)
        .await?;
        Ok(jobs)
    }

    /// How many jobs failed for good.
    pub async fn count_failed_jobs(&self) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE dead_at IS NOT NULL")
            .fetch_one(&mut self.conn().await?)
            .await?;
        Ok(count)
    }

    /// Makes a failed job due now with a fresh set of attempts.
    pub async fn requeue_job(&self, id: i64) -> Result<RequeueOutcome, StoreError> {
        let requeued = sqlx::query(
            "UPDATE jobs SET dead_at = NULL, attempts = 0, run_at = now(), locked_until = NULL,
                    lock_token = NULL
              WHERE id = $1 AND dead_at IS NOT NULL",
        )
        .bind(id)
        .execute(&mut self.conn().await?)
        .await;
        match requeued {
            Ok(done) if done.rows_affected() > 0 => Ok(RequeueOutcome::Requeued),
            Ok(_) => {
                let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut self.conn().await?)
                    .await?;
                Ok(match exists {
                    Some(_) => RequeueOutcome::NotFailed,
                    None => RequeueOutcome::NotFound,
                })
            }
            // A queue tick parked before ticks stopped parking, with another pending: that
            // one does the same work, so this one goes.
            Err(err) if violated_constraint(&err) == Some("jobs_one_pending_queue_tick") => {
                sqlx::query("DELETE FROM jobs WHERE id = $1")
                    .bind(id)
                    .execute(&mut self.conn().await?)
                    .await?;
                Ok(RequeueOutcome::Requeued)
            }
            Err(err) => Err(err.into()),
        }
    }
}
