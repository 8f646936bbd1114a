//! Views only the admin API answers with: a sale with its counters and history, the
//! invariant audit, what a DELETE did, and the failed background jobs.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::{EndReasonView, QueueStatsView, RaffleStatsView, SaleView};
use crate::domain::Sale;
use crate::store::{AuditReport, FailedJob, SaleEvent};

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
    /// The waiting room's counters (queued sales, single-sale view only). (Boxed: every
    /// admin response enum carries this view by value.)
    #[oai(skip_serializing_if_is_none)]
    pub queue: Option<Box<QueueStatsView>>,
    /// Buyers on the allow-list (sales with one, single-sale view only).
    #[oai(skip_serializing_if_is_none)]
    pub allowlist_size: Option<i64>,
    /// The draw and its entrants (raffles, single-sale view only). (Boxed: every admin
    /// response carries this view by value.)
    #[oai(skip_serializing_if_is_none)]
    pub raffle: Option<Box<RaffleStatsView>>,
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
            allowlist_size: None,
            raffle: None,
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
    pub sale: Option<Box<AdminSaleView>>,
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

impl From<FailedJob> for FailedJobView {
    fn from(job: FailedJob) -> Self {
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
