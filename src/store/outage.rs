//! Whether the database is known to be down, and the one probe that finds out when it is
//! back.
//!
//! While it is down, every call that needs a pooled connection is refused at once with
//! [`StoreError::Down`]: a 503 whose `Retry-After` grows with the outage and is jittered,
//! so that clients neither hammer a dead database nor all come back in the same second.
//! Requests do not each wait on the pool and try to connect: one probe per process (per
//! [`Outage`], shared by the main and the reserved pool) connects on its own, about every
//! second, and clears the state once the database answers as a writable primary.
//!
//! Only the probe decides "down". A request whose wait for a connection fails merely asks
//! it to look ([`Outage::suspect`]): a pool exhausted by a burst is not an outage, and the
//! probe, connecting outside the pool, tells the two apart (a probe that found the database
//! well is not repeated for a second, so a burst costs one connection a second at most).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use super::{StoreError, route};

/// The probe's first pause after a failed look; it doubles up to [`PROBE_MAX_PAUSE`], so a
/// database back after a failover is noticed within about two seconds.
const PROBE_MIN_PAUSE: Duration = Duration::from_millis(500);
const PROBE_MAX_PAUSE: Duration = Duration::from_secs(2);
/// How long one look (connect and one query) may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a look that found the database well, suspicions are ignored this long.
const PROBE_COOLDOWN: Duration = Duration::from_secs(1);

/// The shared view of an outage; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Outage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where the probe connects: the pool's own options.
    options: Arc<PgConnectOptions>,
    /// Read on every acquire: the one check on the hot path.
    down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the probe first failed to reach the database, while it still fails.
    down_since: Option<Instant>,
    probing: bool,
    /// When a look last found the database well.
    last_well: Option<Instant>,
}

impl Outage {
    pub(super) fn new(options: Arc<PgConnectOptions>) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                down: AtomicBool::new(false),
                state: Mutex::default(),
            }),
        }
    }

    /// The answer for a call made while the database is known to be down, if it is.
    pub(super) fn refusal(&self) -> Option<StoreError> {
        if !self.inner.down.load(Ordering::Relaxed) {
            return None;
        }
        let down_for = lock(&self.inner.state)
            .down_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        Some(StoreError::Down {
            retry_after: retry_after(down_for),
        })
    }

    /// A failure that may mean the database is gone: starts the probe, unless it runs
    /// already or found the database well within [`PROBE_COOLDOWN`].
    pub(super) fn suspect(&self) {
        let mut state = lock(&self.inner.state);
        if state.probing
            || state
                .last_well
                .is_some_and(|at| at.elapsed() < PROBE_COOLDOWN)
        {
            return;
        }
        state.probing = true;
        drop(state);
        tokio::spawn(probe(Arc::downgrade(&self.inner)));
    }
}

/// Seconds to ask a client to wait: 2 at first, one more for every 10 s of outage up to 5,
/// plus up to as much again at random.
fn retry_after(down_for: Duration) -> u64 {
    let base = (2 + down_for.as_secs() / 10).min(5);
    base + fastrand::u64(0..=base)
}

/// Looks at the database until it answers as a writable primary, marking it down (once)
/// while it does not. Ends early when no store uses this outage any more.
async fn probe(outage: Weak<Inner>) {
    let mut pause = PROBE_MIN_PAUSE;
    loop {
        let Some(inner) = outage.upgrade() else {
            return;
        };
        if record(&inner, look(&inner.options).await) {
            return;
        }
        drop(inner);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PROBE_MAX_PAUSE);
    }
}

/// Records what a look found; true when the database is well (the probe is done).
fn record(inner: &Inner, look: Result<(), String>) -> bool {
    let mut state = lock(&inner.state);
    match look {
        Ok(()) => {
            state.probing = false;
            state.last_well = Some(Instant::now());
            if let Some(since) = state.down_since.take() {
                inner.down.store(false, Ordering::Relaxed);
                let down_s = since.elapsed().as_secs_f64();
                tracing::info!(down_s, "database reachable again: serving");
            }
            return true;
        }
        Err(reason) if state.down_since.is_none() => {
            state.down_since = Some(Instant::now());
            inner.down.store(true, Ordering::Relaxed);
            tracing::warn!(
                reason,
                "database down: answering 503 at once until the probe reaches it again"
            );
        }
        Err(reason) => tracing::debug!(reason, "database still down"),
    }
    false
}

/// One look: a connection of its own (not the pool's, which may only be busy) that must
/// answer that it takes writes within [`PROBE_TIMEOUT`].
async fn look(options: &PgConnectOptions) -> Result<(), String> {
    let attempt = async {
        let mut conn = PgConnection::connect_with(options)
            .await
            .map_err(|err| err.to_string())?;
        let writable = route::is_writable(&mut conn).await;
        let _ = conn.close().await;
        match writable {
            Ok(true) => Ok(()),
            Ok(false) => Err("the server is read-only (a standby?)".to_string()),
            Err(err) => Err(err.to_string()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_starts_at_2_to_4_s_and_grows_to_5_to_10_s() {
        for _ in 0..100 {
            assert!((2..=4).contains(&retry_after(Duration::ZERO)));
            assert!((3..=6).contains(&retry_after(Duration::from_secs(15))));
            assert!((5..=10).contains(&retry_after(Duration::from_secs(600))));
        }
    }
}
