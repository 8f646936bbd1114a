//! Views only the admin API answers with: the invariant audit, what a DELETE did, and the
//! failed background jobs.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::AdminSaleView;
use crate::domain::Sale;
use crate::store::{AuditReport, FailedJob};

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
