//! Configuration, from flags or the environment (each flag names its variable).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | unset: embedded cluster under `DATA_DIR` | Postgres to use |
//! | `DATABASE_POOLER` | `none` | `transaction`: `DATABASE_URL` leads through a transaction-mode pooler (pgbouncer) |
//! | `DATABASE_SESSION_URL` | `DATABASE_URL` | a direct session for LISTEN and migrations (needed with a pooler) |
//! | `DATA_DIR` | `.data` | where the embedded cluster keeps its data |
//! | `HOST` / `PORT` | `127.0.0.1` / `8080` | where to listen |
//! | `ADMIN_API_KEY` | development default, with a warning | bearer key of the admin API |
//! | `DB_POOL_SIZE` | 10 | connections in the pool of the HTTP routes |
//! | `DB_RESERVED_POOL_SIZE` | 3 | connections kept for the job runner and the health check |
//! | `DB_TIMEOUT_MS` | 4000 | a purchase's or join's answer timeout (then 503); every request's deadline is 1 s more |
//! | `MAX_IN_FLIGHT` | 10000 | requests handled at once; past it a 503 at once |
//! | `MAX_BODY_BYTES` | 16384 | largest request body; larger is 413 |
//! | `ALLOW_UNVERIFIED_BUYERS` | false | allow a non-loopback bind without `BUYER_TOKEN_SECRET` |
//! | `RATE_LIMIT_PER_USER` / `RATE_LIMIT_PER_USER_BURST` | 1 / 5 | buyer writes per second per user, 0 = off |
//! | `RATE_LIMIT_PER_IP` / `RATE_LIMIT_PER_IP_BURST` | 0 / 50 | API requests per second per client IP, 0 = off |
//! | `TRUST_FORWARDED_FOR` | false | take the client IP from `X-Forwarded-For` (behind a proxy) |
//! | `GROUP_COMMIT` | true | batch concurrent instant purchases of a sale into one statement |
//! | `SALE_VIEW_CACHE_MS` | 100 | most age of a cached public sale view (at most 1000); 0 = off |
//! | `WORKER_POLL_MS` | 1000 | longest sleep of the job runner between polls |
//! | `BUYER_TOKEN_SECRET` | unset: no buyer identity check, with a warning | HS256 secret of buyer JWTs |
//! | `BUYER_TOKEN_AUDIENCE` / `BUYER_TOKEN_ISSUER` | unset | `aud` / `iss` buyer tokens must carry |
//! | `MIGRATE_ON_START` | true | run the migrations at start-up (else `flashsale migrate`) |
//! | `DB_STARTUP_WAIT_MS` | 60000 | how long start-up waits for a database that does not answer |
//! | `SHUTDOWN_DELAY_MS` / `SHUTDOWN_DRAIN_MS` | 0 / 10000 | after SIGTERM: serve while unready, then let requests finish |
//! | `METRICS_TOKEN` | unset: `/metrics` open | bearer token `/metrics` requires |
//! | `METRICS_REFRESH_MS` | 5000 | how often the waiting rooms are read for the metrics |
//! | `MAX_STREAMS_PER_CLIENT` | 1000 | live streams one client (IP, IPv6 /64) may hold; 0 = no cap |
//! | `WEBHOOK_ALLOWED_NETWORKS` | empty | internal CIDRs webhooks may reach (else refused) |
//! | `WEBHOOK_SECRET_KEY` / `_PREVIOUS` | unset: secrets stored plain | key sealing webhook secrets at rest |
//! | `LOG_FORMAT` | `text` | `text` or `json` |
//! | `RUST_LOG` | `info` | log filter |

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

mod exposure;
mod lifecycle;

pub use lifecycle::Lifecycle;

/// The admin key used when none is configured: fine on a laptop, loudly warned about, and
/// refused on any address but loopback.
pub const DEV_ADMIN_KEY: &str = "dev-admin-key";
/// Shortest admin key or buyer-token secret accepted on a non-loopback address: 32 bytes,
/// the size of the HMAC-SHA256 key behind the tokens.
pub const MIN_SECRET_BYTES: usize = 32;

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_string()))
}

