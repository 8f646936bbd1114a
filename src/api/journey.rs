//! One buyer's live stream in a queue: the entry as last known, folded forward by the
//! buyer's own changes and the sale's counters from the [`LiveHub`](crate::live::LiveHub),
//! and what the buyer was last told. It decides what the buyer must hear (a new status at
//! once, a new position at most once a second) and re-reads the entry itself only when the
//! hub cannot tell (the entry was read before the sale's feed started, the buyer left
//! elsewhere, or the pre-queue was drawn). What every buyer's stream does alike is in
//! `follow.rs`; a raffle entrant's stream is `raffle.rs`.

use std::time::{Duration, Instant};

use super::models::{QueueStatusKind, QueueStatusView, QueueStreamEvent};
use crate::domain::{EntryStatus, QueueEntry, Sale};
use crate::store::{EntryChange, EntryChangeKind, LiveSale};

mod follow;
mod raffle;

use follow::LOOK_EVERY;
pub(super) use follow::{Follow, Journey};
pub(super) use raffle::RaffleJourney;

/// A waiting buyer hears of a new position at most this often.
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// One buyer's stream: their entry as last known, and what they were last told.
pub(super) struct BuyerJourney {
    follow: Follow,
    sale: Sale,
    entry: QueueEntry,
    told: Option<QueueStatusView>,
    position_told_at: Instant,
    over: bool,
    /// End at `held` too (`until=held`).
    pub end_when_held: bool,
}

impl BuyerJourney {
    /// `follow` must have been taken before `entry` was read (at `follow.seen`).
    pub fn new(follow: Follow, sale: Sale, entry: QueueEntry) -> Self {
        Self {
            follow,
            sale,
            entry,
            told: None,
            position_told_at: Instant::now(),
            over: false,
            end_when_held: false,
        }
    }

    /// A waiting entry the front has passed without a grant in any update (the buyer left
    /// elsewhere), or a pre-queue entry whose order was just drawn: only a read tells.
    fn needs_reread(&self, live: &LiveSale) -> bool {
        let Some(queue) = live.queue else {
            return false;
        };
        self.entry.status == EntryStatus::Queued
            && match self.entry.ticket {
                // The draw is complete, so the ticket has been dealt.
                None => queue.shuffled,
                Some(ticket) => queue.admitted_upto >= ticket,
            }
    }

    fn take_counters(&mut self, live: &LiveSale) {
        if let Some(queue) = live.queue {
            // The front only moves forward; an older read must not move it back.
            self.entry.admitted_upto = self.entry.admitted_upto.max(queue.admitted_upto);
            self.entry.waiting = queue.waiting;
            self.entry.shuffled |= queue.shuffled;
            self.entry.admission_rate = queue.admission_rate;
        }
    }

    /// When a position the buyer has not heard yet may be told.
    fn position_due(&self) -> Option<tokio::time::Instant> {
        let told = self.told.as_ref()?;
        let view = QueueStatusView::new(&self.entry, Some(&self.sale));
        (view.status == QueueStatusKind::Queued && view.position != told.position)
            .then(|| tokio::time::Instant::from_std(self.position_told_at + POSITION_EVERY))
    }

    /// From the grant (its expiry less the hold's length, both the database's) to now,
    /// however the stream learnt of it (an update or a re-read).
    fn observe_hold_push(&self) {
        let Some(expires) = self.entry.hold_expires_at else {
            return;
        };
        let granted = expires - chrono::Duration::seconds(i64::from(self.sale.hold_seconds));
        let delay = (chrono::Utc::now() - granted)
            .num_microseconds()
            .unwrap_or(0);
        self.follow
            .live
            .metrics()
            .hold_push
            .observe(delay.max(0) as f64 / 1e6);
    }

    /// The message `event` with the entry's status now, remembered as told.
    fn tell(&mut self, event: &'static str) -> QueueStreamEvent {
        let status = QueueStatusView::new(&self.entry, Some(&self.sale));
        self.over = status.status.is_final()
            || (self.end_when_held && status.status == QueueStatusKind::Held);
        self.position_told_at = Instant::now();
        self.told = Some(status.clone());
        QueueStreamEvent {
            event,
            sequence: self.follow.seen,
            status,
        }
    }
}

impl Journey for BuyerJourney {
    type Message = QueueStreamEvent;

    fn follow(&mut self) -> &mut Follow {
        &mut self.follow
    }

    fn is_over(&self) -> bool {
        self.over
    }

    fn hello(&mut self) -> Option<QueueStreamEvent> {
        self.told.is_none().then(|| self.tell("status"))
    }

    async fn reread(&mut self) -> Result<(), ()> {
        let store = self.follow.live.store().clone();
        let read = store.live_entry(self.sale.id, &self.entry.user_id);
        self.entry = self.follow.reread(read).await?;
        Ok(())
    }

    fn apply(&mut self, change: &EntryChange) {
        self.entry.status = match change.kind {
            EntryChangeKind::HoldGranted => EntryStatus::Held,
            EntryChangeKind::HoldExpired => EntryStatus::Expired,
            EntryChangeKind::HoldReleased => EntryStatus::Left,
            EntryChangeKind::Purchased => EntryStatus::Purchased,
            // A raffle's: never in a queue.
            EntryChangeKind::Raffle(_) => return,
        };
        if change.kind == EntryChangeKind::HoldGranted {
            self.entry.hold_expires_at = change.hold_expires_at;
        }
    }

    async fn take_sale(&mut self, live: LiveSale) -> Result<(), ()> {
        self.sale = live.sale.clone();
        if self.needs_reread(&live) {
            self.reread().await?;
        }
        self.take_counters(&live);
        Ok(())
    }

    fn message_if_news(&mut self) -> Option<QueueStreamEvent> {
        let view = QueueStatusView::new(&self.entry, Some(&self.sale));
        let told = self.told.as_ref()?;
        if view.status != told.status {
            if view.status == QueueStatusKind::Held {
                self.observe_hold_push();
            }
            return Some(self.tell(view.status.as_str()));
        }
        let moved = view.status == QueueStatusKind::Queued && view.position != told.position;
        (moved && self.position_told_at.elapsed() >= POSITION_EVERY).then(|| self.tell("position"))
    }

    /// A held-back position falling due wakes the stream too.
    fn look_at(&self) -> tokio::time::Instant {
        self.position_due()
            .unwrap_or_else(|| tokio::time::Instant::now() + LOOK_EVERY)
    }
}
