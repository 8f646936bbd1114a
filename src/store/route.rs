//! The route to the database: opening the pool ([`connect`], with the session settings
//! every connection carries), and keeping it on a writable primary when the route moves (a
//! failover behind DNS, a pooler or a load balancer that does not end old sessions).
//!
//! Three guards, all in the pool's hooks so no query path has to think about them:
//! - a new connection is checked to be writable before the pool hands it out
//!   ([`ensure_writable`]): a connection to a hot standby, or to a server or database with
//!   `default_transaction_read_only` on, is refused, and the pool tries again until its
//!   acquire timeout (the caller hears 503, never a 500 from a write refused later);
//! - a read-only refusal seen on any connection ([`note`]) closes every connection that
//!   was open at that moment, on its next release or acquire: they all came over the same
//!   route, and a pool that kept them would keep failing after the route is fixed;
//! - [`is_read_only`] tells those refusals (SQLSTATE 25006, "cannot execute ... during
//!   recovery") apart, so they count as unavailability (503) rather than a fault (500).
//!
//! What this module does not do: TCP keepalives. sqlx 0.9 opens its sockets itself (only
//! `TCP_NODELAY` is set) and exposes neither keepalive options nor the socket
//! (launchbadge/sqlx#3540). A half-open socket is found by our own deadlines instead: an
//! idle connection is pinged on acquire within the request's deadline, a statement cut off
//! by its deadline has its connection closed, never pooled (`deadline_missed`, in the parent
//! module), and the live listener checks its own silent connection. The server's side
//! gets keepalives through the session settings ([`SERVER_KEEPALIVES`]).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool, Row};

/// What stands between the service and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: a connection is one server session.
    #[default]
    None,
    /// A pooler in transaction mode (pgbouncer `pool_mode = transaction`): only a
    /// transaction stays on one server connection.
    Transaction,
}

/// A fixed point every sighting is measured from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When this process last saw a read-only refusal: milliseconds after [`EPOCH`], plus one
/// (0: never). Process-wide rather than per pool: every pool of a process goes to the one
/// `DATABASE_URL`, so a sighting on one condemns the connections of all. (In the test
/// binary, where each test has its own pool, a sighting only makes the other tests' pools
/// open fresh connections once.)
static READ_ONLY_SEEN: AtomicU64 = AtomicU64::new(0);

/// A write refused because the server is read-only: a hot standby ("cannot execute ...
/// during recovery") or `default_transaction_read_only` (SQLSTATE 25006).
pub(super) fn is_read_only(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("25006") || db.message().contains("during recovery")
    })
}

/// Records a read-only refusal, if `err` is one: every connection open now is closed on
/// its next release or acquire.
pub(super) fn note(err: &sqlx::Error) {
    if is_read_only(err) {
        let now = EPOCH.elapsed().as_millis() as u64 + 1;
        READ_ONLY_SEEN.fetch_max(now, Ordering::Relaxed);
    }
}

/// Whether the connection described by `meta` was already open at the last read-only
/// sighting (so it may lead to the read-only server).
fn opened_before_sighting(meta: &PoolConnectionMetadata) -> bool {
    let seen = READ_ONLY_SEEN.load(Ordering::Relaxed);
    if seen == 0 {
        return false;
    }
    let since_sighting = EPOCH
        .elapsed()
        .saturating_sub(Duration::from_millis(seen - 1));
    meta.age >= since_sighting
}

/// Whether the server behind `conn` takes writes: a primary, with writes allowed for this
/// session. One round trip, on the simple query protocol (no prepared statement), so the
/// same check works behind a transaction-mode pooler (it then looks at the server
/// connection the pooler picked for it, which goes where all of them go).
pub(super) async fn is_writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let row = conn
        .fetch_one(
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
        )
        .await?;
    row.try_get(0)
}

/// Refuses a connection to a read-only server; the pool then tries again (with backoff)
/// until the caller's acquire times out.
async fn ensure_writable(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    if is_writable(conn).await? {
        return Ok(());
    }
    Err(sqlx::Error::Configuration(
        "the database route leads to a read-only server (a standby, or \
         default_transaction_read_only on); refusing the connection"
            .into(),
    ))
}

/// Pool options with the guards of this module.
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .after_connect(|conn, _| Box::pin(ensure_writable(conn)))
        .before_acquire(|_, meta| Box::pin(async move { Ok(!opened_before_sighting(&meta)) }))
        .after_release(|_, meta| Box::pin(async move { Ok(!opened_before_sighting(&meta)) }))
}

/// How long a request waits for a pooled connection before it is told 503: long enough
/// to ride out a burst (connections turn over in milliseconds), short enough that a buyer
/// hears an honest answer well before any client gives up.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side limits on every connection, so that no statement, lock wait or forgotten
/// transaction can hold a connection (and the locks behind it) for long:
/// - `statement_timeout` 5 s: the slowest legitimate statement (a 10,000-ticket slice of
///   the pre-queue's draw, a 2,048-buyer batch on a loaded machine) takes well under a
///   second; a statement past 5 s is stuck, and its buyer is answered 503 instead. Nothing
///   on the request or tick paths grows with the size of a queue.
/// - `lock_timeout` 3 s: purchases wait on one hot row lock, held for a statement at a
///   time (milliseconds); 3 s of waiting means something holds it that should not.
/// - `idle_in_transaction_session_timeout` 10 s: our transactions never wait on a client
///   or the network, so a transaction idle that long belongs to a stalled or partitioned
///   process; ending it frees its row locks for everyone else.
pub const SERVER_TIMEOUTS: [(&str, &str); 3] = [
    ("statement_timeout", "5s"),
    ("lock_timeout", "3s"),
    ("idle_in_transaction_session_timeout", "10s"),
];

/// The server's TCP keepalives on every connection (probes after 10 s idle, every 5 s, 3
/// lost = dead): a server whose client vanished (a partitioned or killed instance) ends the
/// session in about 25 s instead of the kernel's two hours, freeing its connection slot
/// and anything it held. This is the server's half only; sqlx cannot set keepalives on
/// our side (see `route`).
const SERVER_KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// Opens a pool on `url`, straight to Postgres (or through a session-mode pooler). Plans
/// are made for each execution (`force_custom_plan`): a generic plan cached while a table is
/// nearly empty can pick a sequential scan and keep it after the table grows (measured: 900
/// instead of 13,000 purchases/s). Every connection carries [`SERVER_TIMEOUTS`] and
/// [`SERVER_KEEPALIVES`], and is checked to be writable before use (see `route`).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_through(url, max_connections, Pooler::None).await
}

/// [`connect`] to a `url` behind `pooler`. Behind a transaction-mode pooler the
/// connections carry no session settings: pgbouncer refuses the start-up `options` (and
/// `extra_float_digits`) parameters, and a setting made on one server connection would not
/// follow the next transaction anyway. The store then sets [`SERVER_TIMEOUTS`] in each
/// transaction (`SET LOCAL`, see `db`); unnamed statements are planned for their own
/// parameters, as `force_custom_plan` asks; the pooler's own TCP keepalives
/// (`deploy/pgbouncer/`) stand in for [`SERVER_KEEPALIVES`].
pub async fn connect_through(
    url: &str,
    max_connections: u32,
    pooler: Pooler,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("flashsale");
    let options = match pooler {
        Pooler::None => {
            let mut settings = vec![("plan_cache_mode", "force_custom_plan")];
            settings.extend(SERVER_TIMEOUTS);
            settings.extend(SERVER_KEEPALIVES);
            options.options(settings)
        }
        Pooler::Transaction => options.extra_float_digits(None),
    };
    pool_options()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}