/// A secret setting's value, trimmed; `None` when unset or blank.
fn trimmed(value: &Option<SecretString>) -> Option<String> {
    value
        .as_ref()
        .map(|value| value.expose_secret().trim().to_string())
        .filter(|value| !value.is_empty())
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "Flash-sale backend on PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve,
    /// Run the migrations against DATABASE_URL and exit (a deploy step or Kubernetes Job,
    /// before instances start with MIGRATE_ON_START=false).
    Migrate,
    /// Print the OpenAPI document (JSON) to stdout.
    Openapi,
    /// Print a buyer token for USER_ID signed with BUYER_TOKEN_SECRET (for trying the API
    /// from Swagger UI; a shop signs its own tokens the same way).
    Token {
        user_id: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
}

/// Secrets (`DATABASE_URL`, which may hold a password, the admin key and the token secret)
/// are [`SecretString`]s: `Debug` prints them as `[REDACTED]`, so no log line can show one.
#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// Postgres URL; when unset, a private cluster is started under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: Option<SecretString>,

    /// What stands between the service and DATABASE_URL: `none` (Postgres itself, or a
    /// session-mode pooler), or `transaction` for a pooler in transaction mode (pgbouncer
    /// `pool_mode = transaction`): each unit of work then runs in an explicit transaction
    /// of unnamed statements, with the server timeouts set by `SET LOCAL`. Needs
    /// DATABASE_SESSION_URL.
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value_t = DatabasePooler::None)]
    pub database_pooler: DatabasePooler,

    /// Postgres URL of a real server session, for what a transaction-mode pooler cannot
    /// carry: LISTEN (live streams, job wake-ups) and migrations (`flashsale migrate` too).
    /// Unset: DATABASE_URL.
    #[arg(long, env = "DATABASE_SESSION_URL", hide_env_values = true, value_parser = secret)]
    pub database_session_url: Option<SecretString>,

    /// Data folder of the embedded cluster.
    #[arg(long, env = "DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,

    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Bearer key for /api/v1/admin routes.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true, value_parser = secret)]
    pub admin_api_key: Option<SecretString>,

    /// Connections in the pool the HTTP routes use.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

    /// Connections kept apart for the job runner (admission, expiry) and the health check,
    /// so a flood of buyers cannot starve them.
    #[arg(long, env = "DB_RESERVED_POOL_SIZE", default_value_t = 3)]
    pub db_reserved_pool_size: u32,

    /// How long a purchase or join waits for its answer (ms), the answer timeout, before it
    /// is answered 503 ("outcome unknown, retry" once its statement was sent). Every
    /// request, on any route, has a deadline a second longer, past which the edge answers
    /// 503 itself (`EdgeLimits::request_deadline`).
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = 4000)]
    pub db_timeout_ms: u64,

    /// Requests handled at once; one more is answered 503 at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,

    /// Largest request body in bytes; a larger one is answered 413 without being read.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Allow a non-loopback address without BUYER_TOKEN_SECRET (buyers are then whoever
    /// they say they are).
    #[arg(long, env = "ALLOW_UNVERIFIED_BUYERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unverified_buyers: bool,

    /// Buyer write requests per second per user (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_PER_USER", default_value_t = 1)]
    pub rate_limit_per_user: u32,

    #[arg(long, env = "RATE_LIMIT_PER_USER_BURST", default_value_t = 5)]
    pub rate_limit_per_user_burst: u32,

    /// API requests per second per client IP (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_PER_IP", default_value_t = 0)]
    pub rate_limit_per_ip: u32,

    #[arg(long, env = "RATE_LIMIT_PER_IP_BURST", default_value_t = 50)]
    pub rate_limit_per_ip_burst: u32,

    /// Take the client IP from the last `X-Forwarded-For` entry (set only behind a proxy
    /// that appends it; otherwise clients could pick their own IP).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,

    /// Decide concurrent instant purchases of one sale together (one statement, one commit).
    #[arg(long, env = "GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_commit: bool,

    /// How old (ms) a cached public sale view may be; 0 turns the cache off.
    #[arg(long, env = "SALE_VIEW_CACHE_MS", default_value_t = 100)]
    pub sale_view_cache_ms: u64,

    /// Longest sleep of the job runner between polls, in milliseconds.
    #[arg(long, env = "WORKER_POLL_MS", default_value_t = 1000)]
    pub worker_poll_ms: u64,

    /// Webhook requests in flight at once per endpoint, per instance: one slow endpoint
    /// uses at most this many, and never holds up another endpoint or a purchase.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 16)]
    pub webhook_concurrency: usize,

    /// Longest wait for a webhook receiver's TCP/TLS connection, in milliseconds.
    #[arg(long, env = "WEBHOOK_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub webhook_connect_timeout_ms: u64,

    /// Longest wait for a webhook receiver's answer (after connecting), in milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10000)]
    pub webhook_timeout_ms: u64,

    /// The first webhook retry waits about this long (ms); each attempt doubles it.
    #[arg(long, env = "WEBHOOK_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub webhook_backoff_base_ms: u64,

    /// The longest wait between two attempts of a webhook delivery, in seconds.
    #[arg(long, env = "WEBHOOK_BACKOFF_MAX_SECS", default_value_t = 3600)]
    pub webhook_backoff_max_secs: u64,

    /// Internal address ranges (comma-separated CIDRs) webhooks may reach anyway; by
    /// default none: loopback, private, link-local (the cloud metadata address) and unique
    /// local addresses are refused. For example 127.0.0.0/8 for a receiver on this host in
    /// development.
    #[arg(long, env = "WEBHOOK_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,

    /// Key sealing webhook secrets at rest: 64 hex characters (32 bytes). Unset: secrets
    /// are stored plain (warned at start).
    #[arg(long, env = "WEBHOOK_SECRET_KEY", hide_env_values = true, value_parser = secret)]
    pub webhook_secret_key: Option<SecretString>,

    /// The previous key during a key rotation: secrets still sealed under it open, and are
    /// sealed again under WEBHOOK_SECRET_KEY at start-up.
    #[arg(long, env = "WEBHOOK_SECRET_KEY_PREVIOUS", hide_env_values = true, value_parser = secret)]
    pub webhook_secret_key_previous: Option<SecretString>,

    /// How long a delivery is retried (exponential backoff with jitter) before it is marked
    /// failed, in seconds (default 24 h).
    #[arg(long, env = "WEBHOOK_RETRY_FOR_SECS", default_value_t = 86_400)]
    pub webhook_retry_for_secs: u64,

    /// How long events and finished webhook deliveries are kept, in seconds (default 7
    /// days). Never less than the retry window: a pending delivery keeps its event anyway.
    /// Sales, purchases and holds are never pruned.
    #[arg(long, env = "EVENT_RETENTION_SECS", default_value_t = 604_800)]
    pub event_retention_secs: u64,

    /// Live streams (buyer and public Server-Sent Events) one instance serves at once; past
    /// it, new ones get 503 `TOO_MANY_STREAMS`. Each open stream holds a socket, so the
    /// process's open-file limit (`ulimit -n`) must be above it.
    #[arg(long, env = "MAX_LIVE_STREAMS", default_value_t = 20_000)]
    pub max_live_streams: usize,

    /// Of those, the streams one client (an IP address, an IPv6 /64) may hold at once; past
    /// it, its new ones get 429 `TOO_MANY_STREAMS`. 0 = no per-client cap. Behind a proxy,
    /// set TRUST_FORWARDED_FOR, or every client is the proxy.
    #[arg(long, env = "MAX_STREAMS_PER_CLIENT", default_value_t = 1_000)]
    pub max_streams_per_client: usize,

    /// The longest a watched sale goes without a read when no change is notified, in
    /// milliseconds: it bounds how late a stream hears of what has no event (a sale ending
    /// by the clock, the queue's length) or of a lost notification.
    #[arg(long, env = "LIVE_REFRESH_MS", default_value_t = 1_000)]
    pub live_refresh_ms: u64,

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// HS256 secret of buyer tokens; when set, buyer routes require a JWT whose `sub` is
    /// the user. Unset: the userId is taken at its word (development only).
    #[arg(long, env = "BUYER_TOKEN_SECRET", hide_env_values = true, value_parser = secret)]
    pub buyer_token_secret: Option<SecretString>,

    /// When set, buyer tokens must carry this `aud`.
    #[arg(long, env = "BUYER_TOKEN_AUDIENCE")]
    pub buyer_token_audience: Option<String>,

    /// When set, buyer tokens must carry this `iss`.
    #[arg(long, env = "BUYER_TOKEN_ISSUER")]
    pub buyer_token_issuer: Option<String>,

    #[command(flatten)]
    pub lifecycle: Lifecycle,
}

