//! A sale and its derived state; a new sale's validation is in `sale/new_sale.rs`.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

mod new_sale;
mod variant;

pub use new_sale::{NewSale, NewSaleError};
pub use variant::{MAX_VARIANTS, NewVariant, Variant, valid_variant_code};

/// Largest stock one sale may have.
pub const MAX_STOCK: i32 = 10_000_000;
/// Longest a queued hold may last.
pub const MAX_HOLD_SECONDS: i32 = 86_400;
/// Hold duration when the admin gives none.
pub const DEFAULT_HOLD_SECONDS: i32 = 600;
/// Most units one buyer may own in one sale (`perCustomerLimit`), and so most in one order.
pub const MAX_PER_CUSTOMER_LIMIT: i32 = 100;
/// How long a sale lasts when the admin gives no end.
pub const DEFAULT_DURATION: Duration = Duration::hours(1);

/// How buyers check out of a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkout {
    /// One request buys, or is refused.
    Instant,
    /// Buyers wait in a queue, are admitted to a hold and confirm it.
    Queued,
    /// Buyers enter during the window; at its end a seeded draw ranks them, and holds go
    /// to them in that order.
    Raffle,
}

impl Checkout {
    pub fn as_str(self) -> &'static str {
        match self {
            Checkout::Instant => "instant",
            Checkout::Queued => "queued",
            Checkout::Raffle => "raffle",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "instant" => Some(Checkout::Instant),
            "queued" => Some(Checkout::Queued),
            "raffle" => Some(Checkout::Raffle),
            _ => None,
        }
    }
}

/// Where a sale stands at one instant, derived from the database clock and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleState {
    Scheduled,
    Active,
    Ended,
    Cancelled,
    /// Deleted while it had purchases or holds: kept for its buyers, readable by id only.
    Archived,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Scheduled => "scheduled",
            SaleState::Active => "active",
            SaleState::Ended => "ended",
            SaleState::Cancelled => "cancelled",
            SaleState::Archived => "archived",
        }
    }
}

/// Why a sale stopped selling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    SoldOut,
    Time,
    Cancelled,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::SoldOut => "sold_out",
            EndReason::Time => "time",
            EndReason::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "sold_out" => Some(EndReason::SoldOut),
            "time" => Some(EndReason::Time),
            "cancelled" => Some(EndReason::Cancelled),
            _ => None,
        }
    }
}

/// A sale as stored, with the counters read in the same statement as `observed_at`.
#[derive(Debug, Clone)]
pub struct Sale {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub stock: i32,
    pub available: i32,
    pub held: i32,
    pub sold: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub checkout: Checkout,
    pub hold_seconds: i32,
    /// Most buyers that may wait in the queue at once (queued checkout).
    pub queue_capacity: i32,
    /// Most units held at once (one per hold of one unit); 0 means as many as there is
    /// stock.
    pub max_active_holds: i32,
    /// Buyers waiting in the queue now (0 for instant sales).
    pub queue_length: i32,
    /// Most units one buyer may own in this sale, over all their orders.
    pub per_customer_limit: i32,
    /// Most units one order (a purchase, or a queued hold) may ask for.
    pub max_per_order: i32,
    /// Only the buyers on the sale's allow-list may buy or join (set at creation, never
    /// changed).
    pub allowlist: bool,
    /// The sale's variants in position order (empty for a sale without variants): each
    /// with its own stock and counters, which the sale's counters sum.
    pub variants: Vec<Variant>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Set when the sale was deleted while it had purchases or holds (see [`SaleState::Archived`]).
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The database clock when the row was read: the state is derived against it, never
    /// against this process's clock, so every instance agrees.
    pub observed_at: DateTime<Utc>,
}

impl Sale {
    /// Nothing left to sell and nothing held that could come back.
    pub fn is_sold_out(&self) -> bool {
        self.available == 0 && self.held == 0
    }

    /// The variant at `position` (1-based), if the sale has it.
    pub fn variant_at(&self, position: i16) -> Option<&Variant> {
        let index = usize::try_from(position).ok()?.checked_sub(1)?;
        self.variants.get(index)
    }

    /// The position of the variant `code`, if the sale has it.
    pub fn variant_position(&self, code: &str) -> Option<i16> {
        self.variants
            .iter()
            .find(|v| v.code == code)
            .map(|v| v.position)
    }

