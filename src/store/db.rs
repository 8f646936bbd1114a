//! How statements reach the database: [`Db`], a pooled connection that knows whether a
//! transaction-mode pooler (pgbouncer `pool_mode = transaction`) stands between us and
//! Postgres, and [`Tx`], a transaction on it. Every statement of the store runs through
//! them; nothing else in the store touches a raw connection, so the two modes live here
//! only.
//!
//! - **Direct** ([`Pooler::None`], the default): statements run exactly as sqlx runs them
//!   (named prepared statements, cached per connection; a lone statement commits by
//!   itself); the server timeouts come with the connection (see `route`). Nothing is added.
//! - **Behind a transaction-mode pooler** ([`Pooler::Transaction`]): the pooler may hand
//!   each transaction, and each statement outside one, to a different server connection.
//!   sqlx sends a statement with arguments in two round trips (Parse + Describe + Sync,
//!   then Bind + Execute + Sync), and caches named statements per client connection: both
//!   break when the server changes in between. So here every statement is unnamed
//!   (`persistent(false)`) and runs inside an explicit transaction: a lone statement gets
//!   one of its own (begun, run, committed: the same outcome as autocommit), and a
//!   [`Tx`] opens with `SET LOCAL` of the server timeouts, which the pooler does not let a
//!   connection carry from its start-up (see `route::SERVER_TIMEOUTS`).
//!
//! What this module does not do: LISTEN and migrations need a session of their own, which
//! no transaction-mode pooler gives; they use the session pool (`Store::session_pool`).

use std::fmt::Write as _;
use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnection, PgQueryResult, PgRow, PgStatement, PgTransactionManager, PgTypeInfo,
};
use sqlx::{Describe, Either, Execute, Executor, Postgres, SqlSafeStr, SqlStr};
// sqlx's own transaction bookkeeping (depth, savepoints, the ROLLBACK queued on drop), as
// its `Transaction` uses it.
use sqlx_core::transaction::TransactionManager;

use super::route::{Pooler, SERVER_TIMEOUTS};

/// The `BEGIN` of a transaction behind a transaction-mode pooler: the server timeouts, set
/// for this transaction only, in the same round trip.
static POOLED_BEGIN: LazyLock<String> = LazyLock::new(|| {
    let mut begin = String::from("BEGIN");
    for (name, value) in SERVER_TIMEOUTS {
        // Constant names and values (see `SERVER_TIMEOUTS`).
        let _ = write!(begin, "; SET LOCAL {name} = '{value}'");
    }
    begin
});

/// A pooled connection of the store, in the store's [`Pooler`] mode. It runs statements
/// as an executor (`.fetch_one(&mut db)`); see the module comment for what each mode does.
#[derive(Debug)]
pub(super) struct Db {
    conn: PoolConnection<Postgres>,
    pooler: Pooler,
    /// Whether a [`Tx`] is open on it (then a statement joins that transaction).
    in_tx: bool,
}

/// How one statement runs on a [`Db`].
enum Run {
    /// As sqlx would run it (direct mode).
    AsGiven,
    /// Unnamed, in the transaction already open.
    Unnamed,
    /// Unnamed, in a transaction of its own.
    OwnTransaction,
}

impl Db {
    pub(super) fn new(conn: PoolConnection<Postgres>, pooler: Pooler) -> Self {
        Self {
            conn,
            pooler,
            in_tx: false,
        }
    }

    fn run(&self) -> Run {
        match (self.pooler, self.in_tx) {
            (Pooler::None, _) => Run::AsGiven,
            (Pooler::Transaction, true) => Run::Unnamed,
            (Pooler::Transaction, false) => Run::OwnTransaction,
        }
    }

    /// Begins a transaction (a savepoint inside one). Behind a transaction-mode pooler it
    /// also sets the server timeouts for the transaction (`SET LOCAL`), in the same round
    /// trip as the `BEGIN`. Dropped without [`Tx::commit`], it rolls back.
    pub(super) async fn begin(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        let statement = match self.pooler {
            Pooler::Transaction if !self.in_tx => {
                Some(sqlx::AssertSqlSafe(POOLED_BEGIN.as_str()).into_sql_str())
            }
            _ => None,
        };
        PgTransactionManager::begin(&mut self.conn, statement).await?;
        let outer = std::mem::replace(&mut self.in_tx, true);
        Ok(Tx {
            db: self,
            open: true,
            outer,
        })
    }

