//! The waiting room of a queued sale: entries, positions and the polling hint.

use chrono::{DateTime, Utc};

/// Default number of buyers that may wait in one sale's queue.
pub const DEFAULT_QUEUE_CAPACITY: i32 = 100_000;

/// Where a buyer stands in a queued sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// Waiting for a hold.
    Queued,
    /// Holding the entry's units until `hold_expires_at`.
    Held,
    /// Confirmed: bought.
    Purchased,
    /// The hold ran out; the unit went back to stock.
    Expired,
    /// Left the queue or released the hold.
    Left,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Queued => "queued",
            EntryStatus::Held => "held",
            EntryStatus::Purchased => "purchased",
            EntryStatus::Expired => "expired",
            EntryStatus::Left => "left",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "queued" => Some(EntryStatus::Queued),
            "held" => Some(EntryStatus::Held),
            "purchased" => Some(EntryStatus::Purchased),
            "expired" => Some(EntryStatus::Expired),
            "left" => Some(EntryStatus::Left),
            _ => None,
        }
    }
}

/// One buyer's queue entry with the queue's counters, read in one statement.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub user_id: String,
    /// The place in line; `None` while a pre-queued buyer waits for the draw to reach them.
    pub ticket: Option<i64>,
    pub prequeue: bool,
    pub status: EntryStatus,
    pub joined_at: DateTime<Utc>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Units asked for at the join: the hold reserves them, the confirm buys them.
    pub quantity: i32,
    /// The variant asked for at the join (its code), in a sale with variants.
    pub variant: Option<String>,
    /// The highest ticket admitted so far in this sale.
    pub admitted_upto: i64,
    /// Buyers waiting in this sale now.
    pub waiting: i32,
    /// Whether the pre-queue's order is drawn: every pre-queued buyer has a ticket (the
    /// sale has opened and the draw's last slice is dealt).
    pub shuffled: bool,
    /// Holds granted per second since the first admission, if any.
    pub admission_rate: Option<f64>,
}

impl QueueEntry {
    /// How many tickets are ahead of this one and not yet admitted (it may count buyers who
    /// left and have not been passed yet, so it is an upper bound). `None` while the buyer
    /// waits in the pre-queue for the draw, dealt only from the opening on. It never grows
    /// while the buyer waits: the ticket, once dealt, is fixed and `admitted_upto` only
    /// rises.
    pub fn position(&self) -> Option<i64> {
        let ticket = self.ticket.filter(|_| self.status == EntryStatus::Queued)?;
        Some((ticket - self.admitted_upto - 1).max(0))
    }

    /// Seconds until this buyer's turn at the recent admission rate.
    pub fn estimated_wait_seconds(&self) -> Option<f64> {
        let position = self.position()?;
        let rate = self.admission_rate.filter(|rate| *rate > 0.0)?;
        Some(((position + 1) as f64 / rate * 10.0).round() / 10.0)
    }

    /// How long the client should wait before polling again.
    pub fn poll_after_ms(&self) -> u32 {
        match self.status {
            EntryStatus::Queued => poll_after_ms(self.position()),
            EntryStatus::Held => 1_000,
            _ => 5_000,
        }
    }
}

/// The polling hint for a buyer `position` places from the front: 500 ms at the front,
/// growing by 20 ms a place, at most 10 s; 2 s in the pre-queue.
pub fn poll_after_ms(position: Option<i64>) -> u32 {
    match position {
        None => 2_000,
        Some(position) => (500 + position.clamp(0, 10_000) * 20).min(10_000) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ticket: i64, admitted_upto: i64) -> QueueEntry {
        QueueEntry {
            user_id: "u".into(),
            ticket: Some(ticket),
            prequeue: false,
            status: EntryStatus::Queued,
            joined_at: Utc::now(),
            hold_expires_at: None,
            quantity: 1,
            variant: None,
            admitted_upto,
            waiting: 10,
            shuffled: true,
            admission_rate: Some(2.0),
        }
    }

    #[test]
    fn the_position_counts_the_tickets_ahead_and_only_shrinks() {
        let mut last = i64::MAX;
        for admitted_upto in 0..=12 {
            let position = entry(11, admitted_upto).position().expect("queued");
            assert!(position <= last);
            last = position;
        }
        assert_eq!(entry(11, 0).position(), Some(10));
        assert_eq!(entry(11, 10).position(), Some(0));
        assert_eq!(entry(11, 12).position(), Some(0), "never negative");
    }

    #[test]
    fn a_prequeued_buyer_has_no_position_until_the_draw_deals_their_ticket() {
        let mut waiting = entry(3, 0);
        waiting.prequeue = true;
        waiting.shuffled = false;
        waiting.ticket = None;
        assert_eq!(waiting.position(), None);
        assert_eq!(waiting.poll_after_ms(), 2_000);
        waiting.ticket = Some(3);
        assert_eq!(waiting.position(), Some(2), "dealt before the draw ends");
    }

    #[test]
    fn far_back_buyers_poll_less_often() {
        assert_eq!(poll_after_ms(Some(0)), 500);
        assert!(poll_after_ms(Some(100)) > poll_after_ms(Some(10)));
        assert_eq!(poll_after_ms(Some(1_000_000)), 10_000);
    }

    #[test]
    fn the_wait_estimate_follows_the_admission_rate() {
        assert_eq!(entry(11, 0).estimated_wait_seconds(), Some(5.5));
        let mut unknown = entry(11, 0);
        unknown.admission_rate = None;
        assert_eq!(unknown.estimated_wait_seconds(), None);
    }
}
