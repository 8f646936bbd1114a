//! All SQL lives here: sales, purchases, the state-change log, the job queue and the audit.
//!
//! The store knows Postgres and the domain types, never HTTP. Refusals a buyer can cause
//! (sold out, duplicate, ...) are ordinary values; [`StoreError`] is for what went wrong.

mod audit;
mod group_commit;
mod jobs;
mod purchases;
mod queue;
mod sales;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use audit::{AuditCheck, AuditReport};
pub use group_commit::{MAX_BATCH, PurchaseQueue};
pub use jobs::{JOBS_CHANNEL, Job, JobKind, MAX_ATTEMPTS};
pub use purchases::{BatchBuyer, BatchResult, PurchaseOutcome};
pub use queue::{ConfirmOutcome, JoinOutcome, LeaveOutcome, QueueStats, TICK_INTERVAL, TickReport};
pub use sales::{CancelOutcome, SaleEvent};

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another sale already uses this sku.
    #[error("a sale with sku {0:?} already exists")]
    SkuTaken(String),
    /// The sale's window ends before it starts (for example an end in the past with the
    /// default start of now).
    #[error("endsAt must be after startsAt")]
    EndBeforeStart,
    /// The database failed or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A group-commit batch failed; every request in it gets this (the cause is logged
    /// once per request with the message).
    #[error("purchase batch failed: {0}")]
    Batch(String),
    /// The purchase batcher is gone (the service is shutting down).
    #[error("the purchase batcher is not running")]
    Unavailable,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// True when the database answers a trivial query within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(tokio::time::timeout(timeout, query).await, Ok(Ok(_)))
    }
}

/// Opens a pool on `url`. Plans are made for each execution (`force_custom_plan`): a generic
/// plan cached while a table is nearly empty can pick a sequential scan and keep it after the
/// table grows (measured: 900 instead of 13,000 purchases/s).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options
        .application_name("flashsale")
        .options([("plan_cache_mode", "force_custom_plan")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// The name of the constraint a database error violated, if any.
fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    err.as_database_error().and_then(|db| db.constraint())
}

/// Creates `database` on the server at `server_url` unless it exists (embedded cluster and
/// tests). The name is quoted as an identifier.
pub async fn create_database_if_missing(
    server_url: &str,
    database: &str,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        // CREATE DATABASE takes no parameters; the name is quoted above.
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut conn)
            .await;
        // Another instance may have created it between the check and here.
        if let Err(err) = created
            && err.as_database_error().and_then(|db| db.code()).as_deref() != Some("42P04")
        {
            return Err(err);
        }
    }
    conn.close().await
}
