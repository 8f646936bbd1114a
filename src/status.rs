//! Status that background work keeps and routes read: the job runner's heartbeat, which
//! `/health` checks. A home of its own, so that routes import no worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// A runner that has not finished a round for this long is reported by `/health`.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// When the job runner last finished a round, shared with the health check.
#[derive(Debug, Clone)]
pub struct RunnerHealth {
    started: Instant,
    /// Milliseconds since `started` at the last beat; -1 before the first.
    last_beat_ms: Arc<AtomicI64>,
}

impl Default for RunnerHealth {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_beat_ms: Arc::new(AtomicI64::new(-1)),
        }
    }
}

impl RunnerHealth {
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as i64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the last round finished (since start when none has).
    pub fn since_last_beat(&self) -> Duration {
        let beat = self.last_beat_ms.load(Ordering::Relaxed).max(0) as u64;
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(beat))
    }

    /// False when the runner has not finished a round for `STALL_AFTER`.
    pub fn is_progressing(&self) -> bool {
        self.since_last_beat() < STALL_AFTER
    }
}
