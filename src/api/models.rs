//! The JSON shapes of the API: requests as clients send them (validated here, at the edge)
//! and views of the domain types. The waiting room's views are in [`queue_views`], the
//! raffle's in [`raffle_views`], the admin-only ones (a sale with its counters and history,
//! the audit, delete, jobs) in [`admin_views`], the outbox's (events, webhooks, exports) in
//! [`outbox_views`].

mod admin_views;
mod outbox_views;
mod queue_views;
mod raffle_views;
mod variant_views;

pub use admin_views::{
    AdminSaleView, AuditCheckView, AuditView, FailedJobView, RemovalKind, RemovedSaleView,
    RequeuedJobView, SaleEventView,
};
pub use outbox_views::{
    CreateWebhookRequest, DeliveryStatusView, DeliveryView, EventPage, EventTypeView, EventView,
    PurchasePage, WebhookSecretView, WebhookView,
};
pub use queue_views::{QueueStatsView, QueueStatusKind, QueueStatusView, QueueStreamEvent};
pub use raffle_views::{
    EntryRequest, RaffleEntryView, RaffleStatsView, RaffleStatusView, RaffleStreamEvent,
};
pub use variant_views::{VariantRequest, VariantView};

use chrono::{DateTime, Utc};
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::strict::StrictString;
use crate::domain::{self, Checkout, EndReason, Purchase, Sale, SaleState};
use crate::store::Order;

/// How buyers check out.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum CheckoutView {
    /// One request buys or is refused.
    Instant,
    /// Waiting room: join, get a hold, confirm.
    Queued,
    /// A draw: enter during the window; at its end the entrants are ranked by a seeded
    /// draw, and holds go to them in that order.
    Raffle,
}

impl From<Checkout> for CheckoutView {
    fn from(value: Checkout) -> Self {
        match value {
            Checkout::Instant => CheckoutView::Instant,
            Checkout::Queued => CheckoutView::Queued,
            Checkout::Raffle => CheckoutView::Raffle,
        }
    }
}

