//! The job runner: claims due jobs from the `jobs` table ([`Store::claim_jobs`]) and runs
//! each in a task of its own with a [`JobHandler`], retrying failures with exponential
//! backoff. It never holds a transaction while a job runs.
//!
//! A slow job holds up nothing but its own slot. Every job has a lease of its own that its
//! task extends every third of the lease while it runs (a heartbeat,
//! [`Store::extend_job_lease`]), so a job may run longer than its lease without another
//! runner taking it; a lease found lost is logged. Jobs run side by side in slots: queue
//! ticks have [`RunnerConfig::tick_slots`] of their own and the other kinds
//! [`RunnerConfig::other_slots`], so no other kind of job (a retention slice, say) can keep
//! admission and expiry waiting. The loop itself never waits for a job: it claims as slots
//! come free and beats the health and runs the backstop while jobs run; on shutdown it
//! stops claiming and waits for the jobs in hand.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::slots::{InHand, reaped};
use super::{BACKSTOP_INTERVAL, RunnerHealth};
use crate::domain::backoff;
use crate::metrics::Metrics;
use crate::store::{
    FreeSlots, JOBS_CHANNEL, Job, JobKind, Listen, MAX_ATTEMPTS, Store, StoreError,
};
use crate::telemetry::Throttle;

/// Longest wait before a failed queue tick runs again (other jobs back off up to
/// `max_backoff`): admission and expiry must resume soon after the fault is gone.
const QUEUE_TICK_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long a repeating failure of the runner's own loop stays quiet after it is logged
/// (an outage would otherwise log every poll).
const QUIET_FOR: Duration = Duration::from_secs(30);

/// Runs one claimed job. Implementations must be idempotent: a job whose lease was lost
/// while it still ran (its heartbeat could not reach the database for a whole lease) may
/// run again, even at the same time.
pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, job: &Job) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How a runner paces itself. Every running job takes a connection of the runner's pool
/// (the reserved pool, `DB_RESERVED_POOL_SIZE`, one of whose connections is the LISTEN)
/// for each statement, so slots beyond its connections would only wait for the pool.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Longest sleep between two polls when no notification arrives.
    pub poll_interval: Duration,
    /// Queue ticks one runner runs at once (ticks of different sales side by side). Ticks
    /// have slots of their own so that no other kind of job can delay admission or expiry.
    pub tick_slots: usize,
    /// Jobs of the other kinds (sale states, retention slices) one runner runs at once.
    pub other_slots: usize,
    /// How long a claim lasts unless extended. A running job extends its own every third
    /// of this, so the lease bounds how long the jobs of a dead instance wait for another
    /// runner, not how long a job may run.
    pub lease: Duration,
    /// First retry delay; doubles with each attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            tick_slots: 2,
            other_slots: 1,
            lease: Duration::from_secs(30),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Takes jobs from the queue until `shutdown` turns true.
pub struct Runner<H> {
    store: Store,
    handler: Arc<H>,
    config: RunnerConfig,
    metrics: Option<Metrics>,
    health: RunnerHealth,
}

// By hand: a derive would ask for `H: Clone`, and the handler is shared, not copied.
impl<H> Clone for Runner<H> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            handler: self.handler.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        }
    }
}

impl<H: JobHandler> Runner<H> {
    pub fn new(store: Store, handler: H, config: RunnerConfig) -> Self {
        Self {
            store,
            handler: Arc::new(handler),
            config,
            metrics: None,
            health: RunnerHealth::default(),
        }
    }

    /// Beats `health` on every round of the loop.
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

