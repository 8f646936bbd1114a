//! The live hub: what makes thousands of open buyer streams cheap.
//!
//! Each instance LISTENs for sale changes on one connection. A sale that has open streams
//! here has one refresher task: on each notification (and at least every `refresh_every`,
//! for what changes without an event: a sale ending by the clock, the queue length) it
//! reads the sale once and the sale's new events once. The sale's counters go into one
//! `watch` that every stream of the sale may look at; each buyer's own change goes only to
//! that buyer's streams. So an instance's queries grow with the sales it watches, never with
//! the streams it serves, and an admission of 500 buyers wakes those 500 streams, not every
//! stream of the sale.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use uuid::Uuid;

mod clients;
mod listener;

use clients::{ClientSlot, ClientStreams};

use crate::metrics::Metrics;
use crate::store::{EntryChange, LiveSale, Store};

/// The channel the events trigger notifies (migration `20261122000005_live.sql`).
pub const SALE_CHANGES_CHANNEL: &str = "flashsale_sale_changes";
/// Refreshes of one sale start at least this far apart: a burst of notifications costs at
/// most one read per gap.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);
/// Events read per query while catching up.
const CHANGE_PAGE: i64 = 5_000;
/// How long a failing refresher waits before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The latest read of a sale, for every stream of it to look at.
#[derive(Debug)]
pub struct SaleUpdate {
    /// The sale now; `None` once it no longer exists.
    pub live: Option<LiveSale>,
}

/// One read: the sale, and the last change of each buyer among its new events.
struct Read {
    update: SaleUpdate,
    changes: HashMap<String, EntryChange>,
    /// The highest sequence read.
    through: i64,
}

/// How the hub is tuned.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Streams one instance serves at once (buyer and public); past it, new ones are refused.
    pub max_streams: usize,
    /// Of those, streams one client (an IP, an IPv6 /64) may hold; 0 = no cap.
    pub max_streams_per_client: usize,
    /// The longest a watched sale goes without a read (without a notification).
    pub refresh_every: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_streams: 20_000,
            max_streams_per_client: 1_000,
            refresh_every: Duration::from_secs(1),
        }
    }
}

/// The in-instance fan-out of sale changes to open streams.
#[derive(Clone)]
pub struct LiveHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    metrics: Metrics,
    config: LiveConfig,
    streams: Arc<Semaphore>,
    clients: Arc<ClientStreams>,
    feeds: Mutex<HashMap<Uuid, Weak<SaleFeed>>>,
}

/// The updates of one sale, alive while a stream holds it.
struct SaleFeed {
    wake: Arc<Notify>,
    latest: watch::Sender<Option<Arc<SaleUpdate>>>,
    /// The sequence after which this feed hands out buyers' changes (set by its first
    /// read): a buyer whose entry was read at a lower one may have missed some.
    starts_after: OnceLock<i64>,
    /// The buyers with a stream here, each with their last change.
    buyers: Mutex<HashMap<String, watch::Sender<Option<EntryChange>>>>,
}

/// A stream's seat: the sale's updates, and its share of the instance's stream limit.
pub struct Subscription {
    pub updates: watch::Receiver<Option<Arc<SaleUpdate>>>,
    feed: Arc<SaleFeed>,
    _permit: OwnedSemaphorePermit,
    _client: Option<ClientSlot>,
    _open: OpenStream,
}

