//! The JSON shapes of the API: requests as clients send them (validated here, at the edge)
//! and views of the domain types.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::strict::StrictString;
use crate::domain::{self, Checkout, EndReason, Purchase, Sale, SaleState};
use crate::store::{AuditReport, SaleEvent};

/// How buyers check out.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum CheckoutView {
    /// One request buys or is refused.
    Instant,
    /// Waiting room: join, get a hold, confirm.
    Queued,
}

impl From<Checkout> for CheckoutView {
    fn from(value: Checkout) -> Self {
        match value {
            Checkout::Instant => CheckoutView::Instant,
            Checkout::Queued => CheckoutView::Queued,
        }
    }
}

impl From<CheckoutView> for Checkout {
    fn from(value: CheckoutView) -> Self {
        match value {
            CheckoutView::Instant => Checkout::Instant,
            CheckoutView::Queued => Checkout::Queued,
        }
    }
}

/// Where a sale stands now, derived from the database clock and stock on every read.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum SaleStateView {
    Scheduled,
    Active,
    Ended,
    Cancelled,
}

impl From<SaleState> for SaleStateView {
    fn from(value: SaleState) -> Self {
        match value {
            SaleState::Scheduled => SaleStateView::Scheduled,
            SaleState::Active => SaleStateView::Active,
            SaleState::Ended => SaleStateView::Ended,
            SaleState::Cancelled => SaleStateView::Cancelled,
        }
    }
}

/// Why a sale stopped selling.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum EndReasonView {
    SoldOut,
    Time,
    Cancelled,
}

impl From<EndReason> for EndReasonView {
    fn from(value: EndReason) -> Self {
        match value {
            EndReason::SoldOut => EndReasonView::SoldOut,
            EndReason::Time => EndReasonView::Time,
            EndReason::Cancelled => EndReasonView::Cancelled,
        }
    }
}

/// A new sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSaleRequest {
    /// Unique product code: 1-64 of letters, digits, `-`, `_`, `.` (usable in URLs).
    #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$"))]
    pub sku: StrictString,
    /// Display name, 1-200 characters.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: StrictString,
    /// Units for sale.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub stock: i32,
    /// RFC 3339; default: now.
    pub starts_at: Option<DateTime<Utc>>,
    /// RFC 3339, after `startsAt`; default: one hour after the start.
    pub ends_at: Option<DateTime<Utc>>,
    /// Default `instant`.
    pub checkout: Option<CheckoutView>,
    /// How long a queued buyer's hold lasts, in seconds (1-86400); default 600.
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub hold_seconds: Option<i32>,
}

impl CreateSaleRequest {
    pub fn into_domain(self) -> domain::NewSale {
        domain::NewSale {
            sku: self.sku.0,
            name: self.name.0,
            stock: self.stock,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            checkout: self.checkout.map_or(Checkout::Instant, Checkout::from),
            hold_seconds: self
                .hold_seconds
                .unwrap_or(domain::sale::DEFAULT_HOLD_SECONDS),
        }
    }
}

/// A buyer's purchase request.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The buyer, 1-128 characters, no control characters.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub user_id: StrictString,
}

/// The public view of a sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct SaleView {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub state: SaleStateView,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub stock: i32,
    /// Units nobody has bought or holds.
    pub available: i32,
    pub sold: i32,
    /// Nothing available and nothing held that could come back.
    pub sold_out: bool,
    pub checkout: CheckoutView,
}

impl From<&Sale> for SaleView {
    fn from(sale: &Sale) -> Self {
        Self {
            id: sale.id,
            sku: sale.sku.clone(),
            name: sale.name.clone(),
            state: sale.state().into(),
            starts_at: sale.starts_at,
            ends_at: sale.ends_at,
            stock: sale.stock,
            available: sale.available,
            sold: sale.sold,
            sold_out: sale.is_sold_out(),
            checkout: sale.checkout.into(),
        }
    }
}

/// A recorded state change.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct SaleEventView {
    /// `active` or `ended`.
    pub state: String,
    /// For `ended`: `sold_out`, `time` or `cancelled`.
    pub reason: Option<String>,
    /// When the change happened (the start, the end, the last sale or the cancel).
    pub occurred_at: DateTime<Utc>,
    /// When a worker recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl From<SaleEvent> for SaleEventView {
    fn from(event: SaleEvent) -> Self {
        Self {
            state: event.state,
            reason: event.reason,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
        }
    }
}

/// The admin view of a sale: the public view plus live counters and history.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct AdminSaleView {
    #[oai(flatten)]
    pub sale: SaleView,
    /// Units held by queued buyers (0 for instant sales).
    pub held: i32,
    pub hold_seconds: i32,
    /// Why the sale no longer sells; absent while scheduled or active.
    #[oai(skip_serializing_if_is_none)]
    pub end_reason: Option<EndReasonView>,
    #[oai(skip_serializing_if_is_none)]
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The state changes the workers recorded (only on the single-sale view).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<Vec<SaleEventView>>,
}

impl From<&Sale> for AdminSaleView {
    fn from(sale: &Sale) -> Self {
        Self {
            sale: sale.into(),
            held: sale.held,
            hold_seconds: sale.hold_seconds,
            end_reason: sale.end_reason().map(EndReasonView::from),
            cancelled_at: sale.cancelled_at,
            created_at: sale.created_at,
            events: None,
        }
    }
}

/// A committed purchase.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct PurchaseView {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
}

impl From<Purchase> for PurchaseView {
    fn from(purchase: Purchase) -> Self {
        Self {
            id: purchase.id,
            sale_id: purchase.sale_id,
            user_id: purchase.user_id,
            created_at: purchase.created_at,
        }
    }
}

/// One invariant and its verdict.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct AuditCheckView {
    pub name: String,
    pub passed: bool,
    /// The numbers behind the verdict.
    pub detail: String,
}

/// The invariant audit of a sale (the checks of `stress/invariants.sql`).
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct AuditView {
    pub sale_id: Uuid,
    pub sku: String,
    /// True when every check passed.
    pub passed: bool,
    pub checks: Vec<AuditCheckView>,
}

impl AuditView {
    pub fn new(sale: &Sale, report: AuditReport) -> Self {
        Self {
            sale_id: sale.id,
            sku: sale.sku.clone(),
            passed: report.passed(),
            checks: report
                .checks
                .into_iter()
                .map(|check| AuditCheckView {
                    name: check.check_name,
                    passed: check.passed,
                    detail: check.detail,
                })
                .collect(),
        }
    }
}

/// Health of the service.
#[derive(Object, Debug, Clone)]
pub struct HealthView {
    /// `ok`.
    pub status: String,
}