/// `DATABASE_POOLER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatabasePooler {
    None,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// How long events and finished deliveries are kept: never less than the retry window
    /// (a pending delivery keeps its event anyway, this keeps the finished ones listable).
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_secs.max(self.webhook_retry_for_secs))
    }

    /// The admin key, and whether it is the built-in development default.
    pub fn admin_key(&self) -> (String, bool) {
        match trimmed(&self.admin_api_key) {
            Some(key) => (key, false),
            None => (DEV_ADMIN_KEY.to_string(), true),
        }
    }

    /// The buyer-token secret, when one is set and not empty.
    pub fn buyer_token_secret(&self) -> Option<String> {
        self.buyer_token_secret
            .as_ref()
            .map(|secret| secret.expose_secret().to_string())
            .filter(|secret| !secret.is_empty())
    }

    /// The webhook secret keys (current, previous), when set and not empty.
    pub fn webhook_secret_keys(&self) -> (Option<String>, Option<String>) {
        (
            trimmed(&self.webhook_secret_key),
            trimmed(&self.webhook_secret_key_previous),
        )
    }

    /// The database URL, when one is configured.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(|url| url.expose_secret())
    }

    /// The URL of a real server session (LISTEN, migrations), when one is configured apart
    /// from DATABASE_URL.
    pub fn database_session_url(&self) -> Option<&str> {
        self.database_session_url
            .as_ref()
            .map(|url| url.expose_secret())
    }

    /// The URL migrations run on: DATABASE_SESSION_URL, else DATABASE_URL.
    pub fn migration_url(&self) -> Option<&str> {
        self.database_session_url().or(self.database_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["flashsale"];
        argv.extend(args);
        Cli::try_parse_from(argv).expect("parses").config
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = config(&[
            "--admin-api-key",
            "admin-secret-value",
            "--buyer-token-secret",
            "token-secret-value",
            "--database-url",
            "postgres://u:db-password@h/d",
            "--database-session-url",
            "postgres://u:session-password@h/d",
        ]);
        let printed = format!("{config:?}");
        for secret in [
            "admin-secret-value",
            "token-secret-value",
            "db-password",
            "session-password",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