impl Subscription {
    /// The changes of one buyer's entry from now on. Take it before reading the entry: every
    /// change committed after that read then reaches it (see [`Subscription::starts_after`]).
    pub fn buyer(&self, user_id: &str) -> BuyerChanges {
        let mut buyers = lock(&self.feed.buyers);
        let changes = buyers
            .entry(user_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        BuyerChanges {
            changes,
            feed: self.feed.clone(),
            user_id: user_id.to_string(),
        }
    }

    /// The sequence after which the sale's feed hands out changes, once it has read the
    /// sale: an entry read at a lower sequence must be read again.
    pub fn starts_after(&self) -> Option<i64> {
        self.feed.starts_after.get().copied()
    }
}

/// One buyer's changes, pushed to their streams only.
pub struct BuyerChanges {
    pub changes: watch::Receiver<Option<EntryChange>>,
    feed: Arc<SaleFeed>,
    user_id: String,
}

impl Drop for BuyerChanges {
    fn drop(&mut self) {
        let mut buyers = lock(&self.feed.buyers);
        // Our own receiver still counts here: one means nobody else follows this buyer.
        if buyers
            .get(&self.user_id)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            buyers.remove(&self.user_id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamsFull {
    /// The instance already serves `max_streams` streams.
    Instance,
    /// This client already holds `max_streams_per_client` of them.
    Client,
}

/// Counts an open stream for as long as it lives (dropped when the client goes).
pub struct OpenStream(prometheus::IntGauge);

impl OpenStream {
    pub fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl LiveHub {
    pub fn new(store: Store, metrics: Metrics, config: LiveConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                metrics,
                streams: Arc::new(Semaphore::new(config.max_streams)),
                clients: ClientStreams::new(config.max_streams_per_client),
                config,
                feeds: Mutex::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A seat on the sale's updates, starting its refresher if it is the first here; refused
    /// when this client (`client`, as `api::rate_limit::client_key` groups addresses) or the
    /// instance has no seat left.
    pub fn subscribe(
        &self,
        sale_id: Uuid,
        client: Option<IpAddr>,
    ) -> Result<Subscription, StreamsFull> {
        let client = match client {
            Some(client) => Some(self.inner.clients.take(client).ok_or(StreamsFull::Client)?),
            None => None,
        };
        let permit = self
            .inner
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| StreamsFull::Instance)?;
        let feed = self.feed(sale_id);
        Ok(Subscription {
            updates: feed.latest.subscribe(),
            feed,
            _permit: permit,
            _client: client,
            _open: OpenStream::new(&self.inner.metrics.streams_open),
        })
    }

    fn feed(&self, sale_id: Uuid) -> Arc<SaleFeed> {
        let mut feeds = lock(&self.inner.feeds);
        if let Some(feed) = feeds.get(&sale_id).and_then(Weak::upgrade) {
            return feed;
        }
        let feed = Arc::new(SaleFeed {
            wake: Arc::new(Notify::new()),
            latest: watch::channel(None).0,
            starts_after: OnceLock::new(),
            buyers: Mutex::default(),
        });
        feeds.insert(sale_id, Arc::downgrade(&feed));
        tokio::spawn(refresh_loop(
            self.inner.clone(),
            sale_id,
            Arc::downgrade(&feed),
            feed.wake.clone(),
        ));
        feed
    }

    /// Wakes the refresher of the sale, if this instance watches it.
    fn wake(&self, sale_id: Uuid) {
        let feeds = lock(&self.inner.feeds);
        if let Some(feed) = feeds.get(&sale_id).and_then(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }

    /// Wakes every refresher: notifications may have been lost.
    fn wake_all(&self) {
        let feeds = lock(&self.inner.feeds);
        for feed in feeds.values().filter_map(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }
}

/// Reads the sale on each wake-up and hands it out, until no stream holds the feed.
async fn refresh_loop(inner: Arc<Inner>, sale_id: Uuid, feed: Weak<SaleFeed>, wake: Arc<Notify>) {
    let mut seen: Option<i64> = None;
    // Failing since (logged once, and once when it reads again).
    let mut failing: Option<tokio::time::Instant> = None;
    loop {
        let Some(live_feed) = feed.upgrade() else {
            break;
        };
        match read_update(&inner.store, sale_id, seen).await {
            Ok(read) => {
                if let Some(since) = failing.take() {
                    let down_s = since.elapsed().as_secs();
                    tracing::info!(sale = %sale_id, down_s, "live refresh: reading again");
                }
                inner.metrics.live_refreshes.inc();
                seen = Some(read.through);
                let gone = read.update.live.is_none();
                publish(&live_feed, read);
                if gone {
                    break;
                }
            }
            Err(err) => {
                if failing.is_none() {
                    failing = Some(tokio::time::Instant::now());
                    tracing::warn!(sale = %sale_id, error = %err, "live refresh failed; retrying quietly");
                } else {
                    tracing::debug!(sale = %sale_id, error = %err, "live refresh still failing");
                }
                drop(live_feed);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        }
        drop(live_feed);
        tokio::time::sleep(MIN_REFRESH_GAP).await;
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(inner.config.refresh_every) => {}
        }
    }
    let mut feeds = lock(&inner.feeds);
    if feeds
        .get(&sale_id)
        .is_some_and(|entry| entry.strong_count() == 0)
    {
        feeds.remove(&sale_id);
    }
}

/// Each buyer's change to that buyer's streams (only buyers with a stream here), then the
/// sale to every stream.
fn publish(feed: &SaleFeed, read: Read) {
    feed.starts_after.get_or_init(|| read.through);
    if !read.changes.is_empty() {
        let buyers = lock(&feed.buyers);
        for (user_id, change) in read.changes {
            if let Some(sender) = buyers.get(&user_id) {
                sender.send_replace(Some(change));
            }
        }
    }
    feed.latest.send_replace(Some(Arc::new(read.update)));
}

/// The sale now and its buyers' changes since `seen` (none on the first read, which only
/// sets where the changes start).
async fn read_update(
    store: &Store,
    sale_id: Uuid,
    seen: Option<i64>,
) -> Result<Read, crate::store::StoreError> {
    let Some(live) = store.live_sale(sale_id).await? else {
        return Ok(Read {
            update: SaleUpdate { live: None },
            changes: HashMap::new(),
            through: seen.unwrap_or(0),
        });
    };
    let mut changes = HashMap::new();
    let mut through = seen.unwrap_or(live.last_sequence);
    // Only a waiting room's buyers and a raffle's entrants follow their own entries; an
    // instant sale's streams need the counters alone.
    if seen.is_some() && (live.queue.is_some() || live.raffle.is_some()) {
        loop {
            let page = store.entry_changes(sale_id, through, CHANGE_PAGE).await?;
            through = page.through.unwrap_or(through);
            for change in page.changes {
                changes.insert(change.user_id.clone(), change);
            }
            if !page.full {
                break;
            }
        }
    } else {
        through = through.max(live.last_sequence);
    }
    Ok(Read {
        update: SaleUpdate { live: Some(live) },
        changes,
        through,
    })
}
