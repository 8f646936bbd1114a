//! The live hub: what makes thousands of open buyer streams cheap.
//!
//! Each instance LISTENs for sale changes on one connection. A sale that has open streams
//! here has one refresher task: on each notification (and at least every `refresh_every`,
//! for what changes without an event: a sale ending by the clock, the queue length) it
//! reads the sale once and the sale's new events once, and broadcasts the result to every
//! stream of that sale. So an instance's queries grow with the sales it watches, never with
//! the streams it serves. A stream decides on its own what of an update its client must hear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{EntryChange, LiveSale, Store};

/// The channel the events trigger notifies (migration `20261122000005_live.sql`).
pub const SALE_CHANGES_CHANNEL: &str = "flashsale_sale_changes";
/// Refreshes of one sale start at least this far apart: a burst of notifications costs at
/// most one read per gap.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(50);
/// Events read per query while catching up.
const CHANGE_PAGE: i64 = 5_000;
/// Updates a slow stream may fall behind before it must re-read its own state.
const UPDATE_BUFFER: usize = 256;
/// How long a failing refresher waits before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One read of a sale, fanned out to its streams.
#[derive(Debug)]
pub struct SaleUpdate {
    /// The sale now; `None` once it no longer exists.
    pub live: Option<LiveSale>,
    /// The changes of buyers' entries with a sequence in `(from, through]`, the last one of
    /// each buyer. A stream that has seen less than `from` missed some and must re-read.
    pub changes: HashMap<String, EntryChange>,
    pub from: i64,
    pub through: i64,
}

/// How the hub is tuned.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Streams one instance serves at once (buyer and public); past it, new ones are refused.
    pub max_streams: usize,
    /// The longest a watched sale goes without a read (without a notification).
    pub refresh_every: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_streams: 20_000,
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
    feeds: Mutex<HashMap<Uuid, Weak<SaleFeed>>>,
}

/// The updates of one sale, alive while a stream holds it.
struct SaleFeed {
    wake: Arc<Notify>,
    updates: broadcast::Sender<Arc<SaleUpdate>>,
}

/// A stream's seat: its updates, and its share of the instance's stream limit.
pub struct Subscription {
    pub updates: broadcast::Receiver<Arc<SaleUpdate>>,
    _feed: Arc<SaleFeed>,
    _permit: OwnedSemaphorePermit,
    _open: OpenStream,
}

/// The instance already serves `max_streams` streams.
#[derive(Debug)]
pub struct StreamsFull;

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

    /// A seat on the sale's updates, starting its refresher if it is the first here.
    pub fn subscribe(&self, sale_id: Uuid) -> Result<Subscription, StreamsFull> {
        let permit = self
            .inner
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| StreamsFull)?;
        let feed = self.feed(sale_id);
        Ok(Subscription {
            updates: feed.updates.subscribe(),
            _feed: feed,
            _permit: permit,
            _open: OpenStream::new(&self.inner.metrics.streams_open),
        })
    }

    fn feed(&self, sale_id: Uuid) -> Arc<SaleFeed> {
        let mut feeds = self
            .inner
            .feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(feed) = feeds.get(&sale_id).and_then(Weak::upgrade) {
            return feed;
        }
        let feed = Arc::new(SaleFeed {
            wake: Arc::new(Notify::new()),
            updates: broadcast::channel(UPDATE_BUFFER).0,
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
        let feeds = self
            .inner
            .feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(feed) = feeds.get(&sale_id).and_then(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }

    /// Wakes every refresher: notifications may have been lost.
    fn wake_all(&self) {
        let feeds = self
            .inner
            .feeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for feed in feeds.values().filter_map(Weak::upgrade) {
            feed.wake.notify_one();
        }
    }

    /// Listens for sale changes until `stop`; run it supervised (a broken connection
    /// returns an error and the supervisor starts it again). Without it the streams still
    /// get every change, at most `refresh_every` late.
    pub async fn run_listener(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(self.inner.store.pool()).await?;
        listener.listen(SALE_CHANGES_CHANNEL).await?;
        // Whatever changed while nobody listened.
        self.wake_all();
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(notification) => {
                        self.inner.metrics.live_notifications.inc();
                        if let Ok(sale_id) = Uuid::parse_str(notification.payload()) {
                            self.wake(sale_id);
                        }
                    }
                    // The connection was lost and made again: what came between is lost.
                    None => self.wake_all(),
                },
            }
        }
    }
}

/// Reads the sale on each wake-up and broadcasts it, until no stream holds the feed.
async fn refresh_loop(inner: Arc<Inner>, sale_id: Uuid, feed: Weak<SaleFeed>, wake: Arc<Notify>) {
    let mut seen: Option<i64> = None;
    loop {
        let Some(live_feed) = feed.upgrade() else {
            break;
        };
        match read_update(&inner.store, sale_id, seen).await {
            Ok(update) => {
                inner.metrics.live_refreshes.inc();
                seen = Some(update.through);
                let gone = update.live.is_none();
                // No receivers is not an error: the last stream may just have gone.
                let _ = live_feed.updates.send(Arc::new(update));
                if gone {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(sale = %sale_id, error = %err, "live refresh failed; retrying");
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
    let mut feeds = inner
        .feeds
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if feeds
        .get(&sale_id)
        .is_some_and(|entry| entry.strong_count() == 0)
    {
        feeds.remove(&sale_id);
    }
}

/// The sale now and its buyers' changes since `seen` (none on the first read, which only
/// sets where the changes start).
async fn read_update(
    store: &Store,
    sale_id: Uuid,
    seen: Option<i64>,
) -> Result<SaleUpdate, crate::store::StoreError> {
    let Some(live) = store.live_sale(sale_id).await? else {
        let through = seen.unwrap_or(0);
        return Ok(SaleUpdate {
            live: None,
            changes: HashMap::new(),
            from: through,
            through,
        });
    };
    let mut changes = HashMap::new();
    let from = seen.unwrap_or(live.last_sequence);
    let mut through = from;
    // Only a waiting room's buyers follow their own entries; an instant sale's streams
    // need the counters alone.
    if seen.is_some() && live.queue.is_some() {
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
    Ok(SaleUpdate {
        live: Some(live),
        changes,
        from,
        through,
    })
}
