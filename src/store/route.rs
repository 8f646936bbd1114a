//! Keeping the pool on a writable primary when the route to the database moves (a failover
//! behind DNS, a pooler or a load balancer that does not end old sessions).
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
//! idle connection is pinged on acquire within the request's deadline, and a statement cut
//! off by its deadline has its connection closed, never pooled (see `Store::unanswered`).
//! The server side gets keepalives through the session settings (`connect`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::PgPoolOptions;

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
/// session. One round trip.
pub(super) async fn is_writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
    )
    .fetch_one(conn)
    .await
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
pub(super) fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .after_connect(|conn, _| Box::pin(ensure_writable(conn)))
        .before_acquire(|_, meta| Box::pin(async move { Ok(!opened_before_sighting(&meta)) }))
        .after_release(|_, meta| Box::pin(async move { Ok(!opened_before_sighting(&meta)) }))
}
