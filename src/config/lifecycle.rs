//! The settings of an instance's life in a deployment: start-up (waiting for the database,
//! migrations), shutdown (the drain) and the metrics endpoint.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use super::secret;

#[derive(Debug, Clone, Args)]
pub struct Lifecycle {
    /// Run the migrations at start-up (serialised across instances). Set false where a
    /// deploy step runs `flashsale migrate` first (a Kubernetes Job).
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// How long start-up retries a database that does not answer yet (ms): a Postgres that
    /// starts after the service (compose, a node reboot) is waited for, not a crash loop.
    #[arg(long, env = "DB_STARTUP_WAIT_MS", default_value_t = 60_000)]
    pub db_startup_wait_ms: u64,

    /// After SIGTERM, how long the instance keeps accepting requests while `/health` answers
    /// 503 (ms), so load balancers take it out before its listener closes.
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,

    /// Then, how long requests in flight get to finish (ms); streams end at once, after a
    /// last message.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 10_000)]
    pub shutdown_drain_ms: u64,

    /// When set, `GET /metrics` requires `Authorization: Bearer <METRICS_TOKEN>`.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true, value_parser = secret)]
    pub metrics_token: Option<SecretString>,

    /// How often the gauges that need the database (the waiting rooms) are read (ms).
    #[arg(long, env = "METRICS_REFRESH_MS", default_value_t = 5_000)]
    pub metrics_refresh_ms: u64,
}

impl Lifecycle {
    pub fn db_startup_wait(&self) -> Duration {
        Duration::from_millis(self.db_startup_wait_ms)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_millis(self.shutdown_drain_ms)
    }

    pub fn metrics_refresh(&self) -> Duration {
        Duration::from_millis(self.metrics_refresh_ms.max(100))
    }

    /// The metrics token, when one is set and not empty.
    pub fn metrics_token(&self) -> Option<String> {
        super::trimmed(&self.metrics_token)
    }
}
