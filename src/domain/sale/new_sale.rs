//! A sale an admin asks for: its fields, their defaults and their validation (the database
//! repeats the checks as constraints).

use chrono::{DateTime, Utc};

use super::{
    Checkout, MAX_HOLD_SECONDS, MAX_PER_CUSTOMER_LIMIT, MAX_STOCK, MAX_VARIANTS, NewVariant,
    valid_variant_code,
};

/// A sale an admin asked for, checked and with its defaults filled in.
#[derive(Debug, Clone)]
pub struct NewSale {
    pub sku: String,
    pub name: String,
    pub stock: i32,
    /// `None` means "now" by the database clock.
    pub starts_at: Option<DateTime<Utc>>,
    /// `None` means one hour after the start.
    pub ends_at: Option<DateTime<Utc>>,
    pub checkout: Checkout,
    pub hold_seconds: i32,
    pub queue_capacity: i32,
    pub max_active_holds: i32,
    /// Most units one buyer may own in the sale (1 by default).
    pub per_customer_limit: i32,
    /// Most units in one order; the admin's default is `per_customer_limit`.
    pub max_per_order: i32,
    /// Only buyers on the sale's allow-list may buy or join (false by default).
    pub allowlist: bool,
    /// The variants, in the admin's order (empty: none). With variants `stock` is their sum.
    pub variants: Vec<NewVariant>,
}

/// Why a requested sale is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewSaleError {
    #[error(
        "sku must be 1 to 64 characters of letters, digits, '-', '_' or '.', and not shaped \
         like a sale id (a UUID: `{{sale}}` in a path resolves ids first)"
    )]
    BadSku,
    #[error("name must be 1 to 200 characters without control characters")]
    BadName,
    #[error("stock must be between 1 and {MAX_STOCK}")]
    BadStock,
    #[error("holdSeconds must be between 1 and {MAX_HOLD_SECONDS}")]
    BadHoldSeconds,
    #[error("queueCapacity must be between 1 and {MAX_STOCK}")]
    BadQueueCapacity,
    #[error("maxActiveHolds must be between 0 and {MAX_STOCK}")]
    BadMaxActiveHolds,
    #[error("maxActiveHolds must be 0 (no cap) or at least maxPerOrder")]
    MaxActiveHoldsBelowOrder,
    #[error("perCustomerLimit must be between 1 and {MAX_PER_CUSTOMER_LIMIT}")]
    BadPerCustomerLimit,
    #[error("maxPerOrder must be between 1 and perCustomerLimit")]
    BadMaxPerOrder,
    #[error(
        "variants must be 1 to {MAX_VARIANTS}, each with a code of 1 to 32 letters, digits, \
         '-', '_', '.' or '/' and a stock of at least 1; their stocks sum to at most {MAX_STOCK}"
    )]
    BadVariants,
    #[error("variant code {0:?} appears more than once")]
    DuplicateVariant(String),
    #[error("stock must equal the sum of the variants' stocks ({0}), or be left out")]
    StockNotVariantsSum(i64),
    #[error("endsAt must be after startsAt")]
    EndBeforeStart,
    #[error("startsAt and endsAt must lie between the years 2000 and 9999")]
    TimeOutOfRange,
}

/// The earliest and latest instants a sale may start or end: well inside what Postgres's
/// `timestamptz` holds, so a client's year 200000 is a 400, never a database error.
fn time_in_range(at: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    (2000..=9999).contains(&at.year())
}

impl NewSale {
    /// Checks every field; the database repeats the checks as constraints.
    pub fn validate(&self) -> Result<(), NewSaleError> {
        let sku_ok = (1..=64).contains(&self.sku.chars().count())
            && self
                .sku
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            // A sku that parses as an id would be shadowed by (or shadow) a sale's id.
            && uuid::Uuid::parse_str(&self.sku).is_err();
        if !sku_ok {
            return Err(NewSaleError::BadSku);
        }
        if !(1..=200).contains(&self.name.trim().chars().count())
            || self.name.chars().any(char::is_control)
        {
            return Err(NewSaleError::BadName);
        }
        self.validate_variants()?;
        if !(1..=MAX_STOCK).contains(&self.stock) {
            return Err(NewSaleError::BadStock);
        }
        if !(1..=MAX_HOLD_SECONDS).contains(&self.hold_seconds) {
            return Err(NewSaleError::BadHoldSeconds);
        }
        if !(1..=MAX_STOCK).contains(&self.queue_capacity) {
            return Err(NewSaleError::BadQueueCapacity);
        }
        if !(0..=MAX_STOCK).contains(&self.max_active_holds) {
            return Err(NewSaleError::BadMaxActiveHolds);
        }
        if !(1..=MAX_PER_CUSTOMER_LIMIT).contains(&self.per_customer_limit) {
            return Err(NewSaleError::BadPerCustomerLimit);
        }
        if !(1..=self.per_customer_limit).contains(&self.max_per_order) {
            return Err(NewSaleError::BadMaxPerOrder);
        }
        // A cap below one order's units would never admit that order, nor anyone queued
        // behind it (admission is in ticket order): the queue would stall with units free.
        if self.max_active_holds != 0 && self.max_active_holds < self.max_per_order {
            return Err(NewSaleError::MaxActiveHoldsBelowOrder);
        }
        if !self
            .starts_at
            .into_iter()
            .chain(self.ends_at)
            .all(time_in_range)
        {
            return Err(NewSaleError::TimeOutOfRange);
        }
        if let (Some(start), Some(end)) = (self.starts_at, self.ends_at)
            && end <= start
        {
            return Err(NewSaleError::EndBeforeStart);
        }
        Ok(())
    }

