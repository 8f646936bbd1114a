//! A short-lived cache of the public sale view, so thousands of pollers do not each read
//! the sale's row. A cached view is at most `ttl` old (the `SALE_VIEW_CACHE_MS` setting, at
//! most [`MAX_TTL`]; 0 turns the cache off). It is keyed by the sale's id: a sku is resolved
//! fresh on every request (an index lookup), so after an archive and a re-create under the
//! same sku the view is the new sale's at once. Purchases, queue decisions and admin views
//! never read it: it only serves `GET /api/v1/sales/{sale}`.

use std::time::Duration;

use moka::sync::Cache;
use uuid::Uuid;

use super::models::SaleView;

/// Sales whose views are kept at most; past it the least used go first.
const MAX_ENTRIES: u64 = 10_000;
/// The longest `SALE_VIEW_CACHE_MS` honoured: a public view is never older than this.
pub const MAX_TTL: Duration = Duration::from_secs(1);

pub struct SaleViewCache {
    /// `None`: the cache is off (a TTL of 0).
    views: Option<Cache<Uuid, SaleView>>,
}

impl SaleViewCache {
    /// A cache whose views are at most `ttl` old (capped at [`MAX_TTL`]).
    pub fn new(ttl: Duration) -> Self {
        let views = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl.min(MAX_TTL))
                .build()
        });
        Self { views }
    }

    /// The cached view of the sale `id` if it is younger than the TTL.
    pub fn get(&self, id: Uuid) -> Option<SaleView> {
        self.views.as_ref()?.get(&id)
    }

    pub fn put(&self, view: &SaleView) {
        if let Some(views) = &self.views {
            views.insert(view.id, view.clone());
        }
    }
}