    /// One unit of work that must commit as a whole or not at all: in direct mode nothing is
    /// sent (each statement commits by itself, as before: no extra round trip); behind a
    /// transaction-mode pooler, a transaction ([`Db::begin`]). Either way the caller ends it
    /// with [`Tx::commit`]. It lets a caller tell a failure before its statement (nothing
    /// sent) from one of the statement itself.
    pub(super) async fn unit(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        match self.run() {
            Run::OwnTransaction => self.begin().await,
            Run::AsGiven | Run::Unnamed => Ok(Tx {
                outer: self.in_tx,
                db: self,
                open: false,
            }),
        }
    }

    /// Closes the connection when it is dropped instead of returning it to the pool (an
    /// answer may still be on its way).
    pub(super) fn close_on_drop(&mut self) {
        self.conn.close_on_drop();
    }

    /// The connection itself, for what is not a statement of the store (the writability
    /// check).
    pub(super) fn raw(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A transaction on a [`Db`] (or, from [`Db::unit`] in direct mode, nothing but a marker).
/// It derefs to the [`Db`], so statements run on it as on the connection:
/// `.execute(&mut *tx)`.
pub(super) struct Tx<'a> {
    db: &'a mut Db,
    /// Whether this transaction is open (false: committed, or never begun).
    open: bool,
    /// Whether the connection was in a transaction before this one (a savepoint).
    outer: bool,
}

impl Tx<'_> {
    /// Commits (releases the savepoint of a nested one).
    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        self.end(true).await
    }

    /// Rolls back now (rather than before the connection's next use).
    pub(super) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end(false).await
    }

    /// Ends this transaction once, either way; a closed one is left as it is.
    async fn end(mut self, commit: bool) -> Result<(), sqlx::Error> {
        if self.open {
            if commit {
                PgTransactionManager::commit(&mut self.db.conn).await?;
            } else {
                PgTransactionManager::rollback(&mut self.db.conn).await?;
            }
            self.open = false;
        }
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Queued, sent before the connection's next use (as sqlx's own transactions).
            PgTransactionManager::start_rollback(&mut self.db.conn);
        }
        self.db.in_tx = self.outer;
    }
}

impl Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

/// A statement sent unnamed: prepared, run and forgotten in one go, never cached.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c mut Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.run() {
            Run::AsGiven => self.conn.fetch_many(query),
            Run::Unnamed => self.conn.fetch_many(Unnamed(query)),
            // The whole answer is read before the commit: a statement's rows count only
            // once it committed.
            Run::OwnTransaction => futures_util::stream::once(async move {
                let tx = self.begin().await?;
                let steps: Vec<Step> = tx.db.conn.fetch_many(Unnamed(query)).try_collect().await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(futures_util::stream::iter(steps.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.run() {
            Run::AsGiven => self.conn.fetch_optional(query),
            Run::Unnamed => self.conn.fetch_optional(Unnamed(query)),
            Run::OwnTransaction => Box::pin(async move {
                let tx = self.begin().await?;
                let row = tx.db.conn.fetch_optional(Unnamed(query)).await?;
                tx.commit().await?;
                Ok(row)
            }),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        // A named statement outlives a transaction: only a direct connection keeps it.
        match self.pooler {
            Pooler::None => self.conn.prepare_with(sql, parameters),
            Pooler::Transaction => Box::pin(async {
                Err(sqlx::Error::Configuration(
                    "prepared statements are not available behind a transaction-mode pooler".into(),
                ))
            }),
        }
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.conn.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_transaction_sets_every_server_timeout_locally() {
        assert_eq!(
            POOLED_BEGIN.as_str(),
            "BEGIN; SET LOCAL statement_timeout = '5s'; SET LOCAL lock_timeout = '3s'; \
             SET LOCAL idle_in_transaction_session_timeout = '10s'"
        );
    }
}
