//! Schema migrations, and the database they go into ([`create_database_if_missing`]).
//! Migrations run once, one instance at a time, on a connection of their own.
//!
//! The pools' sessions carry the request timeouts (`statement_timeout` 5 s, `lock_timeout`
//! 3 s, see `route.rs`): under them a migration step longer than 5 s could never finish,
//! and an instance waiting more than 3 s for another's migration lock would fail at start.
//! So migrations get a session without either. sqlx serialises migrators with a
//! session-level advisory lock, so of several instances starting at once one migrates and
//! the others wait for it, then find nothing left to do.
//!
//! Rolling deploys run the previous release beside the next one, after the next one's
//! migrations: a binary therefore accepts applied migrations newer than it knows
//! (`ignore_missing`), and every migration must be additive for one release (the
//! expand/contract rules in the README). A migration that changes one this binary knows
//! (its checksum) still stops it.

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The migrations, embedded in the binary; applied ones newer than the binary are accepted.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

/// Runs the pending migrations on a connection of their own: no statement timeout, and a
/// wait for another instance's migration lock as long as it migrates. A migration that
/// takes a strong lock on a busy table sets its own `SET LOCAL lock_timeout`, so that it
/// fails and is retried instead of queueing every request behind it.
pub async fn migrate(url: &str) -> Result<(), MigrateError> {
    let options: PgConnectOptions = url.parse()?;
    let options = options
        .application_name("flashsale-migrate")
        .options([("statement_timeout", "0"), ("lock_timeout", "0")]);
    let mut conn = PgConnection::connect_with(&options).await?;
    let migrated = MIGRATOR.run(&mut conn).await;
    // Closing ends the session, and with it the advisory lock, on every path.
    let _ = conn.close().await;
    migrated
}

/// The migrations this binary needs that the database has not applied: an instance started
/// with `MIGRATE_ON_START=false` refuses to serve before `flashsale migrate` has run.
pub async fn pending_migrations(pool: &sqlx::PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            // 42P01: no migration table yet, so none applied.
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("42P01") => Vec::new(),
            Err(err) => return Err(err),
        };
    Ok(MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect())
}

/// Creates `database` on the server at `server_url` unless it exists (embedded cluster and
/// tests). The name is quoted as an identifier.
pub async fn create_database_if_missing(
    server_url: &str,
    database: &str,
) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(server_url).await?;
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
