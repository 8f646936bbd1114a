//! The jobs the service queues for itself.
//!
//! - `sync_sale_state`: records a sale's state changes (active; ended by sell-out, time or
//!   cancel). Queued at the start and end, on the last unit and on cancel; it records
//!   whatever has happened by then, each change once, so running it twice or late is
//!   harmless. The public state never waits for it: it is derived on every read.
//! - `queue_tick`: runs a queued sale's waiting room (draw the pre-queue from the opening,
//!   a bounded slice per tick, expire holds, admit buyers) and schedules the next tick while
//!   the queue needs ticking: at once while a tick was bounded by its batch, else at the next
//!   hold expiry or after [`TICK_INTERVAL`], whichever is first. Joins and releases wake it
//!   earlier.
//! - `raffle_tick`: runs a raffle from the end of its entry window (close the entries, rank
//!   the entrants a slice per tick, expire holds, select the next entrants in draw order,
//!   tell the rest `not_selected`), then every [`TICK_INTERVAL`] or at the next hold
//!   expiry until nothing is left to do. A withdrawal of a hold or the last confirm wakes
//!   it earlier.
//! - `prune_events`: retention: removes events and finished webhook deliveries older than
//!   the retention time, at most [`PRUNE_SLICE`] rows a run so that no run holds a slot
//!   for long; it queues itself again due at once while a slice came back full, else after
//!   [`PRUNE_INTERVAL`].

use anyhow::Context;

use super::JobHandler;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::{Job, JobKind, PRUNE_INTERVAL, Store, TICK_INTERVAL};

/// Holds granted (and holds expired) per tick at most; a full batch ticks again at once.
pub const ADMIT_BATCH: i64 = 500;

/// Rows one retention run removes at most (five statements of 10,000): a backlog of
/// millions is worked off in runs of a few seconds, each a job of its own.
pub const PRUNE_SLICE: i64 = 50_000;

/// Handles the jobs the service itself queues.
#[derive(Clone)]
pub struct ServiceJobs {
    store: Store,
    /// How long events and finished deliveries are kept.
    retention: Duration,
    /// Rows one retention run removes at most ([`PRUNE_SLICE`]; tests make it small).
    prune_slice: i64,
    metrics: Option<Metrics>,
}

impl ServiceJobs {
    pub fn new(store: Store, retention: Duration) -> Self {
        Self {
            store,
            retention,
            prune_slice: PRUNE_SLICE,
            metrics: None,
        }
    }

    /// Removes at most `rows` rows per retention run instead of [`PRUNE_SLICE`].
    pub fn with_prune_slice(mut self, rows: i64) -> Self {
        self.prune_slice = rows.max(1);
        self
    }

    /// Records the admission lag in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn prune_events(&self) -> anyhow::Result<()> {
        let pruned = self
            .store
            .prune_events(self.retention, self.prune_slice)
            .await
            .context("Failed to prune events")?;
        if pruned.events > 0 || pruned.deliveries > 0 {
            tracing::info!(
                events = pruned.events,
                deliveries = pruned.deliveries,
                more = pruned.more,
                "retention: pruned"
            );
        }
        // A full slice may have left more: the next slice is a new job, due at once, so any
        // runner's free slot takes it while this one's slot goes back to other work.
        let next = if pruned.more {
            Duration::ZERO
        } else {
            PRUNE_INTERVAL
        };
        self.store
            .schedule_prune_job(next)
            .await
            .context("Failed to schedule the next retention run")?;
        Ok(())
    }

    async fn sync_sale_state(&self, sale_id: uuid::Uuid) -> anyhow::Result<()> {
        let sale = self
            .store
            .record_state_changes(sale_id)
            .await
            .context("Failed to record the sale's state changes")?;
        if let Some(sale) = sale {
            tracing::info!(sale = %sale.sku, state = sale.state().as_str(), "sale state recorded");
        }
        Ok(())
    }

    async fn queue_tick(&self, sale_id: uuid::Uuid, lag_seconds: f64) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let report = self
            .store
            .queue_tick(sale_id, ADMIT_BATCH)
            .await
            .context("Failed to run the queue tick")?;
        if let (Some(metrics), true) = (&self.metrics, report.admitted > 0) {
            // Due (a unit came back, a buyer joined, the sale opened) to committed.
            metrics
                .admission_lag
                .observe(lag_seconds + started.elapsed().as_secs_f64());
        }
        if report.admitted > 0 || report.expired > 0 || report.shuffled.is_some() {
            tracing::info!(
                admitted = report.admitted,
                expired = report.expired,
                shuffled = report.shuffled,
                "queue tick"
            );
        }
        if report.admitting || report.expired >= ADMIT_BATCH || report.drawing {
            self.store.schedule_queue_tick(sale_id, None).await?;
        } else if report.needs_tick {
            self.store
                .schedule_next_queue_tick(sale_id, TICK_INTERVAL)
                .await
                .context("Failed to schedule the next queue tick")?;
        }
        Ok(())
    }
}

impl ServiceJobs {
    async fn raffle_tick(&self, sale_id: uuid::Uuid) -> anyhow::Result<()> {
        let report = self
            .store
            .raffle_tick(sale_id, ADMIT_BATCH)
            .await
            .context("Failed to run the raffle tick")?;
        if report.ranked.is_some()
            || report.expired > 0
            || report.selected > 0
            || report.not_selected > 0
        {
            tracing::info!(
                ranked = report.ranked,
                expired = report.expired,
                selected = report.selected,
                not_selected = report.not_selected,
                "raffle tick"
            );
        }
        let full = [report.expired, report.selected, report.not_selected]
            .iter()
            .any(|done| *done >= ADMIT_BATCH);
        if let Some(at) = report.opens_draw_at {
            self.store.schedule_raffle_tick(sale_id, Some(at)).await?;
        } else if report.drawing || full {
            self.store.schedule_raffle_tick(sale_id, None).await?;
        } else if !report.finished {
            self.store
                .schedule_next_raffle_tick(sale_id, TICK_INTERVAL)
                .await
                .context("Failed to schedule the next raffle tick")?;
        }
        Ok(())
    }
}

impl JobHandler for ServiceJobs {
    async fn run(&self, job: &Job) -> anyhow::Result<()> {
        let kind = JobKind::parse(&job.kind);
        if kind == Some(JobKind::PruneEvents) {
            return self.prune_events().await;
        }
        let Some(sale_id) = job.sale_id else {
            anyhow::bail!("job {} ({}) has no sale", job.id, job.kind);
        };
        match kind {
            Some(JobKind::SyncSaleState) => self.sync_sale_state(sale_id).await,
            Some(JobKind::QueueTick) => self.queue_tick(sale_id, job.lag_seconds).await,
            Some(JobKind::RaffleTick) => self.raffle_tick(sale_id).await,
            Some(JobKind::PruneEvents) | None => anyhow::bail!("unknown job kind {:?}", job.kind),
        }
    }
}