    /// Runs until `shutdown` is set; returns after the jobs in hand have finished.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let woken = Arc::new(Notify::new());
        // Dropped when the loop ends, which ends the listener with it.
        let mut ear = JoinSet::new();
        ear.spawn(self.listen(woken.clone(), shutdown.clone()));
        tracing::info!("job runner started");
        let mut in_hand = InHand::new(self.config.tick_slots, self.config.other_slots);
        let mut next_backstop = Instant::now();
        while !*shutdown.borrow() {
            // The loop never waits for a job, so this beats while jobs run: `/health`
            // reports a loop that stopped, not a job that takes long.
            self.health.beat();
            while let Some(done) = in_hand.tasks.try_join_next() {
                reaped(done);
            }
            if Instant::now() >= next_backstop {
                self.backstop().await;
                next_backstop = Instant::now() + BACKSTOP_INTERVAL;
            }
            if let Err(err) = self.start_due_jobs(&mut in_hand).await {
                static LOGGED: Throttle = Throttle::new(QUIET_FOR);
                if LOGGED.ready() {
                    tracing::warn!(error = %err, "claiming jobs failed; will poll again (the next 30 s: quiet)");
                }
            }
            let sleep = self.sleep_time(in_hand.free()).await;
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = woken.notified() => {}
                // A slot came free (disabled while nothing runs).
                Some(done) = in_hand.tasks.join_next() => reaped(done),
            }
        }
        if !in_hand.tasks.is_empty() {
            tracing::info!(
                jobs = in_hand.tasks.len(),
                "job runner stopping after the jobs in hand"
            );
        }
        in_hand.finish().await;
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
        match self.store.ensure_raffle_ticks().await {
            Ok(0) => {}
            Ok(added) => tracing::warn!(added, "backstop: raffle ticks were missing; added"),
            Err(err) => tracing::warn!(error = %err, "backstop: could not check raffle ticks"),
        }
        if let Err(err) = self.store.ensure_prune_job().await {
            tracing::warn!(error = %err, "backstop: could not check the retention job");
        }
        if let (Some(metrics), Ok(dead)) = (&self.metrics, self.store.count_failed_jobs().await) {
            metrics.jobs_dead.set(dead);
        }
    }

    /// Runs every job due now, as many at once as the slots allow, claiming again as each
    /// ends, and returns how many ran once nothing is due or running (a job that queues a
    /// successor due at once, a retention slice, is run too). For tests and tools: `run`
    /// never waits for the jobs it starts.
    pub async fn run_due_jobs(&self) -> anyhow::Result<usize> {
        let mut in_hand = InHand::new(self.config.tick_slots, self.config.other_slots);
        let mut ran = 0;
        loop {
            match self.start_due_jobs(&mut in_hand).await {
                Ok(started) => ran += started,
                Err(err) => {
                    in_hand.finish().await;
                    return Err(err.into());
                }
            }
            match in_hand.tasks.join_next().await {
                Some(done) => reaped(done),
                None => return Ok(ran),
            }
        }
    }

    /// Claims as many due jobs as there are free slots of each class and starts each in a
    /// task of its own that holds its slot; returns how many started.
    async fn start_due_jobs(&self, in_hand: &mut InHand) -> Result<usize, StoreError> {
        let free = in_hand.free();
        if free.queue_ticks == 0 && free.others == 0 {
            return Ok(0);
        }
        let jobs = self.store.claim_jobs(free, self.config.lease).await?;
        let started = jobs.len();
        for job in jobs {
            let queue_tick = job.kind == JobKind::QueueTick.as_str();
            let runner = self.clone();
            in_hand.start(queue_tick, async move { runner.run_one(&job).await });
        }
        Ok(started)
    }

    #[tracing::instrument(skip_all, fields(job = job.id, kind = %job.kind, sale = ?job.sale_id, attempt = job.attempts))]
    async fn run_one(&self, job: &Job) {
        self.observe_lag(job);
        let outcome = tokio::select! {
            outcome = self.handler.run(job) => outcome,
            never = self.keep_lease(job) => match never {},
        };
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
                let mut delay = backoff(
                    self.config.base_backoff,
                    self.config.max_backoff,
                    job.attempts,
                );
                if job.kind == JobKind::QueueTick.as_str()
                    || job.kind == JobKind::RaffleTick.as_str()
                {
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

    /// The job's heartbeat: extends its lease every third of the lease for as long as the
    /// job runs (the caller drops it when the job ends). A lost lease is logged and no longer
    /// extended; the job still finishes (jobs are idempotent), but another runner may have
    /// taken it, and its completion will not count.
    async fn keep_lease(&self, job: &Job) -> Infallible {
        let every = (self.config.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            match self.store.extend_job_lease(job, self.config.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "lost the job's lease (it ran out and another runner took the job, or \
                         the job is gone); it may run twice"
                    );
                    return std::future::pending().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not extend the job's lease; trying again")
                }
            }
        }
    }

    /// How long to sleep before the next claim: until the next job of a class with a free
    /// slot is due, at most the poll interval. With every slot taken, the poll interval (a
    /// job ending wakes the loop first).
    async fn sleep_time(&self, free: FreeSlots) -> Duration {
        if free.queue_ticks == 0 && free.others == 0 {
            return self.config.poll_interval;
        }
        match self.store.next_job_due_in(free).await {
            Ok(Some(due_in)) => due_in.min(self.config.poll_interval),
            Ok(None) | Err(_) => self.config.poll_interval,
        }
    }

    /// The runner's ear (the store's one LISTEN loop): any notification on the jobs
    /// channel wakes the loop, and so does listening (again), so a job queued before the
    /// LISTEN was registered, or while it was away, is claimed at once all the same.
    fn listen(
        &self,
        woken: Arc<Notify>,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let listen = Listen {
            channel: JOBS_CHANNEL,
            name: "job runner",
            meanwhile: "the runner polls",
        };
        async move { store.listen(listen, shutdown, |_| woken.notify_one()).await }
            .in_current_span()
    }
}
