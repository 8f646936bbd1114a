//! `{sale}` references (a sale's id, or a live sale's sku) resolved to sale ids for the
//! group-commit doors (purchases and joins), cached for a second so a surge of buyers does
//! not cost a read each.
//!
//! A name can be reused (a sale archived or deleted, its sku given to a new sale, on any
//! instance), so nothing may be answered from a cached resolution alone: a caller whose
//! answer from a cached target says the sale is gone or archived reads the reference again
//! ([`SaleRefs::resolve`] with `fresh`) and asks what it names now. Ids are never reused.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::Checkout;

/// How long a reference keeps resolving to the same sale id without asking the database.
/// An answer that would depend on a stale entry is checked first, so this bounds only how
/// often the name is looked up.
const REF_CACHE_TTL: Duration = Duration::from_secs(1);
const REF_CACHE_ENTRIES: u64 = 10_000;

/// A `{sale}` reference resolved to a sale id.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub id: Uuid,
    pub checkout: Checkout,
    /// The sale's per-customer limit and largest order (never changed after creation).
    pub per_customer_limit: i32,
    pub max_per_order: i32,
    /// Taken from the cache rather than read for this request: the name may since have come
    /// to mean another sale (a delete and re-create of its sku, on any instance).
    pub cached: bool,
    /// The reference named the sale by its sku (not by its id).
    pub via_sku: bool,
    /// The codes of the sale's variants in position order (empty: none; never changed
    /// after creation).
    pub variants: Arc<[String]>,
}

/// Why an order cannot name the variant it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VariantRefusal {
    /// The sale has variants and the order names none.
    Required,
    /// The sale has no variant with that code (or has none at all).
    Unknown,
}

impl Target {
    /// The position of the variant an order names (`code`), or why the order cannot name
    /// it: a sale with variants needs one, a sale without takes none.
    pub fn variant_position(&self, code: Option<&str>) -> Result<Option<i16>, VariantRefusal> {
        match code {
            None if self.variants.is_empty() => Ok(None),
            None => Err(VariantRefusal::Required),
            Some(code) => self
                .variants
                .iter()
                .position(|known| known == code)
                .and_then(|index| i16::try_from(index + 1).ok())
                .map(Some)
                .ok_or(VariantRefusal::Unknown),
        }
    }
}

/// The reference cache of one door.
#[derive(Clone)]
pub(super) struct SaleRefs {
    store: Store,
    cache: Cache<String, Target>,
}

impl SaleRefs {
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            cache: Cache::builder()
                .max_capacity(REF_CACHE_ENTRIES)
                .time_to_live(REF_CACHE_TTL)
                .build(),
        }
    }

    /// The sale id and checkout for a reference: from the cache unless `fresh`, else read
    /// (and cached). `None` when no sale answers to it.
    pub(super) async fn resolve(
        &self,
        sale_ref: &str,
        fresh: bool,
    ) -> Result<Option<Target>, StoreError> {
        if !fresh && let Some(target) = self.cache.get(sale_ref) {
            return Ok(Some(Target {
                cached: true,
                ..target
            }));
        }
        let Some(sale) = self.store.resolve_sale(sale_ref).await? else {
            self.cache.invalidate(sale_ref);
            return Ok(None);
        };
        let via_sku = sale.id.to_string() != sale_ref.to_ascii_lowercase();
        let target = Target {
            id: sale.id,
            checkout: sale.checkout,
            per_customer_limit: sale.per_customer_limit,
            max_per_order: sale.max_per_order,
            cached: false,
            via_sku,
            variants: sale.variants.iter().map(|v| v.code.clone()).collect(),
        };
        self.cache.insert(sale_ref.to_string(), target.clone());
        Ok(Some(target))
    }
}
