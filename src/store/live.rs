//! What the live streams read: a sale with its queue's counters (or its raffle's draw), the
//! changes to its buyers' entries since a sequence number, and one buyer's entry (in a queue
//! or a raffle) with the sequence it was read at.
//!
//! One instance reads a sale's snapshot and changes once per wake-up, however many streams
//! it serves for that sale (see `worker::live`).

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::queue_entry::{ENTRY_SQL, EntryRow, queue_counters_sql};
use super::raffle::{ENTRY_COLUMNS as RAFFLE_ENTRY_COLUMNS, EntryRow as RaffleEntryRow};
use super::sales::SaleRow;
use super::{Store, StoreError};
use crate::domain::{QueueEntry, RaffleEntry, RaffleStatus, Sale};

/// A sale as a live stream shows it, with the sequence of its last event when read.
#[derive(Debug, Clone)]
pub struct LiveSale {
    pub sale: Sale,
    /// The queue's counters (queued sales only).
    pub queue: Option<LiveQueue>,
    /// The draw (raffles only).
    pub raffle: Option<LiveRaffle>,
    pub last_sequence: i64,
}

/// Where a raffle's draw stands, as every entrant's view derives from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveRaffle {
    /// The seed, once entries closed and the draw began (hidden before).
    pub draw_seed: Option<i64>,
    /// The draw is complete: every entrant has their position.
    pub drawn: bool,
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
    /// A purchase: a confirmed hold, or a raffle's confirmed selection.
    Purchased,
    /// A raffle entrant's new status (`raffle.selected`, `.expired`, `.withdrawn`,
    /// `.not_selected`).
    Raffle(RaffleStatus),
}

/// One change to one buyer's entry.
#[derive(Debug, Clone)]
pub struct EntryChange {
    pub sequence: i64,
    pub kind: EntryChangeKind,
    pub user_id: String,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// A raffle entrant's place in the draw.
    pub draw_position: Option<i64>,
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
    raffle: bool,
    draw_seed: Option<i64>,
    drawn: bool,
}

#[derive(FromRow)]
struct ChangeRow {
    sequence: i64,
    #[sqlx(rename = "type")]
    kind: String,
    user_id: Option<String>,
    hold_expires_at: Option<DateTime<Utc>>,
    draw_position: Option<i64>,
}

#[derive(FromRow)]
struct LiveEntryRow {
    #[sqlx(flatten)]
    entry: EntryRow,
    event_sequence: i64,
}

#[derive(FromRow)]
struct LiveRaffleEntryRow {
    #[sqlx(flatten)]
    entry: RaffleEntryRow,
    event_sequence: i64,
}

fn change_kind(event_type: &str) -> Option<EntryChangeKind> {
    match event_type {
        "hold.granted" => Some(EntryChangeKind::HoldGranted),
        "hold.expired" => Some(EntryChangeKind::HoldExpired),
        "hold.released" => Some(EntryChangeKind::HoldReleased),
        "purchase.created" => Some(EntryChangeKind::Purchased),
        "raffle.selected" => Some(EntryChangeKind::Raffle(RaffleStatus::Selected)),
        "raffle.expired" => Some(EntryChangeKind::Raffle(RaffleStatus::Expired)),
        "raffle.withdrawn" => Some(EntryChangeKind::Raffle(RaffleStatus::Withdrawn)),
        "raffle.not_selected" => Some(EntryChangeKind::Raffle(RaffleStatus::NotSelected)),
        _ => None,
    }
}

impl Store {
    /// The sale with its queue's counters (or its raffle's draw) and last event sequence,
    /// in one statement (one snapshot), or `None` if it no longer exists.
    pub async fn live_sale(&self, sale_id: Uuid) -> Result<Option<LiveSale>, StoreError> {
        let sql = format!(
            "SELECT s.*, {QUEUE_COUNTERS}, r.sale_id IS NOT NULL AS raffle,
                    CASE WHEN r.draw_started_at IS NOT NULL THEN r.draw_seed END AS draw_seed,
                    r.drawn_at IS NOT NULL AS drawn
               FROM (SELECT {SALE_COLUMNS}, last_event_sequence FROM sales WHERE id = $1) s
               LEFT JOIN sale_queues q ON q.sale_id = s.id
               LEFT JOIN sale_raffles r ON r.sale_id = s.id",
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
            let raffle = row.raffle.then_some(LiveRaffle {
                draw_seed: row.draw_seed,
                drawn: row.drawn,
            });
            LiveSale {
                sale: Sale::from(row.sale),
                queue,
                raffle,
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
                    (data->>'holdExpiresAt')::timestamptz AS hold_expires_at,
                    (data->>'drawPosition')::bigint AS draw_position
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
                    draw_position: row.draw_position,
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

    /// The entrant's raffle entry with the sale's last event sequence, read in one
    /// statement, as [`Store::live_entry`] for a queue.
    pub async fn live_raffle_entry(
        &self,
        sale_id: Uuid,
        user_id: &str,
    ) -> Result<Option<(RaffleEntry, i64)>, StoreError> {
        let sql = format!(
            "SELECT {RAFFLE_ENTRY_COLUMNS}, s.last_event_sequence AS event_sequence
               FROM raffle_entries e JOIN sale_raffles r ON r.sale_id = e.sale_id
               JOIN sales s ON s.id = e.sale_id
              WHERE e.sale_id = $1 AND e.user_id = $2"
        );
        // Built from constant text only.
        let row = sqlx::query_as::<_, LiveRaffleEntryRow>(sqlx::AssertSqlSafe(sql))
            .bind(sale_id)
            .bind(user_id)
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(row.map(|row| (RaffleEntry::from(row.entry), row.event_sequence)))
    }
}
