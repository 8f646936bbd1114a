//! The waiting room's views: a buyer's place in the queue, and the queue's counters for
//! admins.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};

use crate::domain::{EntryStatus, QueueEntry, Sale, SaleState};
use crate::store::QueueStats;

/// A queued sale's waiting room, for admins.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatsView {
    /// Buyers waiting now.
    pub queued: i32,
    /// Holds granted in all.
    pub admitted: i32,
    /// Holds live now.
    pub held: i32,
    /// Holds that ran out in all.
    pub expired: i32,
    /// Holds confirmed (units sold).
    pub purchased: i32,
    /// The ticket of the last buyer admitted: the queue's front.
    pub last_admitted_position: i64,
    /// Tickets handed out in all.
    pub last_ticket: i64,
    /// The seed of the pre-queue shuffle (decimal string), to replay its order.
    pub shuffle_seed: String,
    /// When the pre-queue closed and its draw began (the opening).
    pub shuffled_at: Option<DateTime<Utc>>,
    /// Pre-queued buyers drawn; set once the draw's last slice is dealt.
    pub prequeue_size: Option<i32>,
}

impl QueueStatsView {
    pub fn new(sale: &Sale, stats: QueueStats) -> Self {
        Self {
            queued: stats.waiting,
            admitted: stats.admitted,
            held: sale.held,
            expired: stats.expired,
            purchased: sale.sold,
            last_admitted_position: stats.admitted_upto,
            last_ticket: stats.last_ticket,
            shuffle_seed: stats.shuffle_seed.to_string(),
            shuffled_at: stats.shuffled_at,
            prequeue_size: stats.prequeue_size,
        }
    }
}

/// Where a buyer stands in a queued sale.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum QueueStatusKind {
    /// Waiting; see `position`.
    Queued,
    /// Holding `quantity` units until `holdExpiresAt`: confirm before then.
    Held,
    /// Confirmed: bought.
    Purchased,
    /// The hold ran out; join again to queue anew.
    Expired,
    /// Fewer units left and held than the buyer asked for: their turn will not come.
    SoldOut,
    /// Left the queue or released the hold.
    Left,
    /// The sale ended or was cancelled before the buyer's turn.
    Closed,
}

/// A buyer's place in a queued sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatusView {
    pub status: QueueStatusKind,
    /// While queued: buyers (tickets) ahead, never growing. Absent in the pre-queue, whose
    /// order is drawn at the opening.
    #[oai(skip_serializing_if_is_none)]
    pub position: Option<i64>,
    /// Buyers waiting in this sale now.
    pub queue_length: i32,
    /// While queued: seconds until this buyer's turn at the recent admission rate.
    #[oai(skip_serializing_if_is_none)]
    pub estimated_wait_seconds: Option<f64>,
    /// While held: when the hold runs out (database clock).
    #[oai(skip_serializing_if_is_none)]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Joined before the opening: the order among pre-queued buyers is drawn at the opening.
    pub prequeue: bool,
    /// Units asked for at the join: the hold reserves them, the confirm buys them.
    pub quantity: i32,
    /// The variant asked for at the join (sales with variants).
    #[oai(skip_serializing_if_is_none)]
    pub variant: Option<String>,
    /// Poll again after this many milliseconds (grows with the distance to the front).
    pub poll_after_ms: u32,
}

/// Whether a waiting entry's turn can still come: units never come back past what is
/// available and held now, of the entry's variant (the sale's, without variants).
fn entry_servable(entry: &QueueEntry, sale: &Sale) -> bool {
    let variant = entry
        .variant
        .as_deref()
        .and_then(|code| sale.variant_position(code))
        .and_then(|position| sale.variant_at(position));
    let unsold = match variant {
        Some(v) => i64::from(v.available) + i64::from(v.held),
        None => i64::from(sale.available) + i64::from(sale.held),
    };
    !sale.is_sold_out() && unsold >= i64::from(entry.quantity)
}

impl QueueStatusView {
    /// The view of `entry`; with the sale, a waiting entry whose turn cannot come any more
    /// shows `sold_out` or `closed`.
    pub fn new(entry: &QueueEntry, sale: Option<&Sale>) -> Self {
        let status = match (entry.status, sale) {
            // Stock never comes back past what is available and held now.
            (EntryStatus::Queued, Some(sale)) if !entry_servable(entry, sale) => {
                QueueStatusKind::SoldOut
            }
            (EntryStatus::Queued, Some(sale))
                if matches!(
                    sale.state(),
                    SaleState::Ended | SaleState::Cancelled | SaleState::Archived
                ) =>
            {
                QueueStatusKind::Closed
            }
            (EntryStatus::Queued, _) => QueueStatusKind::Queued,
            (EntryStatus::Held, _) => QueueStatusKind::Held,
            (EntryStatus::Purchased, _) => QueueStatusKind::Purchased,
            (EntryStatus::Expired, _) => QueueStatusKind::Expired,
            (EntryStatus::Left, _) => QueueStatusKind::Left,
        };
        let waiting = status == QueueStatusKind::Queued;
        Self {
            status,
            position: entry.position().filter(|_| waiting),
            queue_length: entry.waiting,
            estimated_wait_seconds: entry.estimated_wait_seconds().filter(|_| waiting),
            hold_expires_at: entry
                .hold_expires_at
                .filter(|_| status == QueueStatusKind::Held),
            prequeue: entry.prequeue,
            quantity: entry.quantity,
            variant: entry.variant.clone(),
            poll_after_ms: entry.poll_after_ms(),
        }
    }
}

/// One message of a buyer's live stream: the whole status, so a client only renders it.
/// The SSE `event:` names what changed (`status` first, then `position`, `held`,
/// `expired`, `purchased`, `left`, `sold_out` or `closed`; `closing` repeats the latest
/// status when the instance shuts down: reconnect); `id:` is the sale's event sequence it
/// reflects.
#[derive(Object, Debug, Clone)]
pub struct QueueStreamEvent {
    #[oai(skip)]
    pub event: &'static str,
    #[oai(skip)]
    pub sequence: i64,
    #[oai(flatten)]
    pub status: QueueStatusView,
}

impl QueueStatusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatusKind::Queued => "queued",
            QueueStatusKind::Held => "held",
            QueueStatusKind::Purchased => "purchased",
            QueueStatusKind::Expired => "expired",
            QueueStatusKind::SoldOut => "sold_out",
            QueueStatusKind::Left => "left",
            QueueStatusKind::Closed => "closed",
        }
    }

    /// Whether the buyer's journey is over: nothing more will change for them.
    pub fn is_final(self) -> bool {
        !matches!(self, QueueStatusKind::Queued | QueueStatusKind::Held)
    }
}
