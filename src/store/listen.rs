//! The one LISTEN loop of the service, for every listener (the job runner's wake-ups, the
//! live hub's sale changes): a connection of its own on the session pool that survives the
//! database going away without noise. It tries again after a pause that grows from 1 s to
//! 30 s (jittered), warns when an outage starts (then stays quiet for [`QUIET_FOR`]) and
//! says once when it listens again, and checks a silent connection itself (sqlx sets no
//! TCP keepalive). Notifications sent while nobody listened are lost: the listener hears a
//! [`Heard::Gap`] and re-reads whatever they would have said.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::Store;
use crate::domain::{backoff, jittered};
use crate::telemetry::Throttle;

/// The first pause after losing the database; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the LISTEN connection may stay silent before it is asked to answer.
const CHECK_EVERY: Duration = Duration::from_secs(15);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// After an outage's warning, further outages of this listener are logged at debug level
/// for this long (a flapping connection would otherwise warn on every reconnect).
const QUIET_FOR: Duration = Duration::from_secs(30);

/// One LISTEN: the channel, and who listens (for the logs).
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub channel: &'static str,
    /// Who listens, in its log lines ("live listener", "job runner").
    pub name: &'static str,
    /// What covers for the listener while it is away, in the outage's warning.
    pub meanwhile: &'static str,
}

/// What a listener hears.
#[derive(Debug)]
pub enum Heard<'a> {
    /// A notification on the channel: its payload.
    Notification(&'a str),
    /// Listening, for the first time or again after the connection was lost: whatever was
    /// notified before is lost, so whatever depends on it must be read again.
    Gap,
}

impl Store {
    /// Listens on `listen.channel` until `stop`, handing what it hears to `heard`. Losing
    /// the database does not end it (see the module doc).
    pub async fn listen(
        &self,
        listen: Listen,
        mut stop: watch::Receiver<bool>,
        mut heard: impl FnMut(Heard<'_>),
    ) {
        let Listen {
            name, meanwhile, ..
        } = listen;
        let warned = Throttle::new(QUIET_FOR);
        let mut outage: Option<Instant> = None;
        let mut failures = 0;
        loop {
            let failure = match self.subscribe(listen.channel).await {
                Ok(listener) => {
                    if let Some(since) = outage.take() {
                        let down_s = since.elapsed().as_secs();
                        tracing::info!(listener = name, down_s, "LISTEN: listening again");
                    }
                    failures = 0;
                    heard(Heard::Gap);
                    match hear(listener, &mut stop, &mut heard).await {
                        Ok(()) => return,
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            failures += 1;
            let error = failure.to_string();
            if outage.is_none() && warned.ready() {
                tracing::warn!(
                    listener = name,
                    error,
                    meanwhile,
                    "LISTEN: lost the database; retrying quietly"
                );
            } else {
                tracing::debug!(listener = name, error, "LISTEN: still down");
            }
            outage.get_or_insert_with(Instant::now);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(jittered(backoff(RETRY_MIN, RETRY_MAX, failures))) => {}
            }
        }
    }

    /// A LISTEN connection on `channel`.
    async fn subscribe(&self, channel: &str) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(self.session_pool()).await?;
        listener.listen(channel).await?;
        Ok(listener)
    }
}

/// Hands each notification to `heard` until `stop` (`Ok`) or until the connection fails
/// (`Err`). A connection silent for [`CHECK_EVERY`] must answer a query within
/// [`CHECK_TIMEOUT`]: sqlx sets no TCP keepalive, so this is how a half-open socket (a
/// failover that left no reset behind) is found.
async fn hear(
    mut listener: PgListener,
    stop: &mut watch::Receiver<bool>,
    heard: &mut impl FnMut(Heard<'_>),
) -> Result<(), sqlx::Error> {
    loop {
        let received = tokio::select! {
            _ = stop.changed() => return Ok(()),
            received = tokio::time::timeout(CHECK_EVERY, listener.try_recv()) => received,
        };
        match received {
            Ok(received) => match received? {
                Some(notification) => heard(Heard::Notification(notification.payload())),
                // The connection was lost and made again: what came between is lost.
                None => heard(Heard::Gap),
            },
            Err(_) => {
                let check = sqlx::query("SELECT 1").execute(&mut listener);
                tokio::time::timeout(CHECK_TIMEOUT, check)
                    .await
                    .map_err(|_| {
                        sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the LISTEN connection stopped answering",
                        ))
                    })??;
            }
        }
    }
}
