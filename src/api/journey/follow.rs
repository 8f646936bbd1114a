//! What every buyer's stream does alike, a queue's or a raffle's: wait for the buyer's own
//! change (or a timer), take the sale's latest read from the [`LiveHub`], say when the entry
//! was read too early for the hub's changes to complete it, and hand out the buyer's change
//! newer than the entry. Each journey folds these into its own entry and decides what the
//! buyer must hear.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};

use crate::live::{BuyerChanges, LiveHub, SaleUpdate, Subscription};
use crate::store::{EntryChange, LiveSale, StoreError};

/// One buyer's seat on the hub: the sale's updates, the buyer's changes, and how far the
/// entry the journey holds is known.
pub(in crate::api) struct Follow {
    pub live: LiveHub,
    subscription: Subscription,
    changes: BuyerChanges,
    /// The sale's event sequence the entry reflects.
    pub seen: i64,
    /// Whether the entry was checked against where the sale's feed started.
    start_checked: bool,
}

/// The sale as the hub last read it, for a journey to fold in.
pub(in crate::api) struct SaleNow {
    /// `None` until the sale's feed has read it once.
    pub live: Option<LiveSale>,
    /// The entry was read before the feed started handing out changes: some may be
    /// missed, so read it again.
    pub stale: bool,
}

/// How often a stream looks at the sale when the buyer's own entry has not changed.
pub(in crate::api) const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A buyer's stream, message by message: the status at once, then what the journey makes
/// of each wake-up, until it has told the end.
///
/// It wakes for the buyer's own change at once, and otherwise at [`Journey::look_at`] to
/// look at the sale's latest read: a sale-wide update wakes no stream, so an admission or a
/// selection of 500 buyers wakes those 500 streams.
pub(in crate::api) trait Journey: Send + Sized + 'static {
    type Message: Send + 'static;

    fn follow(&mut self) -> &mut Follow;

    /// The buyer has been told the end: nothing more follows.
    fn is_over(&self) -> bool;

    /// The first message (the status now), once; `None` after.
    fn hello(&mut self) -> Option<Self::Message>;

    /// Reads the buyer's entry again (one query); `Err` (the entry is gone, or the
    /// database failed) ends the stream: the client reconnects.
    fn reread(&mut self) -> impl Future<Output = Result<(), ()>> + Send;

    /// Folds one change of the buyer's own into the entry.
    fn apply(&mut self, change: &EntryChange);

    /// Folds the sale's latest read into the entry, reading the entry again when only a
    /// read can tell (`Err` ends the stream, as for [`Journey::reread`]).
    fn take_sale(&mut self, live: LiveSale) -> impl Future<Output = Result<(), ()>> + Send;

    /// A message, if what the buyer was last told is no longer what the entry says.
    fn message_if_news(&mut self) -> Option<Self::Message>;

    /// When to look at the sale again if the buyer's entry does not change first.
    fn look_at(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + LOOK_EVERY
    }

    /// The next thing the buyer must hear; `None` ends the stream.
    fn next_message(&mut self) -> impl Future<Output = Option<Self::Message>> + Send {
        async move {
            if self.is_over() {
                return None;
            }
            if let Some(hello) = self.hello() {
                return Some(hello);
            }
            loop {
                let look_at = self.look_at();
                if !self.follow().wait(look_at).await {
                    return None;
                }
                match self.catch_up().await {
                    Ok(Some(message)) => return Some(message),
                    Ok(None) => {}
                    Err(()) => return None,
                }
            }
        }
    }

    /// The sale's latest read and the buyer's own change, folded into the entry; a message
    /// if the buyer must hear of it. `Err` ends the stream (the sale or the entry is gone,
    /// or the database failed: the client reconnects).
    fn catch_up(&mut self) -> impl Future<Output = Result<Option<Self::Message>, ()>> + Send {
        async move {
            let now = self.follow().sale()?;
            if now.stale {
                self.reread().await?;
            }
            if let Some(change) = self.follow().change() {
                self.apply(&change);
            }
            if let Some(live) = now.live {
                self.take_sale(live).await?;
            }
            Ok(self.message_if_news())
        }
    }

    fn into_stream(self) -> BoxStream<'static, Self::Message> {
        stream::unfold(self, |mut journey| async move {
            let message = journey.next_message().await?;
            Some((message, journey))
        })
        .boxed()
    }
}

impl Follow {
    /// `changes` must have been taken (from `subscription`) before the entry was read at
    /// sequence `seen`.
    pub fn new(
        live: LiveHub,
        subscription: Subscription,
        changes: BuyerChanges,
        seen: i64,
    ) -> Self {
        Self {
            live,
            subscription,
            changes,
            seen,
            start_checked: false,
        }
    }

    /// Waits for the buyer's own change or for `until`; `false` when the buyer's changes
    /// are gone (the stream ends).
    pub async fn wait(&mut self, until: tokio::time::Instant) -> bool {
        tokio::select! {
            changed = self.changes.changes.changed() => changed.is_ok(),
            _ = tokio::time::sleep_until(until) => true,
        }
    }

    /// The sale's latest read; `Err` once the sale is gone. Take it before
    /// [`Follow::change`]: a feed hands out a buyer's change before the sale it read with
    /// it, so the change taken next is at least as new as this sale.
    pub fn sale(&mut self) -> Result<SaleNow, ()> {
        let latest = self.subscription.updates.borrow_and_update().clone();
        let live = match latest.as_deref() {
            Some(SaleUpdate { live: Some(live) }) => Some(live.clone()),
            Some(SaleUpdate { live: None }) => return Err(()),
            None => None,
        };
        let mut stale = false;
        if !self.start_checked
            && let Some(starts_after) = self.subscription.starts_after()
        {
            self.start_checked = true;
            stale = starts_after > self.seen;
        }
        Ok(SaleNow { live, stale })
    }

    /// The buyer's last change, if the entry does not show it yet (it then counts as seen).
    pub fn change(&mut self) -> Option<EntryChange> {
        let change = self.changes.changes.borrow_and_update().clone();
        let change = change.filter(|change| change.sequence > self.seen)?;
        self.seen = change.sequence;
        Some(change)
    }

    /// The entry read again by `read` (one query), with the sequence it was read at; an
    /// entry gone or a failed read is `Err` (the stream ends: the client reconnects).
    pub async fn reread<T>(
        &mut self,
        read: impl Future<Output = Result<Option<(T, i64)>, StoreError>>,
    ) -> Result<T, ()> {
        match read.await {
            Ok(Some((entry, seen))) => {
                self.seen = seen;
                Ok(entry)
            }
            Ok(None) | Err(_) => Err(()),
        }
    }
}
