//! Returning a raffle's live holds to stock: the tick's expiry, a cancelled or archived
//! raffle's void, and the archive itself, in one statement each (the queue's
//! `return_holds`, on raffle entries).

use uuid::Uuid;

use crate::store::StoreError;
use crate::store::db::Db;

/// Which live holds [`return_raffle_holds`] takes back.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) enum RaffleHolds {
    /// Up to `batch` holds past their expiry, skipping those a confirm or withdrawal has
    /// locked.
    Due { batch: i64 },
    /// Up to `batch` live holds of a cancelled or archived raffle, due or not; skipping
    /// locked ones like `Due`.
    Void { batch: i64 },
    /// The archive: every live hold, waiting for those locked by a confirm in flight.
    All,
}

/// Ends live holds as `expired` and moves their units from `held` back to `available`, in
/// one statement. Returns how many holds.
///
/// Race-free under READ COMMITTED, as the queue's: the entries are locked before they
/// change and the UPDATE re-checks `status = 'selected'`, so a hold confirmed, withdrawn or
/// expired by someone else first is left alone, and a hold is returned once. Entries are
/// locked before the sale row, the order a confirm or withdrawal takes. The units move in
/// the same statement, so `sold + held + available = stock` holds at its commit. Rows are
/// updated by the ids the lock returned (a TID scan), as the queue's expiry.
pub(in crate::store) async fn return_raffle_holds(
    conn: &mut Db,
    sale_id: Uuid,
    which: RaffleHolds,
) -> Result<i64, StoreError> {
    let pick = match which {
        RaffleHolds::Due { .. } | RaffleHolds::Void { .. } => {
            "SELECT ctid AS row_id FROM raffle_entries
              WHERE sale_id = $1 AND status = 'selected' AND (hold_expires_at <= now() OR $3)
              ORDER BY hold_expires_at LIMIT $2
                FOR UPDATE SKIP LOCKED"
        }
        RaffleHolds::All => {
            "SELECT ctid AS row_id FROM raffle_entries
              WHERE sale_id = $1 AND status = 'selected' FOR UPDATE"
        }
    };
    let sql = format!(
        "WITH due AS ({pick}
         ), returned AS (
             UPDATE raffle_entries e SET status = 'expired', finished_at = now()
              WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM due)) AND e.status = 'selected'
             RETURNING e.quantity
         ), moved AS (
             UPDATE sales SET held = held - (SELECT sum(quantity) FROM returned),
                              available = available + (SELECT sum(quantity) FROM returned)
              WHERE id = $1 AND (SELECT count(*) FROM returned) > 0
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
        RaffleHolds::Due { batch } => query.bind(batch).bind(false),
        RaffleHolds::Void { batch } => query.bind(batch).bind(true),
        RaffleHolds::All => query,
    };
    Ok(query.fetch_one(conn).await?)
}
