//! Configuration, from flags or the environment (each flag names its variable).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DATABASE_URL` | unset: embedded cluster under `DATA_DIR` | Postgres to use |
//! | `DATA_DIR` | `.data` | where the embedded cluster keeps its data |
//! | `HOST` / `PORT` | `127.0.0.1` / `8080` | where to listen |
//! | `ADMIN_API_KEY` | development default, with a warning | bearer key of the admin API |
//! | `DB_POOL_SIZE` | 10 | connections in the pool |
//! | `RATE_LIMIT_PER_USER` / `RATE_LIMIT_PER_USER_BURST` | 1 / 5 | buyer writes per second per user, 0 = off |
//! | `RATE_LIMIT_PER_IP` / `RATE_LIMIT_PER_IP_BURST` | 0 / 50 | API requests per second per client IP, 0 = off |
//! | `TRUST_FORWARDED_FOR` | false | take the client IP from `X-Forwarded-For` (behind a proxy) |
//! | `GROUP_COMMIT` | true | batch concurrent instant purchases of a sale into one statement |
//! | `SALE_VIEW_CACHE_MS` | 100 | most age of a cached public sale view; 0 = off |
//! | `WORKER_POLL_MS` | 1000 | longest sleep of the job runner between polls |
//! | `BUYER_TOKEN_SECRET` | unset: no buyer identity check, with a warning | HS256 secret of buyer JWTs |
//! | `BUYER_TOKEN_AUDIENCE` / `BUYER_TOKEN_ISSUER` | unset | `aud` / `iss` buyer tokens must carry |
//! | `LOG_FORMAT` | `text` | `text` or `json` |
//! | `RUST_LOG` | `info` | log filter |

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The admin key used when none is configured: fine on a laptop, loudly warned about.
pub const DEV_ADMIN_KEY: &str = "dev-admin-key";

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

#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// Postgres URL; when unset, a private cluster is started under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Data folder of the embedded cluster.
    #[arg(long, env = "DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,

    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,

    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Bearer key for /api/v1/admin routes.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,

    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

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

    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// HS256 secret of buyer tokens; when set, buyer routes require a JWT whose `sub` is
    /// the user. Unset: the userId is taken at its word (development only).
    #[arg(long, env = "BUYER_TOKEN_SECRET", hide_env_values = true)]
    pub buyer_token_secret: Option<String>,

    /// When set, buyer tokens must carry this `aud`.
    #[arg(long, env = "BUYER_TOKEN_AUDIENCE")]
    pub buyer_token_audience: Option<String>,

    /// When set, buyer tokens must carry this `iss`.
    #[arg(long, env = "BUYER_TOKEN_ISSUER")]
    pub buyer_token_issuer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// How buyer tokens are checked.
    pub fn token_settings(&self) -> crate::api::buyer_auth::TokenSettings {
        crate::api::buyer_auth::TokenSettings {
            secret: self.buyer_token_secret.clone().filter(|s| !s.is_empty()),
            audience: self.buyer_token_audience.clone(),
            issuer: self.buyer_token_issuer.clone(),
        }
    }

    /// The admin key, and whether it is the built-in development default.
    pub fn admin_key(&self) -> (String, bool) {
        match self.admin_api_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => (key.to_string(), false),
            _ => (DEV_ADMIN_KEY.to_string(), true),
        }
    }
}
