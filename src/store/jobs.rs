//! The job queue: enqueue, claim with `FOR UPDATE SKIP LOCKED`, extend, complete, retry.
//!
//! A claim is a short transaction of its own that sets a lease and commits at once; the job
//! runs outside any transaction and its runner extends the lease while it runs (a
//! heartbeat), so the lease only has to outlast a missed beat, not the job. Times are the
//! database's.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::db::Db;
use super::lease::{Claim, Pick};
use super::{Store, StoreError, violated_constraint};

mod failed;

pub use failed::{FailedJob, RequeueOutcome};

/// Notification channel the `jobs_notify` trigger signals on every insert.
pub const JOBS_CHANNEL: &str = "flashsale_jobs";

/// After this many failed attempts a job is parked (`dead_at`) and no longer retried, until
/// an admin requeues it. Queue and raffle ticks and sale-state jobs are never parked: admission and
/// expiry must go on, and a sale's end by the clock is recorded (its event sent) by a
/// state job.
pub const MAX_ATTEMPTS: i32 = 25;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Record the state changes a sale has gone through (start, end, sell-out, cancel).
    SyncSaleState,
    /// Run a queued sale's waiting room: draw the pre-queue from the opening, return
    /// expired holds to stock, admit the next buyers to holds.
    QueueTick,
    /// Run a raffle: from its end, draw (rank the entrants in slices), return expired holds
    /// to stock, select the next entrants in draw order, tell the rest `not_selected`.
    RaffleTick,
    /// Remove events and finished webhook deliveries past their retention; runs every
    /// [`PRUNE_INTERVAL`], one pending at a time (`jobs_one_pending_prune`).
    PruneEvents,
}

/// How often retention runs.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::SyncSaleState => "sync_sale_state",
            JobKind::QueueTick => "queue_tick",
            JobKind::RaffleTick => "raffle_tick",
            JobKind::PruneEvents => "prune_events",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "sync_sale_state" => Some(JobKind::SyncSaleState),
            "queue_tick" => Some(JobKind::QueueTick),
            "raffle_tick" => Some(JobKind::RaffleTick),
            "prune_events" => Some(JobKind::PruneEvents),
            _ => None,
        }
    }
}

/// A claimed job. Only the runner holding `lock_token` may complete or retry it.
#[derive(Debug, Clone, FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub sale_id: Option<Uuid>,
    pub attempts: i32,
    pub lock_token: Uuid,
    /// Seconds between its due time and its claim.
    pub lag_seconds: f64,
}

/// How many jobs of each class a runner can start now (see [`Store::claim_jobs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSlots {
    pub queue_ticks: i64,
    pub others: i64,
}