    /// Units an order of `variant` could take now: the variant's, or the sale's for an
    /// order naming none.
    pub fn available_for(&self, variant: Option<i16>) -> i32 {
        variant
            .and_then(|position| self.variant_at(position))
            .map_or(self.available, |v| v.available)
    }

    /// The state at `observed_at`. An archive wins over everything, then a cancel; a sale
    /// that sold out is ended even before its end time.
    pub fn state(&self) -> SaleState {
        if self.archived_at.is_some() {
            return SaleState::Archived;
        }
        self.end_reason()
            .map(|reason| match reason {
                EndReason::Cancelled => SaleState::Cancelled,
                EndReason::SoldOut | EndReason::Time => SaleState::Ended,
            })
            .unwrap_or(if self.observed_at < self.starts_at {
                SaleState::Scheduled
            } else {
                SaleState::Active
            })
    }

    /// Why the sale no longer sells, or `None` while it is scheduled or active.
    pub fn end_reason(&self) -> Option<EndReason> {
        if self.cancelled_at.is_some() {
            Some(EndReason::Cancelled)
        } else if self.is_sold_out() {
            Some(EndReason::SoldOut)
        } else if self.observed_at >= self.ends_at {
            Some(EndReason::Time)
        } else {
            None
        }
    }
}

/// A committed purchase (an order): `quantity` units of one sale, owned by one user. A
/// buyer may have several orders in a sale, together at most its `per_customer_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub quantity: i32,
    /// The variant bought (its code), in a sale with variants.
    pub variant: Option<String>,
}

/// Checks a buyer's user id: 1 to 128 characters, none of them control characters.
pub fn valid_user_id(user_id: &str) -> bool {
    (1..=128).contains(&user_id.chars().count()) && !user_id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale_at(observed_at: DateTime<Utc>) -> Sale {
        let start = DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time");
        Sale {
            id: Uuid::nil(),
            sku: "sku".into(),
            name: "name".into(),
            stock: 10,
            available: 10,
            held: 0,
            sold: 0,
            starts_at: start,
            ends_at: start + Duration::hours(1),
            checkout: Checkout::Instant,
            hold_seconds: 600,
            queue_capacity: 100,
            max_active_holds: 0,
            queue_length: 0,
            per_customer_limit: 1,
            allowlist: false,
            variants: Vec::new(),
            max_per_order: 1,
            cancelled_at: None,
            archived_at: None,
            created_at: start,
            observed_at,
        }
    }

    #[test]
    fn state_follows_the_clock_at_the_exact_boundaries() {
        let start = sale_at(Utc::now()).starts_at;
        assert_eq!(
            sale_at(start - Duration::milliseconds(1)).state(),
            SaleState::Scheduled
        );
        assert_eq!(sale_at(start).state(), SaleState::Active);
        let end = start + Duration::hours(1);
        assert_eq!(
            sale_at(end - Duration::milliseconds(1)).state(),
            SaleState::Active
        );
        assert_eq!(sale_at(end).state(), SaleState::Ended);
        assert_eq!(sale_at(end).end_reason(), Some(EndReason::Time));
    }

    #[test]
    fn a_sold_out_sale_is_ended_for_that_reason_before_its_end_time() {
        let mut sale = sale_at(sale_at(Utc::now()).starts_at);
        sale.available = 0;
        sale.sold = 10;
        assert_eq!(sale.state(), SaleState::Ended);
        assert_eq!(sale.end_reason(), Some(EndReason::SoldOut));
        sale.held = 1;
        sale.sold = 9;
        assert_eq!(
            sale.state(),
            SaleState::Active,
            "a hold may still come back"
        );
    }

    #[test]
    fn a_cancel_wins_over_sold_out_and_time() {
        let mut sale = sale_at(sale_at(Utc::now()).ends_at);
        sale.available = 0;
        sale.sold = 10;
        sale.cancelled_at = Some(sale.starts_at);
        assert_eq!(sale.state(), SaleState::Cancelled);
        assert_eq!(sale.end_reason(), Some(EndReason::Cancelled));
    }

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert!(valid_user_id("user-1"));
        assert!(valid_user_id(&"u".repeat(128)));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id(&"u".repeat(129)));
        assert!(!valid_user_id("bad\nid"));
    }
}