impl From<CheckoutView> for Checkout {
    fn from(value: CheckoutView) -> Self {
        match value {
            CheckoutView::Instant => Checkout::Instant,
            CheckoutView::Queued => Checkout::Queued,
            CheckoutView::Raffle => Checkout::Raffle,
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
    /// Deleted while it had purchases or holds: kept for its buyers, readable by id only.
    Archived,
}

impl From<SaleState> for SaleStateView {
    fn from(value: SaleState) -> Self {
        match value {
            SaleState::Scheduled => SaleStateView::Scheduled,
            SaleState::Active => SaleStateView::Active,
            SaleState::Ended => SaleStateView::Ended,
            SaleState::Cancelled => SaleStateView::Cancelled,
            SaleState::Archived => SaleStateView::Archived,
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
    /// Units for sale. Required without `variants`; with them it is their sum, and may be
    /// left out (given, it must equal the sum).
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub stock: MaybeUndefined<i32>,
    /// RFC 3339, years 2000-9999; default: now. (Leave it out for the default: `null` is
    /// refused, like every optional field here.)
    pub starts_at: MaybeUndefined<DateTime<Utc>>,
    /// RFC 3339, after `startsAt`, years 2000-9999; default: one hour after the start.
    pub ends_at: MaybeUndefined<DateTime<Utc>>,
    /// Default `instant`; `raffle`: see "Raffles (draws)" in the README.
    pub checkout: MaybeUndefined<CheckoutView>,
    /// How long a queued buyer's (or a selected raffle entrant's) hold lasts, in seconds
    /// (1-86400); default 600.
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub hold_seconds: MaybeUndefined<i32>,
    /// Queued checkout: most buyers waiting at once (1-10,000,000); default 100,000.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub queue_capacity: MaybeUndefined<i32>,
    /// Queued checkout: most units held at once (a hold of `quantity` units counts them
    /// all), an admission-rate control; 0 (default) = as many as there is stock; else at
    /// least `maxPerOrder` (a smaller cap could never admit a whole order).
    #[oai(validator(minimum(value = "0"), maximum(value = "10000000")))]
    pub max_active_holds: MaybeUndefined<i32>,
    /// Most units one buyer may own in this sale, over all their orders (1-100); default 1.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub per_customer_limit: MaybeUndefined<i32>,
    /// Most units one order (an instant purchase, or a queued hold) may ask for
    /// (1-`perCustomerLimit`); default `perCustomerLimit`.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub max_per_order: MaybeUndefined<i32>,
    /// A presale: only the buyers on the sale's allow-list may buy or join its queue
    /// (everyone else is 403 `NOT_ELIGIBLE`); upload the list with
    /// `PUT /api/v1/admin/sales/{sale}/allowlist`. Default false; fixed at creation.
    pub allowlist: MaybeUndefined<bool>,
    /// Sizes in one drop (any checkout): each variant has its own stock; buyers name one
    /// (`variant`) in every purchase, queue join or raffle entry, and the per-customer
    /// limit counts across them. 1-100 variants with distinct codes. The sale sells out
    /// when every variant has.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub variants: MaybeUndefined<Vec<VariantRequest>>,
}

/// An optional field: absent means the default; an explicit `null` is refused (the schema
/// says the field is a string or a number, never null).
pub(super) fn optional<T>(field: MaybeUndefined<T>, name: &str) -> Result<Option<T>, String> {
    match field {
        MaybeUndefined::Value(value) => Ok(Some(value)),
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(format!(
            "{name} must not be null: leave it out for the default"
        )),
    }
}

impl PurchaseRequest {
    /// The `userId` the request names, if any, and the order it asks for (default one
    /// unit, no key); `null` is refused for any of them (the message says why).
    pub fn claimed_user(self) -> Result<(Option<String>, Order, Option<String>), String> {
        let user = optional(self.user_id, "userId")?;
        let quantity = optional(self.quantity, "quantity")?;
        let key = optional(self.order_key, "orderKey")?;
        let variant = optional(self.variant, "variant")?;
        let order = Order {
            quantity: quantity.unwrap_or(1),
            key,
            // The door sets the position from the code (the third element).
            variant: None,
        };
        Ok((user.map(|user| user.0), order, variant.map(|code| code.0)))
    }
}

impl CreateSaleRequest {
    /// The domain's new sale, or why a field is unacceptable.
    pub fn into_domain(self) -> Result<domain::NewSale, String> {
        let per_customer_limit =
            optional(self.per_customer_limit, "perCustomerLimit")?.unwrap_or(1);
        let variants: Vec<domain::NewVariant> = optional(self.variants, "variants")?
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect();
        // Left out with variants: their sum (checked in range by the domain's validation).
        let stock = match optional(self.stock, "stock")? {
            Some(stock) => stock,
            None if !variants.is_empty() => variants
                .iter()
                .map(|v| i64::from(v.stock))
                .sum::<i64>()
                .try_into()
                .unwrap_or(i32::MAX),
            None => return Err("stock is required (or variants, whose sum it is)".into()),
        };
        Ok(domain::NewSale {
            sku: self.sku.0,
            name: self.name.0,
            stock,
            starts_at: optional(self.starts_at, "startsAt")?,
            ends_at: optional(self.ends_at, "endsAt")?,
            checkout: optional(self.checkout, "checkout")?
                .map_or(Checkout::Instant, Checkout::from),
            hold_seconds: optional(self.hold_seconds, "holdSeconds")?
                .unwrap_or(domain::sale::DEFAULT_HOLD_SECONDS),
            queue_capacity: optional(self.queue_capacity, "queueCapacity")?
                .unwrap_or(domain::queue::DEFAULT_QUEUE_CAPACITY),
            max_active_holds: optional(self.max_active_holds, "maxActiveHolds")?.unwrap_or(0),
            per_customer_limit,
            max_per_order: optional(self.max_per_order, "maxPerOrder")?
                .unwrap_or(per_customer_limit),
            allowlist: optional(self.allowlist, "allowlist")?.unwrap_or(false),
            variants,
        })
    }
}

/// A buyer's purchase or queue-join request.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The buyer, 1-128 characters, no control characters. **Required when buyer tokens are
    /// off** (no `BUYER_TOKEN_SECRET`: a request without it is 400 `INVALID_REQUEST`); with a
    /// buyer token it may be left out (the token's `sub` is the buyer) and must match it if
    /// given (else 403 `FORBIDDEN`).
    #[oai(validator(min_length = 1, max_length = 128))]
    pub user_id: MaybeUndefined<StrictString>,
    /// Units to buy (or, joining a queue, to hold) in this order, all or nothing: 1-100 and
    /// at most the sale's `maxPerOrder` (else 400 `QUANTITY_TOO_LARGE`); default 1.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub quantity: MaybeUndefined<i32>,
    /// Instant purchases only (a join with it is 400 `INVALID_REQUEST`): the buyer's own key
    /// for this order, a UUID. A request with a key the buyer has already ordered under in
    /// this sale buys nothing and answers 409 `ALREADY_PURCHASED` with that order, so a
    /// retry after a lost answer is safe whatever the limit.
    pub order_key: MaybeUndefined<Uuid>,
    /// In a sale with variants, required: the code of the variant to buy (an unknown code
    /// is 400 `UNKNOWN_VARIANT`, none 400 `VARIANT_REQUIRED`); a sale without variants
    /// takes none.
    #[oai(validator(min_length = 1, max_length = 32))]
    pub variant: MaybeUndefined<StrictString>,
}

/// One message of a sale's public live stream (SSE `event: sale`, `id:` the sale's event
/// sequence it reflects; the last one `event: closing` when the instance shuts down).
#[derive(Object, Debug, Clone)]
pub struct SaleStreamEvent {
    #[oai(skip)]
    pub event: &'static str,
    #[oai(skip)]
    pub sequence: i64,
    #[oai(flatten)]
    pub sale: SaleView,
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
    /// Units held by queued buyers who may still confirm (0 for instant sales).
    pub held: i32,
    pub sold: i32,
    /// Nothing available and nothing held that could come back.
    pub sold_out: bool,
    pub checkout: CheckoutView,
    /// Buyers waiting in the queue (0 for instant sales).
    pub queue_length: i32,
    /// Most units one buyer may own in this sale, over all their orders.
    pub per_customer_limit: i32,
    /// Most units one order may ask for.
    pub max_per_order: i32,
    /// Only the buyers on the sale's allow-list may buy or join (a presale).
    pub allowlist: bool,
    /// Each variant's counters, in the admin's order (sales with variants only).
    #[oai(skip_serializing_if_is_none)]
    pub variants: Option<Vec<VariantView>>,
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
            held: sale.held,
            sold: sale.sold,
            sold_out: sale.is_sold_out(),
            checkout: sale.checkout.into(),
            queue_length: sale.queue_length,
            per_customer_limit: sale.per_customer_limit,
            max_per_order: sale.max_per_order,
            allowlist: sale.allowlist,
            variants: (!sale.variants.is_empty())
                .then(|| sale.variants.iter().map(VariantView::from).collect()),
        }
    }
}

/// A committed purchase: one order of `quantity` units.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct PurchaseView {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    /// Units bought by this order.
    pub quantity: i32,
    /// The variant bought, in a sale with variants.
    #[oai(skip_serializing_if_is_none)]
    pub variant: Option<String>,
}

impl From<Purchase> for PurchaseView {
    fn from(purchase: Purchase) -> Self {
        Self {
            id: purchase.id,
            sale_id: purchase.sale_id,
            user_id: purchase.user_id,
            created_at: purchase.created_at,
            quantity: purchase.quantity,
            variant: purchase.variant,
        }
    }
}

/// Health of the service.
#[derive(Object, Debug, Clone)]
pub struct HealthView {
    /// `ok`.
    pub status: String,
}