/// Queues a job due at `run_at` (now when `None`), inside the caller's transaction.
pub async fn enqueue(
    conn: &mut Db,
    kind: JobKind,
    sale_id: Uuid,
    run_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO jobs (kind, sale_id, run_at) VALUES ($1, $2, COALESCE($3, now()))")
        .bind(kind.as_str())
        .bind(sale_id)
        .bind(run_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes sure a queue tick for the sale is due by `run_at` (now when `None`). At most one
/// tick waits per sale (`jobs_one_pending_queue_tick`), so a burst of joins or releases does
/// not flood the queue with ticks.
///
/// The "now" form is what every join calls, so it must not serialize them: it moves a
/// pending tick earlier only when that tick is still in the future (an UPDATE locks only
/// the rows it changes), and otherwise inserts with ON CONFLICT DO NOTHING, which locks
/// nothing. The scheduled form (the tick planning its successor) may lock the pending row.
pub async fn enqueue_queue_tick(
    conn: &mut Db,
    sale_id: Uuid,
    run_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let sql = match run_at {
        None => {
            "WITH moved AS (
                 UPDATE jobs SET run_at = now()
                  WHERE kind = 'queue_tick' AND sale_id = $1 AND lock_token IS NULL
                    AND dead_at IS NULL AND run_at > now()
                 RETURNING id
             )
             INSERT INTO jobs (kind, sale_id, run_at)
             SELECT 'queue_tick', $1, COALESCE($2, now()) WHERE NOT EXISTS (SELECT 1 FROM moved)
             ON CONFLICT (sale_id)
                WHERE kind = 'queue_tick' AND lock_token IS NULL AND dead_at IS NULL
             DO NOTHING"
        }
        Some(_) => {
            "INSERT INTO jobs (kind, sale_id, run_at) VALUES ('queue_tick', $1, COALESCE($2, now()))
             ON CONFLICT (sale_id)
                WHERE kind = 'queue_tick' AND lock_token IS NULL AND dead_at IS NULL
             DO UPDATE SET run_at = LEAST(jobs.run_at, EXCLUDED.run_at)
                WHERE jobs.run_at > EXCLUDED.run_at"
        }
    };
    sqlx::query(sql)
        .bind(sale_id)
        .bind(run_at)
        .execute(conn)
        .await?;
    Ok(())
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl Store {
    /// Queues a job for a sale, due at `run_at` or now.
    pub async fn enqueue_job(
        &self,
        kind: JobKind,
        sale_id: Uuid,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        enqueue(&mut self.conn().await?, kind, sale_id, run_at).await
    }

    /// Claims due jobs for `lease`: up to `free.queue_ticks` queue ticks and `free.others`
    /// other jobs, each class picked on its own so a backlog of one never crowds out the other.
    ///
    /// Race-free with any number of runners (the argument in full is [`Claim::sql`]'s):
    /// `FOR UPDATE SKIP LOCKED` gives each due row to exactly one claiming transaction (the
    /// others skip it), and the UPDATE sets a lease that makes the row invisible to the
    /// `locked_until` filter of later claims until it runs out. The statement commits on its
    /// own, so no lock is held while the job runs.
    pub async fn claim_jobs(
        &self,
        free: FreeSlots,
        lease: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        static CLAIM_JOBS: LazyLock<String> = LazyLock::new(|| {
            Claim {
                table: "jobs",
                picks: &[
                    Pick {
                        name: "ticks",
                        due: "kind = 'queue_tick' AND dead_at IS NULL AND run_at <= now()",
                        order_by: "run_at, id",
                        limit: "$1",
                    },
                    Pick {
                        name: "others",
                        due: "kind <> 'queue_tick' AND dead_at IS NULL AND run_at <= now()",
                        order_by: "run_at, id",
                        limit: "$2",
                    },
                ],
                lease_secs: "$3",
                returning: "c.id, c.kind, c.sale_id, c.attempts, c.lock_token,
                    GREATEST(EXTRACT(EPOCH FROM now() - c.run_at), 0)::float8 AS lag_seconds",
            }
            .sql("SELECT * FROM claimed")
        });
        let jobs = sqlx::query_as::<_, Job>(sqlx::AssertSqlSafe(CLAIM_JOBS.as_str()))
            .bind(free.queue_ticks)
            .bind(free.others)
            .bind(seconds(lease))
            .fetch_all(&mut self.conn().await?)
            .await?;
        Ok(jobs)
    }

    /// A running job's heartbeat: its lease runs `lease` from now again. False when the lease
    /// is no longer ours. Only the holder of `lock_token` extends it: a claim after the lease
    /// ran out wrote a new token, so this matches nothing. Should the two meet on the row,
    /// one waits for the other's row lock and READ COMMITTED re-checks its WHERE on the
    /// committed row: an extension after the claim sees the new token, a claim after the
    /// extension sees a lease in the future (or skips the locked row). A lease that ran out
    /// with nobody claiming it is simply ours again.
    pub async fn extend_job_lease(&self, job: &Job, lease: Duration) -> Result<bool, StoreError> {
        let extended = sqlx::query(
            "UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
              WHERE id = $1 AND lock_token = $2",
        )
        .bind(job.id)
        .bind(job.lock_token)
        .bind(seconds(lease))
        .execute(&mut self.conn().await?)
        .await?;
        Ok(extended.rows_affected() > 0)
    }

    /// Removes a finished job. False when the lease was lost (another runner owns it now).
    pub async fn complete_job(&self, job: &Job) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = $1 AND lock_token = $2")
            .bind(job.id)
            .bind(job.lock_token)
            .execute(&mut self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Releases a failed job to run again after `backoff`, or parks it after
    /// [`MAX_ATTEMPTS`].
    pub async fn retry_job(
        &self,
        job: &Job,
        backoff: Duration,
        error: &str,
    ) -> Result<(), StoreError> {
        let retried = sqlx::query(
            "UPDATE jobs SET locked_until = NULL, lock_token = NULL, last_error = $3,
                    run_at = now() + make_interval(secs => $4),
                    dead_at = CASE WHEN attempts >= $5
                                         AND kind NOT IN ('queue_tick', 'raffle_tick', 'sync_sale_state')
                                    THEN now() END
              WHERE id = $1 AND lock_token = $2",
        )
        .bind(job.id)
        .bind(job.lock_token)
        .bind(error)
        .bind(seconds(backoff))
        .bind(MAX_ATTEMPTS)
        .execute(&mut self.conn().await?)
        .await;
        match retried {
            Ok(_) => Ok(()),
            // Another tick for this sale is already pending and will do the same work.
            Err(err)
                if matches!(
                    violated_constraint(&err),
                    Some("jobs_one_pending_queue_tick" | "jobs_one_pending_raffle_tick")
                ) =>
            {
                self.complete_job(job).await.map(|_| ())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The backstop of the waiting rooms: makes a queue tick due for every queued sale that
    /// can still admit or expire anything (open and not archived, or holding units) and has
    /// no tick pending or running. Normally every such sale already has one (each tick
    /// schedules the next); this bounds the damage of one lost to a crash or a bug. Returns
    /// how many were missing.
    pub async fn ensure_queue_ticks(&self) -> Result<u64, StoreError> {
        let added = sqlx::query(
            "INSERT INTO jobs (kind, sale_id)
             SELECT 'queue_tick', s.id FROM sales s
              WHERE s.checkout = 'queued'
                AND (s.held > 0 OR (s.cancelled_at IS NULL AND s.archived_at IS NULL
                                    AND now() < s.ends_at AND s.available > 0))
                AND NOT EXISTS (
                    SELECT 1 FROM jobs j
                     WHERE j.kind = 'queue_tick' AND j.sale_id = s.id AND j.dead_at IS NULL
                       AND (j.lock_token IS NULL OR j.locked_until > now()))
             ON CONFLICT (sale_id)
                WHERE kind = 'queue_tick' AND lock_token IS NULL AND dead_at IS NULL
             DO NOTHING",
        )
        .execute(&mut self.conn().await?)
        .await?;
        Ok(added.rows_affected())
    }

    /// Makes sure a retention job is pending (due at once when none has run yet); the job
    /// schedules its successor. Returns whether one was added.
    pub async fn ensure_prune_job(&self) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO jobs (kind) SELECT 'prune_events'
              WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'prune_events' AND dead_at IS NULL)
             ON CONFLICT (kind)
                WHERE kind = 'prune_events' AND lock_token IS NULL AND dead_at IS NULL
             DO NOTHING",
        )
        .execute(&mut self.conn().await?)
        .await?;
        Ok(added.rows_affected() > 0)
    }

    /// Queues the next retention run after `delay`.
    pub async fn schedule_prune_job(&self, delay: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO jobs (kind, run_at) VALUES ('prune_events', now() + make_interval(secs => $1))
             ON CONFLICT (kind)
                WHERE kind = 'prune_events' AND lock_token IS NULL AND dead_at IS NULL
             DO NOTHING",
        )
        .bind(seconds(delay))
        .execute(&mut self.conn().await?)
        .await?;
        Ok(())
    }

    /// How long until the next job of a class with a free slot (`free` above zero) falls due
    /// (zero when one is due now), or `None` when there is none.
    pub async fn next_job_due_in(&self, free: FreeSlots) -> Result<Option<Duration>, StoreError> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM min(GREATEST(run_at, COALESCE(locked_until, run_at))) - now())::float8
               FROM jobs
              WHERE dead_at IS NULL
                AND CASE WHEN kind = 'queue_tick' THEN $1 > 0 ELSE $2 > 0 END",
        )
        .bind(free.queue_ticks)
        .bind(free.others)
        .fetch_one(&mut self.conn().await?)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }
}
