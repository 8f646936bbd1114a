//! One buyer's live stream: the entry as last known, folded forward by the buyer's own
//! changes and the sale's counters from the [`LiveHub`], and what the buyer was last told.
//! It decides what the buyer must hear (a new status at once, a new position at most once a
//! second) and re-reads the entry itself only when the hub cannot tell (the entry was read
//! before the sale's feed started, the buyer left elsewhere, or the pre-queue was drawn).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};

use super::models::{QueueStatusKind, QueueStatusView, QueueStreamEvent};
use crate::domain::{EntryStatus, QueueEntry, Sale};
use crate::live::{BuyerChanges, LiveHub, SaleUpdate, Subscription};
use crate::store::{EntryChange, EntryChangeKind, LiveSale, StoreError};

/// A waiting buyer hears of a new position at most this often.
const POSITION_EVERY: Duration = Duration::from_secs(1);
/// How often a stream looks at the sale's counters (position, queue length, sold out,
/// closed) when the buyer's own entry has not changed.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// One buyer's stream: their entry as last known, and what they were last told.
pub(super) struct BuyerJourney {
    live: LiveHub,
    subscription: Subscription,
    changes: BuyerChanges,
    sale: Sale,
    entry: QueueEntry,
    /// The sale's event sequence the entry reflects.
    seen: i64,
    /// Whether the entry was checked against where the sale's feed started.
    start_checked: bool,
    told: Option<QueueStatusView>,
    position_told_at: Instant,
    over: bool,
    /// End at `held` too (`until=held`).
    pub end_when_held: bool,
}

impl BuyerJourney {
    /// `changes` must have been taken before `entry` was read (at sequence `seen`).
    pub fn new(
        live: LiveHub,
        subscription: Subscription,
        changes: BuyerChanges,
        sale: Sale,
        (entry, seen): (QueueEntry, i64),
    ) -> Self {
        Self {
            live,
            subscription,
            changes,
            sale,
            entry,
            seen,
            start_checked: false,
            told: None,
            position_told_at: Instant::now(),
            over: false,
            end_when_held: false,
        }
    }

    pub fn into_stream(self) -> BoxStream<'static, QueueStreamEvent> {
        stream::unfold(self, |mut journey| async move {
            let message = journey.next_message().await?;
            Some((message, journey))
        })
        .boxed()
    }

    /// The next thing the buyer must hear; `None` ends the stream.
    ///
    /// It wakes for the buyer's own change at once, and otherwise once a second (or when a
    /// held-back position falls due) to look at the sale's latest counters: a sale-wide
    /// update wakes no stream, so an admission of 500 buyers wakes 500 streams.
    async fn next_message(&mut self) -> Option<QueueStreamEvent> {
        if self.over {
            return None;
        }
        if self.told.is_none() {
            return Some(self.tell("status"));
        }
        loop {
            let tick = self
                .position_due()
                .unwrap_or_else(|| tokio::time::Instant::now() + LOOK_EVERY);
            tokio::select! {
                changed = self.changes.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(tick) => {}
            }
            match self.catch_up().await {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                Err(()) => return None,
            }
        }
    }

    /// Folds the sale's latest counters and the buyer's own change into the entry; a
    /// message if the buyer must hear of it. `Err` ends the stream (the sale or the entry
    /// is gone, or the database failed: the client reconnects).
    async fn catch_up(&mut self) -> Result<Option<QueueStreamEvent>, ()> {
        // The sale first: a feed hands out a buyer's change before the sale it read with
        // it, so the change read next is at least as new as this sale.
        let latest = self.subscription.updates.borrow_and_update().clone();
        let live = match latest.as_deref() {
            Some(SaleUpdate { live: Some(live) }) => Some(live.clone()),
            Some(SaleUpdate { live: None }) => return Err(()),
            None => None,
        };
        if !self.start_checked
            && let Some(starts_after) = self.subscription.starts_after()
        {
            self.start_checked = true;
            if starts_after > self.seen {
                // Read before the feed started handing out changes: some may be missed.
                self.reread().await?;
            }
        }
        let change = self.changes.changes.borrow_and_update().clone();
        if let Some(change) = change.filter(|change| change.sequence > self.seen) {
            self.apply(&change);
        }
        if let Some(live) = live {
            self.sale = live.sale.clone();
            if self.needs_reread(&live) {
                self.reread().await?;
            }
            self.take_counters(&live);
        }
        Ok(self.message_if_news())
    }

    fn apply(&mut self, change: &EntryChange) {
        self.entry.status = match change.kind {
            EntryChangeKind::HoldGranted => EntryStatus::Held,
            EntryChangeKind::HoldExpired => EntryStatus::Expired,
            EntryChangeKind::HoldReleased => EntryStatus::Left,
            EntryChangeKind::Purchased => EntryStatus::Purchased,
        };
        if change.kind == EntryChangeKind::HoldGranted {
            self.entry.hold_expires_at = change.hold_expires_at;
        }
        self.seen = change.sequence;
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
        self.live
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
            sequence: self.seen,
            status,
        }
    }

    /// Reads the buyer's entry again (one query); an entry gone ends the stream.
    async fn reread(&mut self) -> Result<(), ()> {
        let read: Result<_, StoreError> = self
            .live
            .store()
            .live_entry(self.sale.id, &self.entry.user_id)
            .await;
        match read {
            Ok(Some((entry, seen))) => {
                self.entry = entry;
                self.seen = seen;
                Ok(())
            }
            Ok(None) | Err(_) => Err(()),
        }
    }
}
