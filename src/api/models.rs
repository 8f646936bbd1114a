//! The JSON shapes of the API: requests as clients send them (validated here, at the edge)
//! and views of the domain types.

use chrono::{DateTime, Utc};
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::strict::StrictString;
use crate::domain::{
    self, Checkout, EndReason, EntryStatus, Purchase, QueueEntry, Sale, SaleState,
};
use crate::store::{AuditReport, QueueStats, SaleEvent};

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
    /// Units for sale.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub stock: i32,
    /// RFC 3339, years 2000-9999; default: now. (Leave it out for the default: `null` is
    /// refused, like every optional field here.)
    pub starts_at: MaybeUndefined<DateTime<Utc>>,
    /// RFC 3339, after `startsAt`, years 2000-9999; default: one hour after the start.
    pub ends_at: MaybeUndefined<DateTime<Utc>>,
    /// Default `instant`.
    pub checkout: MaybeUndefined<CheckoutView>,
    /// How long a queued buyer's hold lasts, in seconds (1-86400); default 600.
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub hold_seconds: MaybeUndefined<i32>,
    /// Queued checkout: most buyers waiting at once (1-10,000,000); default 100,000.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub queue_capacity: MaybeUndefined<i32>,
    /// Queued checkout: most holds live at once, an admission-rate control; 0 (default) =
    /// as many as there is stock.
    #[oai(validator(minimum(value = "0"), maximum(value = "10000000")))]
    pub max_active_holds: MaybeUndefined<i32>,
}

/// An optional field: absent means the default; an explicit `null` is refused (the schema
/// says the field is a string or a number, never null).
fn optional<T>(field: MaybeUndefined<T>, name: &str) -> Result<Option<T>, String> {
    match field {
        MaybeUndefined::Value(value) => Ok(Some(value)),
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(format!(
            "{name} must not be null: leave it out for the default"
        )),
    }
}

impl PurchaseRequest {
    /// The `userId` the request names, if any; `null` is refused.
    pub fn claimed_user(self) -> Result<Option<String>, String> {
        Ok(optional(self.user_id, "userId")?.map(|user| user.0))
    }
}

impl CreateSaleRequest {
    /// The domain's new sale, or why a field is unacceptable.
    pub fn into_domain(self) -> Result<domain::NewSale, String> {
        Ok(domain::NewSale {
            sku: self.sku.0,
            name: self.name.0,
            stock: self.stock,
            starts_at: optional(self.starts_at, "startsAt")?,
            ends_at: optional(self.ends_at, "endsAt")?,
            checkout: optional(self.checkout, "checkout")?
                .map_or(Checkout::Instant, Checkout::from),
            hold_seconds: optional(self.hold_seconds, "holdSeconds")?
                .unwrap_or(domain::sale::DEFAULT_HOLD_SECONDS),
            queue_capacity: optional(self.queue_capacity, "queueCapacity")?
                .unwrap_or(domain::queue::DEFAULT_QUEUE_CAPACITY),
            max_active_holds: optional(self.max_active_holds, "maxActiveHolds")?.unwrap_or(0),
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
        }
    }
}

/// A recorded state change.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct SaleEventView {
    /// `active`, `ended` or `archived`.
    pub state: String,
    /// For `ended`: `sold_out`, `time` or `cancelled` (absent otherwise).
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
    /// For `archived`: the live holds the archive voided (their units went back to stock).
    #[oai(skip_serializing_if_is_none)]
    pub voided_holds: Option<i32>,
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
            voided_holds: event.voided_holds,
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
    pub hold_seconds: i32,
    pub queue_capacity: i32,
    pub max_active_holds: i32,
    /// Why the sale no longer sells; absent while scheduled or active.
    #[oai(skip_serializing_if_is_none)]
    pub end_reason: Option<EndReasonView>,
    #[oai(skip_serializing_if_is_none)]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When the sale was archived (deleted while it had purchases or holds).
    #[oai(skip_serializing_if_is_none)]
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The state changes the workers recorded (only on the single-sale view).
    #[oai(skip_serializing_if_is_none)]
    pub events: Option<Vec<SaleEventView>>,
    /// The waiting room's counters (queued sales, single-sale view only).
    #[oai(skip_serializing_if_is_none)]
    pub queue: Option<QueueStatsView>,
}

