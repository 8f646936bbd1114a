//! Returning live holds to stock: the tick's expiry, a cancelled or archived sale's void,
//! and the archive itself, in one statement each (see [`return_holds`]).

use uuid::Uuid;

use crate::store::StoreError;
use crate::store::db::Db;

/// Which live holds [`return_holds`] takes back.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) enum HoldsToReturn {
    /// The tick: up to `batch` holds past their expiry, skipping those a confirm or release
    /// has locked.
    Due { batch: i64 },
    /// The tick of a cancelled or archived sale: up to `batch` live holds, due or not, all
    /// void now; skipping locked ones like `Due`.
    Void { batch: i64 },
    /// The archive: every live hold, waiting for those locked by a confirm in flight.
    All,
}

/// Ends live holds as `expired` and moves their units (each hold's `quantity`) from `held`
/// back to `available`, in one statement; an archived sale's `archived` event counts them
/// as voided. Returns how many holds.
///
/// Race-free under READ COMMITTED: the entries are locked before they change, and the
/// UPDATE re-checks `status = 'held'`, so a hold confirmed, released or expired by someone
/// else first is left alone, and a hold is returned once. The tick skips locked entries
/// (SKIP LOCKED: it never waits on a buyer); the archive waits for them, because a confirm
/// in flight fails on the archived sale and rolls back, and then the hold must be voided.
/// Entries are locked before the sale row, the order a confirm or release takes, so neither
/// form deadlocks with a buyer. The units move in the same statement, so
/// `sold + held + available = stock` holds at its commit.
///
/// The locked entries are updated by the row ids the lock returned (`ctid = ANY(...)`, a TID
/// scan; a row we hold locked cannot move, and a lock taken on a newer version returns that
/// version's id), here and in [`Store::admit`], as in the draw. Joined to the locked set by
/// key instead, a plan made on statistics older than the crowd walked every entry of the
/// sale: EXPLAIN ANALYZE at 200,000 entries, a merge join 57 ms and a nested loop 23 s (past
/// the statement timeout, as in CI) to update 500; by row id 0.8 ms. Not by `user_id =
/// ANY` either: on those statistics the planner made it a filter over the sale's entries
/// (1.8 s).
pub(in crate::store) async fn return_holds(
    conn: &mut Db,
    sale_id: Uuid,
    which: HoldsToReturn,
) -> Result<i64, StoreError> {
    let pick = match which {
        HoldsToReturn::Due { .. } | HoldsToReturn::Void { .. } => {
            "SELECT ctid AS row_id FROM queue_entries
              WHERE sale_id = $1 AND status = 'held' AND (hold_expires_at <= now() OR $3)
              ORDER BY hold_expires_at LIMIT $2
                FOR UPDATE SKIP LOCKED"
        }
        HoldsToReturn::All => {
            "SELECT ctid AS row_id FROM queue_entries WHERE sale_id = $1 AND status = 'held' FOR UPDATE"
        }
    };
    let sql = format!(
        "WITH due AS ({pick}
         ), returned AS (
             UPDATE queue_entries e SET status = 'expired', finished_at = now()
              WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM due)) AND e.status = 'held'
             RETURNING e.quantity
         ), moved AS (
             UPDATE sales SET held = held - (SELECT sum(quantity) FROM returned),
                              available = available + (SELECT sum(quantity) FROM returned)
              WHERE id = $1 AND (SELECT count(*) FROM returned) > 0
             RETURNING 1
         ), counted AS (
             -- After `moved` (it reads it): the sale row before the queue row, the order
             -- admission takes them in. Unreferenced, this CTE ran first (Postgres runs
             -- them last to first) and two ticks of one sale deadlocked.
             UPDATE sale_queues SET expired = expired + (SELECT count(*) FROM returned)
              WHERE sale_id = $1 AND EXISTS (SELECT 1 FROM moved)
         ), recorded AS (
             UPDATE sale_events
                SET voided_holds = COALESCE(voided_holds, 0) + (SELECT count(*) FROM returned)
              WHERE sale_id = $1 AND state = 'archived' AND (SELECT count(*) FROM returned) > 0
         )
         SELECT count(*) FROM returned"
    );
    // Built from the two constant picks above.
    let query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(sale_id);
    let query = match which {
        HoldsToReturn::Due { batch } => query.bind(batch).bind(false),
        HoldsToReturn::Void { batch } => query.bind(batch).bind(true),
        HoldsToReturn::All => query,
    };
    Ok(query.fetch_one(conn).await?)
}