    /// The variants' codes and stocks, and the sale's stock against their sum (the edge
    /// fills in a left-out stock with the sum; see `CreateSaleRequest`).
    fn validate_variants(&self) -> Result<(), NewSaleError> {
        if self.variants.is_empty() {
            return Ok(());
        }
        let shaped = self.variants.len() <= MAX_VARIANTS
            && self
                .variants
                .iter()
                .all(|v| valid_variant_code(&v.code) && (1..=MAX_STOCK).contains(&v.stock));
        let sum: i64 = self.variants.iter().map(|v| i64::from(v.stock)).sum();
        if !shaped || sum > i64::from(MAX_STOCK) {
            return Err(NewSaleError::BadVariants);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = self.variants.iter().find(|v| !seen.insert(v.code.as_str())) {
            return Err(NewSaleError::DuplicateVariant(twice.code.clone()));
        }
        if i64::from(self.stock) != sum {
            return Err(NewSaleError::StockNotVariantsSum(sum));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn new_sale_validation_rejects_each_bad_field() {
        let good = NewSale {
            sku: "drop-1".into(),
            name: "Drop".into(),
            stock: 100,
            starts_at: None,
            ends_at: None,
            checkout: Checkout::Instant,
            hold_seconds: 600,
            queue_capacity: 1000,
            max_active_holds: 0,
            per_customer_limit: 4,
            max_per_order: 2,
            allowlist: false,
            variants: Vec::new(),
        };
        assert_eq!(good.validate(), Ok(()));
        let cases: Vec<(NewSale, NewSaleError)> = vec![
            (
                NewSale {
                    sku: String::new(),
                    ..good.clone()
                },
                NewSaleError::BadSku,
            ),
            (
                NewSale {
                    sku: "a b".into(),
                    ..good.clone()
                },
                NewSaleError::BadSku,
            ),
            (
                NewSale {
                    sku: "6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f".into(),
                    ..good.clone()
                },
                NewSaleError::BadSku,
            ),
            (
                NewSale {
                    sku: "6f1c1d2e3b4a4c5d8e9f0a1b2c3d4e5f".into(),
                    ..good.clone()
                },
                NewSaleError::BadSku,
            ),
            (
                NewSale {
                    sku: "x".repeat(65),
                    ..good.clone()
                },
                NewSaleError::BadSku,
            ),
            (
                NewSale {
                    name: "  ".into(),
                    ..good.clone()
                },
                NewSaleError::BadName,
            ),
            (
                NewSale {
                    name: "nul\u{0}byte".into(),
                    ..good.clone()
                },
                NewSaleError::BadName,
            ),
            (
                NewSale {
                    stock: 0,
                    ..good.clone()
                },
                NewSaleError::BadStock,
            ),
            (
                NewSale {
                    stock: MAX_STOCK + 1,
                    ..good.clone()
                },
                NewSaleError::BadStock,
            ),
            (
                NewSale {
                    hold_seconds: 0,
                    ..good.clone()
                },
                NewSaleError::BadHoldSeconds,
            ),
            (
                NewSale {
                    queue_capacity: 0,
                    ..good.clone()
                },
                NewSaleError::BadQueueCapacity,
            ),
            (
                NewSale {
                    max_active_holds: -1,
                    ..good.clone()
                },
                NewSaleError::BadMaxActiveHolds,
            ),
            (
                NewSale {
                    per_customer_limit: 0,
                    max_per_order: 0,
                    ..good.clone()
                },
                NewSaleError::BadPerCustomerLimit,
            ),
            (
                NewSale {
                    per_customer_limit: MAX_PER_CUSTOMER_LIMIT + 1,
                    ..good.clone()
                },
                NewSaleError::BadPerCustomerLimit,
            ),
            (
                NewSale {
                    max_per_order: 0,
                    ..good.clone()
                },
                NewSaleError::BadMaxPerOrder,
            ),
            (
                NewSale {
                    max_per_order: 5,
                    ..good.clone()
                },
                NewSaleError::BadMaxPerOrder,
            ),
            (
                NewSale {
                    starts_at: Some(Utc::now()),
                    ends_at: Some(Utc::now() - Duration::seconds(1)),
                    ..good.clone()
                },
                NewSaleError::EndBeforeStart,
            ),
            (
                NewSale {
                    ends_at: DateTime::from_timestamp(400_000_000_000, 0),
                    ..good.clone()
                },
                NewSaleError::TimeOutOfRange,
            ),
        ];
        for (sale, expected) in cases {
            assert_eq!(sale.validate(), Err(expected), "{sale:?}");
        }
    }
}