impl From<&Sale> for AdminSaleView {
    fn from(sale: &Sale) -> Self {
        Self {
            sale: sale.into(),
            hold_seconds: sale.hold_seconds,
            queue_capacity: sale.queue_capacity,
            max_active_holds: sale.max_active_holds,
            end_reason: sale.end_reason().map(EndReasonView::from),
            cancelled_at: sale.cancelled_at,
            archived_at: sale.archived_at,
            created_at: sale.created_at,
            events: None,
            queue: None,
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

/// A queued sale's waiting room, for admins.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatsView {
    /// Buyers waiting now.
    pub queued: i32,
    /// Holds granted in all.
    pub admitted: i32,
    /// Holds live now.
    pub held: i32,
    /// Holds that ran out in all.
    pub expired: i32,
    /// Holds confirmed (units sold).
    pub purchased: i32,
    /// The ticket of the last buyer admitted: the queue's front.
    pub last_admitted_position: i64,
    /// Tickets handed out in all.
    pub last_ticket: i64,
    /// The seed of the pre-queue shuffle (decimal string), to replay its order.
    pub shuffle_seed: String,
    /// When the pre-queue was shuffled (the opening).
    pub shuffled_at: Option<DateTime<Utc>>,
    /// Buyers in the pre-queue at the shuffle.
    pub prequeue_size: Option<i32>,
}

impl QueueStatsView {
    pub fn new(sale: &Sale, stats: QueueStats) -> Self {
        Self {
            queued: stats.waiting,
            admitted: stats.admitted,
            held: sale.held,
            expired: stats.expired,
            purchased: sale.sold,
            last_admitted_position: stats.admitted_upto,
            last_ticket: stats.last_ticket,
            shuffle_seed: stats.shuffle_seed.to_string(),
            shuffled_at: stats.shuffled_at,
            prequeue_size: stats.prequeue_size,
        }
    }
}

/// Where a buyer stands in a queued sale.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum QueueStatusKind {
    /// Waiting; see `position`.
    Queued,
    /// Holding a unit until `holdExpiresAt`: confirm before then.
    Held,
    /// Confirmed: bought.
    Purchased,
    /// The hold ran out; join again to queue anew.
    Expired,
    /// Nothing left and nothing held: the buyer's turn will not come.
    SoldOut,
    /// Left the queue or released the hold.
    Left,
    /// The sale ended or was cancelled before the buyer's turn.
    Closed,
}

/// A buyer's place in a queued sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct QueueStatusView {
    pub status: QueueStatusKind,
    /// While queued: buyers (tickets) ahead, never growing. Absent in the pre-queue, whose
    /// order is drawn at the opening.
    #[oai(skip_serializing_if_is_none)]
    pub position: Option<i64>,
    /// Buyers waiting in this sale now.
    pub queue_length: i32,
    /// While queued: seconds until this buyer's turn at the recent admission rate.
    #[oai(skip_serializing_if_is_none)]
    pub estimated_wait_seconds: Option<f64>,
    /// While held: when the hold runs out (database clock).
    #[oai(skip_serializing_if_is_none)]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Joined before the opening: the order among pre-queued buyers is drawn at the opening.
    pub prequeue: bool,
    /// Poll again after this many milliseconds (grows with the distance to the front).
    pub poll_after_ms: u32,
}

impl QueueStatusView {
    /// The view of `entry`; with the sale, a waiting entry whose turn cannot come any more
    /// shows `sold_out` or `closed`.
    pub fn new(entry: &QueueEntry, sale: Option<&Sale>) -> Self {
        let status = match (entry.status, sale) {
            (EntryStatus::Queued, Some(sale)) if sale.is_sold_out() => QueueStatusKind::SoldOut,
            (EntryStatus::Queued, Some(sale))
                if matches!(
                    sale.state(),
                    SaleState::Ended | SaleState::Cancelled | SaleState::Archived
                ) =>
            {
                QueueStatusKind::Closed
            }
            (EntryStatus::Queued, _) => QueueStatusKind::Queued,
            (EntryStatus::Held, _) => QueueStatusKind::Held,
            (EntryStatus::Purchased, _) => QueueStatusKind::Purchased,
            (EntryStatus::Expired, _) => QueueStatusKind::Expired,
            (EntryStatus::Left, _) => QueueStatusKind::Left,
        };
        let waiting = status == QueueStatusKind::Queued;
        Self {
            status,
            position: entry.position().filter(|_| waiting),
            queue_length: entry.waiting,
            estimated_wait_seconds: entry.estimated_wait_seconds().filter(|_| waiting),
            hold_expires_at: entry
                .hold_expires_at
                .filter(|_| status == QueueStatusKind::Held),
            prequeue: entry.prequeue,
            poll_after_ms: entry.poll_after_ms(),
        }
    }
}

/// What a DELETE of a sale did.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum RemovalKind {
    /// Nothing was ever sold or held: the sale and all its rows are gone.
    Deleted,
    /// It had purchases or holds: kept for its buyers (readable by id), hidden from every
    /// listing, its sku free, nothing sold or held from now on.
    Archived,
}

/// The answer to a DELETE of a sale.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct RemovedSaleView {
    pub outcome: RemovalKind,
    pub sale_id: Uuid,
    /// Live holds the archive voided (their units went back to stock); 0 when deleted.
    pub voided_holds: i64,
    /// The archived sale as it is now (absent when deleted).
    #[oai(skip_serializing_if_is_none)]
    pub sale: Option<AdminSaleView>,
}

/// A background job that failed for good.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct FailedJobView {
    pub id: i64,
    /// `sync_sale_state` (queue ticks are never parked: they retry until they succeed).
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub sale_id: Option<Uuid>,
    pub attempts: i32,
    /// The last error, as the runner logged it.
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
    pub failed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl From<crate::store::FailedJob> for FailedJobView {
    fn from(job: crate::store::FailedJob) -> Self {
        Self {
            id: job.id,
            kind: job.kind,
            sale_id: job.sale_id,
            attempts: job.attempts,
            last_error: job.last_error,
            failed_at: job.dead_at,
            created_at: job.created_at,
        }
    }
}

/// A requeued job.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct RequeuedJobView {
    pub id: i64,
    /// Always true: the job is due now with a fresh set of attempts.
    pub requeued: bool,
}
