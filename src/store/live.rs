//! What the live streams read: a sale with its queue's counters, the changes to its buyers'
//! entries since a sequence number, and one buyer's entry with the sequence it was read at.
//!
//! One instance reads a sale's snapshot and changes once per wake-up, however many streams
//! it serves for that sale (see `worker::live`).

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::queue_entry::{ENTRY_SQL, EntryRow, queue_counters_sql};
use super::sales::SaleRow;
use super::{Store, StoreError};
use crate::domain::{QueueEntry, Sale};

/// A sale as a live stream shows it, with the sequence of its last event when read.
#[derive(Debug, Clone)]
pub struct LiveSale {
    pub sale: Sale,
    /// The queue's counters (queued sales only).
    pub queue: Option<LiveQueue>,
    pub last_sequence: i64,
}

/// The counters of a waiting room that every buyer's view derives from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveQueue {
    pub admitted_upto: i64,
    pub waiting: i32,
    pub shuffled: bool,
    pub admission_rate: Option<f64>,
}

/// How a buyer's entry changed, from the sale's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryChangeKind {
    HoldGranted,
    HoldExpired,
    HoldReleased,
    Purchased,
}

/// One change to one buyer's entry.
#[derive(Debug, Clone)]
pub struct EntryChange {
    pub sequence: i64,
    pub kind: EntryChangeKind,
    pub user_id: String,
    pub hold_expires_at: Option<DateTime<Utc>>,
}

/// A page of a sale's events read for the live streams.
#[derive(Debug, Default)]
pub struct ChangePage {
    pub changes: Vec<EntryChange>,
    /// The highest sequence read (buyer changes or not); `None` when nothing was new.
    pub through: Option<i64>,
    /// Whether the page was full: more may follow.
    pub full: bool,
}

#[derive(FromRow)]
struct LiveSaleRow {
    #[sqlx(flatten)]
    sale: SaleRow,
    last_event_sequence: i64,
    admitted_upto: Option<i64>,
    waiting: Option<i32>,
    shuffled: Option<bool>,
    admission_rate: Option<f64>,
}

#[derive(FromRow)]
struct ChangeRow {
    sequence: i64,
    #[sqlx(rename = "type")]
    kind: String,
    user_id: Option<String>,
    hold_expires_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct LiveEntryRow {
    #[sqlx(flatten)]
    entry: EntryRow,
    event_sequence: i64,
}

fn change_kind(event_type: &str) -> Option<EntryChangeKind> {
    match event_type {
        "hold.granted" => Some(EntryChangeKind::HoldGranted),
        "hold.expired" => Some(EntryChangeKind::HoldExpired),
        "hold.released" => Some(EntryChangeKind::HoldReleased),
        "purchase.created" => Some(EntryChangeKind::Purchased),
        _ => None,
    }
}

impl Store {
    /// The sale with its queue's counters and last event sequence, in one statement (one
    /// snapshot), or `None` if it no longer exists.
    pub async fn live_sale(&self, sale_id: Uuid) -> Result<Option<LiveSale>, StoreError> {
        let sql = format!(
            "SELECT s.*, {QUEUE_COUNTERS}
               FROM (SELECT {SALE_COLUMNS}, last_event_sequence FROM sales WHERE id = $1) s
               LEFT JOIN sale_queues q ON q.sale_id = s.id",
            SALE_COLUMNS = super::sales::SALE_COLUMNS,
            QUEUE_COUNTERS = queue_counters_sql!()
        );
        // Built from constant text only.
        let row = sqlx::query_as::<_, LiveSaleRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(row.map(|row| {
            let queue = match (row.admitted_upto, row.waiting, row.shuffled) {
                (Some(admitted_upto), Some(waiting), Some(shuffled)) => Some(LiveQueue {
                    admitted_upto,
                    waiting,
                    shuffled,
                    admission_rate: row.admission_rate,
                }),
                _ => None,
            };
            LiveSale {
                sale: Sale::from(row.sale),
                queue,
                last_sequence: row.last_event_sequence,
            }
        }))
    }

    /// The sale's events after `after`, at most `limit`, as changes to buyers' entries.
    ///
    /// Nothing is skipped under READ COMMITTED: a sale's sequence numbers are taken under
    /// its row lock, held to the commit, so the committed events are always a gap-free
    /// prefix of the sequence, and reading after the highest one seen misses none.
    pub async fn entry_changes(
        &self,
        sale_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<ChangePage, StoreError> {
        let rows = sqlx::query_as::<_, ChangeRow>(
            "SELECT sequence, type, data->>'userId' AS user_id,
                    (data->>'holdExpiresAt')::timestamptz AS hold_expires_at
               FROM events WHERE sale_id = $1 AND sequence > $2
              ORDER BY sequence LIMIT $3",
        )
        .bind(sale_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut self.conn().await?)
        .await?;
        let full = rows.len() as i64 >= limit;
        let through = rows.last().map(|row| row.sequence);
        let changes = rows
            .into_iter()
            .filter_map(|row| {
                Some(EntryChange {
                    sequence: row.sequence,
                    kind: change_kind(&row.kind)?,
                    user_id: row.user_id?,
                    hold_expires_at: row.hold_expires_at,
                })
            })
            .collect();
        Ok(ChangePage {
            changes,
            through,
            full,
        })
    }

    /// The buyer's entry with the sale's last event sequence, read in one statement: every
    /// change after that sequence is one the entry does not show yet.
    pub async fn live_entry(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<(QueueEntry, i64)>, StoreError> {
        let sql = format!(
            "SELECT x.*, (SELECT last_event_sequence FROM sales WHERE id = $1) AS event_sequence
               FROM ({ENTRY_SQL}) x"
        );
        // Built from constant text only.
        let row = sqlx::query_as::<_, LiveEntryRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(user_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(row.map(|row| (QueueEntry::from(row.entry), row.event_sequence)))
    }
}
