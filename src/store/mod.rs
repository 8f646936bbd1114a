//! All SQL lives here: sales, purchases, the state-change log, the job queue, the audit,
//! the event outbox and the webhook deliveries.
//!
//! The store knows Postgres and the domain types, never HTTP. Refusals a buyer can cause
//! (sold out, duplicate, ...) are ordinary values; [`StoreError`] is for what went wrong.

mod allowlist;
mod audit;
mod batcher;
mod db;
mod deliveries;
mod events;
mod group_commit;
mod jobs;
mod lease;
mod listen;
mod live;
mod migrate;
mod outage;
mod purchases;
mod queue;
mod queue_entry;
mod queue_join;
mod queue_tick;
mod raffle;
mod raffle_enter;
mod raffle_tick;
mod route;
mod sale_refs;
mod sales;
mod secret_box;
mod webhooks;

use std::time::Duration;

use db::Db;
use prometheus::Histogram;
use sqlx::PgPool;

pub use allowlist::{AllowlistChunks, AllowlistOutcome, UploadMode};
pub use audit::{AuditCheck, AuditReport};
pub use deliveries::{AttemptResult, AttemptTally, ClaimedDelivery, DeliveryView, ReplayOutcome};
pub use events::{FeedFilter, Pruned};
pub use group_commit::{MAX_BATCH, PurchaseBatcher};
pub use jobs::{
    FailedJob, FreeSlots, JOBS_CHANNEL, Job, JobKind, MAX_ATTEMPTS, PRUNE_INTERVAL, RequeueOutcome,
};
pub use listen::{Heard, Listen};
pub use live::{ChangePage, EntryChange, EntryChangeKind, LiveQueue, LiveSale};
pub use migrate::{MIGRATOR, create_database_if_missing, migrate, pending_migrations};
pub use purchases::{BatchBuyer, BatchResult, Order, PurchaseOutcome};
pub use queue::{ConfirmOutcome, LeaveOutcome, QueueStats};
pub use queue_join::{JoinBatcher, JoinOutcome, MAX_JOIN_BATCH};
pub use queue_tick::{TICK_INTERVAL, TickReport};
pub use raffle::{RaffleConfirmOutcome, WithdrawOutcome};
pub use raffle_enter::{EnterOutcome, EntryBatcher, MAX_ENTRY_BATCH};
pub use raffle_tick::{RAFFLE_DRAW_SLICE, RaffleTickReport};
pub use route::{ACQUIRE_TIMEOUT, Pooler, SERVER_TIMEOUTS, connect, connect_through};
pub use sales::{CancelOutcome, RemoveOutcome, SaleEvent};
pub use secret_box::{BadKey, SealError, SecretBox};
pub use webhooks::{EndpointTarget, NewEndpoint};

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
    /// The database failed (a fault on our side, not a passing unavailability).
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// The database cannot be reached, timed out, or the pool is exhausted, before anything
    /// was written: nothing happened and a retry is safe.
    #[error("the database is unavailable")]
    Unavailable(#[source] Option<sqlx::Error>),
    /// A write was sent but its answer never came (the connection broke or the call timed
    /// out): it may or may not have committed. Buyer writes are idempotent, so a retry
    /// learns which.
    #[error("the outcome of the write is unknown")]
    OutcomeUnknown,
    /// The database is known to be down (see `outage`): refused at once, without trying.
    /// Retry after `retry_after` seconds.
    #[error("the database is down")]
    Down { retry_after: u64 },
    /// Too many purchases are already waiting for this sale on this instance.
    #[error("too many purchases are waiting")]
    Overloaded,
    /// A group-commit batch (purchases or joins) failed; every request in it gets this
    /// copy (the cause, with its SQLSTATE, is logged once for the batch: see
    /// [`StoreError::log_batch_failure`]).
    #[error("group-commit batch failed: {0}")]
    Batch(String),
    /// A webhook secret sealed at rest cannot be opened (no key, or the wrong one).
    #[error(transparent)]
    Sealed(#[from] SealError),
}

impl From<sqlx::Error> for StoreError {
    /// A failure before or without a write: unreachable, timed out and exhausted are
    /// [`StoreError::Unavailable`]; everything else is a fault.
    fn from(err: sqlx::Error) -> Self {
        route::note(&err);
        if is_unavailability(&err) {
            StoreError::Unavailable(Some(err))
        } else {
            StoreError::Database(err)
        }
    }
}

impl StoreError {
    /// A failure of a statement that writes: a connection lost after sending it leaves the
    /// outcome unknown; a pool timeout (nothing was sent) or a server-side cancel (the
    /// transaction rolled back) does not.
    pub fn after_write(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
                StoreError::OutcomeUnknown
            }
            _ => err.into(),
        }
    }

    /// The same failure for one more caller of a failed batch (each waiting buyer gets
    /// their own): unavailability stays unavailability (503, and "outcome unknown" where it
    /// is), a fault becomes [`StoreError::Batch`] with the message.
    pub fn copy_for_caller(&self) -> StoreError {
        match self {
            StoreError::OutcomeUnknown => StoreError::OutcomeUnknown,
            StoreError::Overloaded => StoreError::Overloaded,
            StoreError::Down { retry_after } => StoreError::Down {
                retry_after: *retry_after,
            },
            err if err.is_unavailable() => StoreError::Unavailable(None),
            err => StoreError::Batch(err.to_string()),
        }
    }

    /// Logs the failure of a group-commit batch (`batch`, for `callers` requests of the
    /// sale `sale_id`) once, with the database's SQLSTATE and message: each caller gets a
    /// copy ([`StoreError::copy_for_caller`]) that the request log does not repeat. A batch
    /// refused for load logs nothing (nothing failed), an unanswered statement was logged
    /// where it was cut off, and an outage is logged once by its probe.
    pub(crate) fn log_batch_failure(&self, batch: &str, sale_id: uuid::Uuid, callers: usize) {
        let (code, message) = self.cause();
        match self {
            StoreError::Overloaded | StoreError::OutcomeUnknown | StoreError::Down { .. } => {}
            err if err.is_unavailable() => tracing::warn!(
                sale = %sale_id, callers, code, message, "{batch} failed: database unavailable"
            ),
            _ => tracing::error!(sale = %sale_id, callers, code, message, "{batch} failed"),
        }
    }

    /// The SQLSTATE (when the database answered with an error) and the message of the
    /// underlying failure.
    pub fn cause(&self) -> (Option<String>, String) {
        let source = match self {
            StoreError::Database(err) | StoreError::Unavailable(Some(err)) => err,
            other => return (None, other.to_string()),
        };
        match source.as_database_error() {
            Some(db) => (
                db.code().map(|code| code.into_owned()),
                db.message().to_string(),
            ),
            None => (None, source.to_string()),
        }
    }

    /// Whether the failure is the database's unavailability (answer 503, retry later)
    /// rather than a fault (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::OutcomeUnknown
                | StoreError::Overloaded
                | StoreError::Down { .. }
        )
    }
}

