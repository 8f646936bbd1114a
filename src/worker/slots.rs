//! The jobs a runner's loop has in hand, and the slots they hold: queue ticks and the other
//! kinds count against separate limits, so a slow job of one class never takes the slot a
//! job of the other needs. Only the loop that owns an [`InHand`] takes its slots.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};

use crate::store::FreeSlots;

/// The jobs one loop has in hand, each holding a slot of its class until its task ends
/// (a panic or an abort included: the permit goes with the task).
pub(super) struct InHand {
    pub(super) tasks: JoinSet<()>,
    ticks: Arc<Semaphore>,
    others: Arc<Semaphore>,
}

impl InHand {
    /// `tick_slots` queue ticks and `other_slots` jobs of the other kinds at once (at least
    /// one of each).
    pub(super) fn new(tick_slots: usize, other_slots: usize) -> Self {
        Self {
            tasks: JoinSet::new(),
            ticks: Arc::new(Semaphore::new(tick_slots.max(1))),
            others: Arc::new(Semaphore::new(other_slots.max(1))),
        }
    }

    pub(super) fn free(&self) -> FreeSlots {
        let free = |slots: &Semaphore| i64::try_from(slots.available_permits()).unwrap_or(0);
        FreeSlots {
            queue_ticks: free(&self.ticks),
            others: free(&self.others),
        }
    }

    /// Starts `work` in a task of its own that holds a slot of its class (a queue tick's or
    /// another kind's) until it ends.
    pub(super) fn start(
        &mut self,
        queue_tick: bool,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        let slots = if queue_tick {
            &self.ticks
        } else {
            &self.others
        };
        // Always a permit: the claim took no more of a class than `free` said, and only the
        // loop owning this takes them. Were one ever missing, the job would still run.
        let slot = slots.clone().try_acquire_owned().ok();
        self.tasks.spawn(async move {
            work.await;
            drop(slot);
        });
    }

    /// Waits for every job in hand.
    pub(super) async fn finish(&mut self) {
        while let Some(done) = self.tasks.join_next().await {
            reaped(done);
        }
    }
}

/// Logs a job task that panicked: its heartbeat stopped with it, so its lease runs out and
/// the job runs again.
pub(super) fn reaped(done: Result<(), JoinError>) {
    if let Err(err) = done {
        tracing::error!(error = %err, "a job's task died; the job runs again once its lease runs out");
    }
}
