//! The job runner: claims due jobs from the `jobs` table ([`Store::claim_jobs`]) and runs
//! them with a [`JobHandler`], retrying failures with exponential backoff. It must not hold
//! a transaction while a job runs, and it never decides anything a job decides.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::{BACKSTOP_INTERVAL, RunnerHealth};
use crate::metrics::Metrics;
use crate::store::{JOBS_CHANNEL, Job, JobKind, MAX_ATTEMPTS, Store};

/// Longest wait before a failed queue tick runs again (other jobs back off up to
/// `max_backoff`): admission and expiry must resume soon after the fault is gone.
const QUEUE_TICK_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs one claimed job. Implementations must be idempotent: a job whose lease ran out while
/// it was still running (an instance stalled longer than the lease) may run again.
pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, job: &Job) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How a runner paces itself.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Longest sleep between two polls when no notification arrives.
    pub poll_interval: Duration,
    /// Jobs claimed per round trip.
    pub batch_size: i64,
    /// How long a claimed job stays ours; much longer than any job runs.
    pub lease: Duration,
    /// First retry delay; doubles with each attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            batch_size: 16,
            lease: Duration::from_secs(60),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// The delay before retry number `attempts` (1 after the first failure).
pub fn backoff(config: &RunnerConfig, attempts: i32) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 20) as u32;
    config
        .base_backoff
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(config.max_backoff)
}

/// Takes jobs from the queue until `shutdown` turns true.
#[derive(Clone)]
pub struct Runner<H> {
    store: Store,
    handler: H,
    config: RunnerConfig,
    metrics: Option<Metrics>,
    health: RunnerHealth,
}

impl<H: JobHandler> Runner<H> {
    pub fn new(store: Store, handler: H, config: RunnerConfig) -> Self {
        Self {
            store,
            handler,
            config,
            metrics: None,
            health: RunnerHealth::default(),
        }
    }

    /// Beats `health` on every round.
    pub fn with_health(mut self, health: RunnerHealth) -> Self {
        self.health = health;
        self
    }

    /// Counts the jobs it runs in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn observe_lag(&self, job: &Job) {
        if let Some(metrics) = &self.metrics {
            metrics
                .job_lag
                .with_label_values(&[job.kind.as_str()])
                .observe(job.lag_seconds);
        }
    }

    fn count(&self, job: &Job, result: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .jobs
                .with_label_values(&[job.kind.as_str(), result])
                .inc();
        }
    }

    /// Runs until `shutdown` is set; returns after the job in hand (if any) has finished.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut listener = self.listen().await;
        tracing::info!("job runner started");
        let mut next_backstop = Instant::now();
        while !*shutdown.borrow() {
            self.health.beat();
            if Instant::now() >= next_backstop {
                self.backstop().await;
                next_backstop = Instant::now() + BACKSTOP_INTERVAL;
            }
            let ran = match self.run_due_jobs().await {
                Ok(ran) => ran,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming jobs failed; will poll again");
                    0
                }
            };
            if ran as i64 >= self.config.batch_size {
                continue;
            }
            let sleep = self.sleep_time().await;
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
                woke = wait_for_notification(&mut listener) => {
                    if !woke {
                        listener = None;
                    }
                }
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
        }
        tracing::info!("job runner stopped");
        Ok(())
    }

    /// Gives every live waiting room a tick and counts the failed jobs (see the module doc).
    async fn backstop(&self) {
        match self.store.ensure_queue_ticks().await {
            Ok(0) => {}
            Ok(added) => tracing::warn!(added, "backstop: queue ticks were missing; added"),
            Err(err) => tracing::warn!(error = %err, "backstop: could not check queue ticks"),
        }
        if let Err(err) = self.store.ensure_prune_job().await {
            tracing::warn!(error = %err, "backstop: could not check the retention job");
        }
        if let (Some(metrics), Ok(dead)) = (&self.metrics, self.store.count_failed_jobs().await) {
            metrics.jobs_dead.set(dead);
        }
    }

    /// Claims one batch and runs it; returns how many jobs ran.
    pub async fn run_due_jobs(&self) -> anyhow::Result<usize> {
        let jobs = self
            .store
            .claim_jobs(self.config.batch_size, self.config.lease)
            .await?;
        for job in &jobs {
            self.run_one(job).await;
        }
        Ok(jobs.len())
    }

    #[tracing::instrument(skip_all, fields(job = job.id, kind = %job.kind, sale = ?job.sale_id, attempt = job.attempts))]
    async fn run_one(&self, job: &Job) {
        self.observe_lag(job);
        let outcome = self.handler.run(job).await;
        self.count(job, if outcome.is_ok() { "ok" } else { "failed" });
        match outcome {
            Ok(()) => match self.store.complete_job(job).await {
                Ok(true) => tracing::debug!("job done"),
                Ok(false) => tracing::warn!("job done after its lease ran out"),
                Err(err) => {
                    tracing::warn!(error = %err, "could not mark job done; it will run again")
                }
            },
            Err(err) => {
                let mut delay = backoff(&self.config, job.attempts);
                if job.kind == JobKind::QueueTick.as_str() {
                    delay = delay.min(QUEUE_TICK_MAX_BACKOFF);
                } else if job.attempts >= MAX_ATTEMPTS {
                    self.count(job, "dead");
                    tracing::error!(
                        error = format!("{err:#}"),
                        "job failed for good; requeue it from the admin API"
                    );
                }
                tracing::warn!(error = format!("{err:#}"), retry_in = ?delay, "job failed");
                if let Err(err) = self.store.retry_job(job, delay, &format!("{err:#}")).await {
                    tracing::warn!(error = %err, "could not reschedule job; its lease will expire");
                }
            }
        }
    }

    async fn sleep_time(&self) -> Duration {
        match self.store.next_job_due_in().await {
            Ok(Some(due_in)) => due_in.min(self.config.poll_interval),
            Ok(None) | Err(_) => self.config.poll_interval,
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(self.store.pool()).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "LISTEN connection failed; polling only");
                return None;
            }
        };
        match listener.listen(JOBS_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(err) => {
                tracing::warn!(error = %err, "LISTEN failed; polling only");
                None
            }
        }
    }
}

/// Waits for a notification; false when the listener broke (pending forever without one).
async fn wait_for_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let config = RunnerConfig::default();
        assert_eq!(backoff(&config, 1), Duration::from_millis(500));
        assert_eq!(backoff(&config, 2), Duration::from_secs(1));
        assert_eq!(backoff(&config, 4), Duration::from_secs(4));
        assert_eq!(backoff(&config, 30), Duration::from_secs(300));
        assert_eq!(backoff(&config, i32::MAX), Duration::from_secs(300));
    }
}
