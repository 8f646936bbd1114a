//! One raffle entrant's live stream: the entry as last known, folded forward by the
//! entrant's own changes (`raffle.selected`, `.expired`, `.withdrawn`, `.not_selected`, and
//! the confirm's `purchase.created`) and the draw's seed from the sale's read, and what the
//! entrant was last told. It re-reads the entry only when the hub cannot tell: the entry was
//! read before the sale's feed started, the draw completed (the ranking gives every entrant
//! a position without an event each), or a change showed the draw before a read of the sale
//! showed its seed.

use super::follow::{Follow, Journey};
use crate::api::models::{RaffleEntryView, RaffleStreamEvent};
use crate::domain::{RaffleEntry, RaffleStatus};
use crate::store::{EntryChange, EntryChangeKind, LiveSale};

/// One entrant's stream.
pub(in crate::api) struct RaffleJourney {
    follow: Follow,
    sale_id: uuid::Uuid,
    entry: RaffleEntry,
    /// The status and draw position last told.
    told: Option<(RaffleStatus, Option<i64>)>,
    over: bool,
    /// End at `selected` too (`until=selected`).
    pub end_when_selected: bool,
}

impl RaffleJourney {
    /// `follow` must have been taken before `entry` was read (at `follow.seen`).
    pub fn new(follow: Follow, sale_id: uuid::Uuid, entry: RaffleEntry) -> Self {
        Self {
            follow,
            sale_id,
            entry,
            told: None,
            over: false,
            end_when_selected: false,
        }
    }

    /// The message `event` with the entry now, remembered as told.
    fn tell(&mut self, event: &'static str) -> RaffleStreamEvent {
        let status = self.entry.status;
        self.over =
            status.is_final() || (self.end_when_selected && status == RaffleStatus::Selected);
        self.told = Some((status, self.entry.draw_position));
        RaffleStreamEvent {
            event,
            sequence: self.follow.seen,
            entry: RaffleEntryView::from(&self.entry),
        }
    }
}

impl Journey for RaffleJourney {
    type Message = RaffleStreamEvent;

    fn follow(&mut self) -> &mut Follow {
        &mut self.follow
    }

    fn is_over(&self) -> bool {
        self.over
    }

    fn hello(&mut self) -> Option<RaffleStreamEvent> {
        self.told.is_none().then(|| self.tell("status"))
    }

    async fn reread(&mut self) -> Result<(), ()> {
        let store = self.follow.live.store().clone();
        let read = store.live_raffle_entry(self.sale_id, &self.entry.user_id);
        self.entry = self.follow.reread(read).await?;
        Ok(())
    }

    fn apply(&mut self, change: &EntryChange) {
        let status = match change.kind {
            EntryChangeKind::Raffle(status) => status,
            // A raffle's purchase is its confirmed selection.
            EntryChangeKind::Purchased => RaffleStatus::Purchased,
            // A queue's: never in a raffle.
            _ => return,
        };
        self.entry.status = status;
        if status == RaffleStatus::Selected {
            self.entry.hold_expires_at = change.hold_expires_at;
        }
        self.entry.draw_position = change.draw_position.or(self.entry.draw_position);
    }

    async fn take_sale(&mut self, live: LiveSale) -> Result<(), ()> {
        let Some(raffle) = live.raffle else {
            return Ok(());
        };
        self.entry.draw_seed = self.entry.draw_seed.or(raffle.draw_seed);
        // The draw ranked this entrant without an event of theirs: only a read tells where.
        let ranked_unseen = raffle.drawn
            && self.entry.status == RaffleStatus::Entered
            && self.entry.draw_position.is_none();
        // A change of theirs (read after the sale) shows the draw, but this read of the
        // sale is older than the draw's start, so it has no seed: a read has both.
        let seed_unseen = self.entry.draw_position.is_some() && self.entry.draw_seed.is_none();
        if ranked_unseen || seed_unseen {
            self.reread().await?;
        }
        Ok(())
    }

    fn message_if_news(&mut self) -> Option<RaffleStreamEvent> {
        let (status, position) = self.told?;
        if self.entry.status != status {
            return Some(self.tell(self.entry.status.as_str()));
        }
        (self.entry.draw_position != position).then(|| self.tell("drawn"))
    }
}
