//! How a buyer's queue entry is read: with its queue's counters, in one row, by the poll
//! route, the join, and the live streams.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::StoreError;
use super::db::Db;
use crate::domain::{EntryStatus, QueueEntry};

#[derive(FromRow)]
pub(super) struct EntryRow {
    user_id: String,
    ticket: Option<i64>,
    prequeue: bool,
    status: String,
    joined_at: DateTime<Utc>,
    hold_expires_at: Option<DateTime<Utc>>,
    quantity: i32,
    variant: Option<String>,
    admitted_upto: i64,
    waiting: i32,
    shuffled: bool,
    admission_rate: Option<f64>,
}

impl From<EntryRow> for QueueEntry {
    fn from(row: EntryRow) -> Self {
        QueueEntry {
            user_id: row.user_id,
            ticket: row.ticket,
            prequeue: row.prequeue,
            // The column's CHECK allows only the five values.
            status: EntryStatus::parse(&row.status).unwrap_or(EntryStatus::Left),
            joined_at: row.joined_at,
            hold_expires_at: row.hold_expires_at,
            quantity: row.quantity,
            variant: row.variant,
            admitted_upto: row.admitted_upto,
            waiting: row.waiting,
            shuffled: row.shuffled,
            admission_rate: row.admission_rate,
        }
    }
}

/// The counters of a queue row `q` that a buyer's view derives from: the front, the
/// waiting buyers, whether the pre-queue's draw is complete (its last slice dealt), and the
/// admission rate since the first admission (holds per second).
macro_rules! queue_counters_sql {
    () => {
        "q.admitted_upto, q.waiting, q.prequeue_size IS NOT NULL AS shuffled,
         CASE WHEN q.admitted > 0 AND now() > q.first_admitted_at
              THEN q.admitted / EXTRACT(EPOCH FROM now() - q.first_admitted_at)::float8
         END AS admission_rate"
    };
}
pub(super) use queue_counters_sql;

/// What a buyer's view needs of an entry `e` and its queue row `q`.
macro_rules! entry_columns_sql {
    () => {
        concat!(
            "SELECT e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at, ",
            "e.quantity, e.variant, ",
            queue_counters_sql!(),
            " FROM queue_entries e JOIN sale_queues q ON q.sale_id = e.sale_id"
        )
    };
}

/// An entry with its queue's counters: one row, one index probe each, no count.
pub(super) const ENTRY_SQL: &str = concat!(
    entry_columns_sql!(),
    " WHERE e.sale_id = $1 AND e.user_id = $2"
);

/// The entries of several buyers (`$2`, an array) of one sale, each with the counters: one
/// primary-key probe per buyer (the `LIMIT` keeps the lateral subquery a parameterised
/// scan), whatever the statistics say. `e.user_id = ANY($2)` let a planner on statistics
/// older than the crowd scan every entry of the sale instead (8 ms a join batch at 64,000
/// entries, growing with the queue).
pub(super) const ENTRY_SQL_FOR_USERS: &str = concat!(
    "SELECT e.user_id, e.ticket, e.prequeue, e.status, e.joined_at, e.hold_expires_at, ",
    "e.quantity, e.variant, ",
    queue_counters_sql!(),
    " FROM unnest($2::text[]) b(user_id)
      CROSS JOIN LATERAL (SELECT * FROM queue_entries e
                           WHERE e.sale_id = $1 AND e.user_id = b.user_id LIMIT 1) e
      JOIN sale_queues q ON q.sale_id = e.sale_id"
);

pub(super) async fn find_entry(
    conn: &mut Db,
    sale_id: Uuid,
    user_id: &str,
) -> Result<Option<QueueEntry>, StoreError> {
    let row = sqlx::query_as::<_, EntryRow>(ENTRY_SQL)
        .bind(sale_id)
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(QueueEntry::from))
}
