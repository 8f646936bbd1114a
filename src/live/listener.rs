//! The hub's ear: one `LISTEN` connection per instance on the sale-changes channel, each
//! notification waking that sale's refresher. It must survive the database going away
//! without noise: it backs off, logs the outage once and the recovery once, and checks a
//! silent connection itself (sqlx sets no TCP keepalive).

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;

use super::{LiveHub, SALE_CHANGES_CHANNEL};

/// The listener's first pause after losing the database; it doubles up to
/// [`LISTEN_RETRY_MAX`].
const LISTEN_RETRY_MIN: Duration = Duration::from_secs(1);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the LISTEN connection may stay silent before it is asked to answer.
const LISTEN_CHECK_EVERY: Duration = Duration::from_secs(15);
const LISTEN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl LiveHub {
    /// Listens for sale changes until `stop`. Losing the database does not end it: it
    /// tries again after a pause that grows from 1 s to 30 s (jittered), and logs the
    /// outage once and the recovery once. Meanwhile the streams still get every change
    /// from their own refresh, at most `refresh_every` late.
    pub async fn run_listener(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut outage: Option<Instant> = None;
        let mut pause = LISTEN_RETRY_MIN;
        loop {
            let failure = match self.subscribe_to_changes().await {
                Ok(listener) => {
                    if let Some(since) = outage.take() {
                        let down_s = since.elapsed().as_secs();
                        tracing::info!(down_s, "live listener: listening again");
                    }
                    pause = LISTEN_RETRY_MIN;
                    match self.listen(listener, &mut stop).await {
                        Ok(()) => return Ok(()),
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            if outage.is_none() {
                outage = Some(Instant::now());
                tracing::warn!(
                    error = format!("{failure:#}"),
                    "live listener: lost the database; retrying quietly (streams refresh on \
                     their own meanwhile)"
                );
            } else {
                tracing::debug!(error = format!("{failure:#}"), "live listener: still down");
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64() / 2.0)) => {}
            }
            pause = (pause * 2).min(LISTEN_RETRY_MAX);
        }
    }

    /// A LISTEN connection on the sale-changes channel.
    async fn subscribe_to_changes(&self) -> anyhow::Result<PgListener> {
        let mut listener = PgListener::connect_with(self.inner.store.session_pool()).await?;
        listener.listen(SALE_CHANGES_CHANNEL).await?;
        Ok(listener)
    }

    /// Hands each notification to its sale's refresher until `stop` (`Ok`) or until the
    /// connection fails (`Err`). A connection silent for [`LISTEN_CHECK_EVERY`] must answer
    /// a query within [`LISTEN_CHECK_TIMEOUT`]: sqlx sets no TCP keepalive, so this is how a
    /// half-open socket (a failover that left no reset behind) is found.
    async fn listen(
        &self,
        mut listener: PgListener,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // Whatever changed while nobody listened.
        self.wake_all();
        loop {
            let received = tokio::select! {
                _ = stop.changed() => return Ok(()),
                received = tokio::time::timeout(LISTEN_CHECK_EVERY, listener.try_recv()) => received,
            };
            match received {
                Ok(received) => match received? {
                    Some(notification) => {
                        self.inner.metrics.live_notifications.inc();
                        if let Ok(sale_id) = Uuid::parse_str(notification.payload()) {
                            self.wake(sale_id);
                        }
                    }
                    // The connection was lost and made again: what came between is lost.
                    None => self.wake_all(),
                },
                Err(_) => {
                    let check = sqlx::query("SELECT 1").execute(&mut listener);
                    tokio::time::timeout(LISTEN_CHECK_TIMEOUT, check)
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!("the LISTEN connection stopped answering")
                        })??;
                }
            }
        }
    }
}
