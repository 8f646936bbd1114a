//! A short-lived cache of the public sale view, so thousands of pollers do not each cost a
//! database round trip. A cached view is at most `ttl` old (the `SALE_VIEW_CACHE_MS`
//! setting; 0 turns the cache off). Purchases, queue decisions and admin views never read
//! it: it only serves `GET /api/v1/sales/{sale}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::models::SaleView;

/// Entries kept at most; past it, expired ones are dropped on the next insert.
const MAX_ENTRIES: usize = 10_000;

pub struct SaleViewCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, SaleView)>>,
}

impl SaleViewCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The cached view of `sale_ref` if it is younger than the TTL.
    pub fn get(&self, sale_ref: &str) -> Option<SaleView> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (at, view) = entries.get(sale_ref)?;
        (at.elapsed() < self.ttl).then(|| view.clone())
    }

    pub fn put(&self, sale_ref: &str, view: &SaleView) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                let ttl = self.ttl;
                entries.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if entries.len() < MAX_ENTRIES {
                entries.insert(sale_ref.to_string(), (Instant::now(), view.clone()));
            }
        }
    }
}