/// Unreachable, timed out, exhausted, shutting down, read-only (a route that leads to a
/// standby: see `route`), or cancelled by one of the server-side timeouts set in
/// [`connect`]: a retry later may succeed.
fn is_unavailability(err: &sqlx::Error) -> bool {
    if route::is_read_only(err) {
        return true;
    }
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 53300 too many connections; 57014 statement
            // timeout; 57P0x shutdown / cannot connect now; 55P03 lock timeout; 25P03 idle
            // in transaction timeout; 40001 / 40P01 serialization failure / deadlock.
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "53300"
                        | "57014"
                        | "57P01"
                        | "57P02"
                        | "57P03"
                        | "55P03"
                        | "25P03"
                        | "40001"
                        | "40P01"
                )
        }),
        _ => false,
    }
}

/// What [`Store::ping`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Writable,
    /// The database answers but refuses writes (the route leads to a standby).
    ReadOnly,
    Unreachable,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// What stands between `pool` and Postgres: statements run in that mode (see `db`).
    pooler: Pooler,
    /// Direct session connections for LISTEN (see [`Store::session_pool`]); none: `pool`'s.
    session: Option<PgPool>,
    /// Where the time spent waiting for a connection is recorded, if anywhere.
    pool_wait: Option<Histogram>,
    /// Whether the database is known to be down (then calls are refused at once), and the
    /// probe that finds out when it is back.
    outage: outage::Outage,
    /// Seals webhook secrets at rest (`WEBHOOK_SECRET_KEY`); none: stored plain.
    secrets: Option<std::sync::Arc<SecretBox>>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            outage: outage::Outage::new(pool.connect_options()),
            pool,
            pooler: Pooler::None,
            session: None,
            pool_wait: None,
            secrets: None,
        }
    }

    /// Runs statements for a pool behind `pooler` (the pool must come from
    /// [`connect_through`] with the same `pooler`), with `session` (a pool of direct
    /// session connections: [`connect`] on `DATABASE_SESSION_URL`) for LISTEN.
    pub fn behind(mut self, pooler: Pooler, session: Option<PgPool>) -> Self {
        self.pooler = pooler;
        self.session = session;
        self
    }

    /// Seals webhook secrets at rest with `secrets` (see `secret_box.rs`).
    pub fn with_secret_box(mut self, secrets: std::sync::Arc<SecretBox>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    /// A store on another pool of the same database (the reserved pool), sharing this
    /// one's view of an outage and its one probe.
    pub fn beside(&self, pool: PgPool) -> Self {
        Self {
            pool,
            pooler: self.pooler,
            session: self.session.clone(),
            pool_wait: None,
            outage: self.outage.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Records in `histogram` how long each statement waited for a pooled connection.
    pub fn with_pool_wait(mut self, histogram: Histogram) -> Self {
        self.pool_wait = Some(histogram);
        self
    }

    /// A pooled connection, the wait for it timed: a pool too small for the load shows
    /// here before it shows as 503s. Refused at once while the database is known to be
    /// down; a failed wait asks the outage probe to look.
    async fn conn(&self) -> Result<Db, StoreError> {
        if let Some(refusal) = self.outage.refusal() {
            return Err(refusal);
        }
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await;
        if let Some(histogram) = &self.pool_wait {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        match conn {
            Ok(conn) => Ok(Db::new(conn, self.pooler)),
            Err(err) => {
                if is_unavailability(&err) && !matches!(err, sqlx::Error::PoolClosed) {
                    self.outage.suspect();
                }
                Err(err.into())
            }
        }
    }

    /// A pooled connection, waited for at most until `cut_off`. Past it the caller hears
    /// plain [`StoreError::Unavailable`]: nothing was sent, so the outcome is known (nothing
    /// happened). Only the statement after it may leave an outcome unknown.
    async fn conn_until(&self, cut_off: tokio::time::Instant) -> Result<Db, StoreError> {
        match tokio::time::timeout_at(cut_off, self.conn()).await {
            Ok(conn) => conn,
            Err(_) => {
                self.outage.suspect();
                Err(StoreError::Unavailable(Some(sqlx::Error::PoolTimedOut)))
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool for what needs a server session of its own (LISTEN): the session pool given
    /// to [`Store::behind`] (`DATABASE_SESSION_URL`; needed behind a transaction-mode
    /// pooler), else the store's own pool.
    pub fn session_pool(&self) -> &PgPool {
        self.session.as_ref().unwrap_or(&self.pool)
    }

    /// Whether the database answers within `timeout` and takes writes (a primary, not a
    /// standby or a read-only database): what readiness means for this service.
    pub async fn ping(&self, timeout: Duration) -> Ping {
        let query = async {
            let mut conn = self.conn().await?;
            Ok::<_, StoreError>(route::is_writable(conn.raw()).await?)
        };
        match tokio::time::timeout(timeout, query).await {
            Ok(Ok(true)) => Ping::Writable,
            Ok(Ok(false)) => Ping::ReadOnly,
            Ok(Err(_)) | Err(_) => Ping::Unreachable,
        }
    }
}

/// The failure of a write `what` on `conn` cut off by its deadline. Once `sent` (the write
/// went out), its outcome is unknown; before (behind a pooler, the cut came in its BEGIN)
/// nothing was written, and the caller hears a plain, retry-safe unavailability. Either way
/// the connection is closed, not pooled: an answer may still be on the way, or never come (a
/// half-open socket, which sqlx has no keepalive to find; see `route`), and a transaction
/// left open on it dies with it.
fn deadline_missed(conn: &mut Db, sent: bool, what: &str) -> StoreError {
    conn.close_on_drop();
    if !sent {
        return StoreError::Unavailable(None);
    }
    tracing::warn!("{what}: sent, but not answered by its deadline; outcome unknown");
    StoreError::OutcomeUnknown
}

/// The name of the constraint a database error violated, if any.
fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    err.as_database_error().and_then(|db| db.constraint())
}
