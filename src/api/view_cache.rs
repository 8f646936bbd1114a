//! A short-lived cache of the public sale view, so thousands of pollers do not each read
//! the sale's row. A cached view is at most `ttl` old (the `SALE_VIEW_CACHE_MS` setting, at
//! most [`MAX_TTL`]; 0 turns the cache off). It is keyed by the sale's id: a sku is resolved
//! fresh on every request (an index lookup), so after an archive and a re-create under the
//! same sku the view is the new sale's at once. Purchases, queue decisions and admin views
//! never read it: it only serves `GET /api/v1/sales/{sale}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::models::SaleView;

/// Entries kept at most; past it, expired ones are dropped on the next insert.
const MAX_ENTRIES: usize = 10_000;
/// The longest `SALE_VIEW_CACHE_MS` honoured: a public view is never older than this.
pub const MAX_TTL: Duration = Duration::from_secs(1);

pub struct SaleViewCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Instant, SaleView)>>,
}

impl SaleViewCache {
    /// A cache whose views are at most `ttl` old (capped at [`MAX_TTL`]).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(MAX_TTL),
            entries: Mutex::default(),
        }
    }

    /// The cached view of the sale `id` if it is younger than the TTL.
    pub fn get(&self, id: Uuid) -> Option<SaleView> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (at, view) = entries.get(&id)?;
        (at.elapsed() < self.ttl).then(|| view.clone())
    }

    pub fn put(&self, view: &SaleView) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                let ttl = self.ttl;
                entries.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if entries.len() < MAX_ENTRIES {
                entries.insert(view.id, (Instant::now(), view.clone()));
            }
        }
    }
}
