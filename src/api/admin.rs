//! Admin routes: create, list, read, cancel, delete (or archive) and audit sales, and the
//! failed background jobs. Every route requires the admin bearer key ([`AdminAuth`]).
//!
//! `{sale}` is resolved once, here at the edge ([`Store::resolve_sale`]): a UUID names any
//! sale, archived ones included; a sku names the live sale with it.

use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::ApiTags;
use super::auth::AdminAuth;
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::models::{
    AdminSaleView, AuditView, CreateSaleRequest, FailedJobView, QueueStatsView, RaffleStatsView,
    RemovalKind, RemovedSaleView, RequeuedJobView, SaleEventView,
};
use crate::domain::{NewSaleError, Sale};
use crate::store::{CancelOutcome, RemoveOutcome, RequeueOutcome, Store, StoreError};

mod responses;

use responses::*;

pub struct AdminApi {
    pub store: Store,
}

impl AdminApi {
    /// The sale `{sale}` names, resolved once at the edge.
    async fn resolve(&self, sale_ref: &str) -> Result<Option<Sale>, ServerError> {
        Ok(self.store.resolve_sale(sale_ref).await?)
    }
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create a sale
    #[oai(path = "/sales", method = "post", operation_id = "createSale")]
    #[tracing::instrument(skip_all, fields(sku = %body.sku.0))]
    async fn create_sale(
        &self,
        _auth: AdminAuth,
        body: Json<CreateSaleRequest>,
    ) -> Result<CreateSaleResponse, ServerError> {
        let new_sale = match body.0.into_domain() {
            Ok(new_sale) => new_sale,
            Err(message) => {
                return Ok(CreateSaleResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    message,
                )));
            }
        };
        if let Err(err) = new_sale.validate() {
            let code = match err {
                NewSaleError::DuplicateVariant(_) => ErrorCode::DuplicateVariant,
                _ => ErrorCode::InvalidRequest,
            };
            return Ok(CreateSaleResponse::BadRequest(ErrorBody::json(
                code,
                err.to_string(),
            )));
        }
        Ok(match self.store.create_sale(&new_sale).await {
            Ok(sale) => {
                tracing::info!(sale = %sale.id, "sale created");
                CreateSaleResponse::Created(Json((&sale).into()))
            }
            Err(err @ StoreError::SkuTaken(_)) => {
                CreateSaleResponse::Conflict(ErrorBody::json(ErrorCode::SkuTaken, err.to_string()))
            }
            Err(err @ StoreError::EndBeforeStart) => CreateSaleResponse::BadRequest(
                ErrorBody::json(ErrorCode::InvalidRequest, err.to_string()),
            ),
            Err(err) => return Err(err.into()),
        })
    }

    /// List live sales, newest first (archived sales are not listed)
    #[oai(path = "/sales", method = "get", operation_id = "listSales")]
    async fn list_sales(
        &self,
        _auth: AdminAuth,
        /// At most this many (1-1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Skip this many (default 0).
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<ListSalesResponse, ServerError> {
        let sales = self
            .store
            .list_sales(limit.0.unwrap_or(100), offset.0.unwrap_or(0))
            .await?;
        Ok(ListSalesResponse::Ok(Json(
            sales.iter().map(Into::into).collect(),
        )))
    }

    /// One sale with live counters and its state history
    ///
    /// By id, archived sales too; by sku, the live sale with it.
    #[oai(path = "/sales/:sale", method = "get", operation_id = "getAdminSale")]
    async fn get_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<AdminSaleResponse, ServerError> {
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(AdminSaleResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let events = self.store.sale_events(found.id).await?;
        let stats = self.store.queue_stats(found.id).await?;
        let mut view = AdminSaleView::from(&found);
        view.events = Some(events.into_iter().map(SaleEventView::from).collect());
        view.queue = stats.map(|stats| Box::new(QueueStatsView::new(&found, stats)));
        if found.allowlist {
            view.allowlist_size = Some(self.store.allowlist_of(found.id, None).await?.0);
        }
        view.raffle = self
            .store
            .raffle_stats(found.id)
            .await?
            .map(|stats| Box::new(RaffleStatsView::from(stats)));
        Ok(AdminSaleResponse::Ok(Json(view)))
    }

    /// Cancel a sale now
    #[oai(
        path = "/sales/:sale/cancel",
        method = "post",
        operation_id = "cancelSale"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn cancel_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<CancelSaleResponse, ServerError> {
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(CancelSaleResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        Ok(match self.store.cancel_sale(found.id).await? {
            CancelOutcome::Cancelled(cancelled) => {
                tracing::info!("sale cancelled");
                CancelSaleResponse::Ok(Json((&cancelled).into()))
            }
            CancelOutcome::AlreadyEnded(ended) => CancelSaleResponse::Conflict(ErrorBody::json(
                ErrorCode::SaleAlreadyEnded,
                format!("sale {:?} is already {}", ended.sku, ended.state().as_str()),
            )),
            CancelOutcome::NotFound => {
                CancelSaleResponse::NotFound(ErrorBody::sale_not_found(&sale.0))
            }
        })
    }

    /// Delete a sale, or archive it when it has purchases or holds
    ///
    /// No purchase is ever destroyed. A sale with nothing sold or held is removed outright,
    /// with every row of it; one with purchases or live holds is archived: it sells and holds
    /// nothing from now on (its live holds go back to stock, recorded in its `archived`
    /// event), leaves every listing, frees its sku for a new sale at once, and stays readable
    /// by its id (admin view, audit, a buyer's purchase).
    #[oai(path = "/sales/:sale", method = "delete", operation_id = "deleteSale")]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn delete_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<DeleteSaleResponse, ServerError> {
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(DeleteSaleResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let view = match self.store.remove_sale(found.id).await? {
            RemoveOutcome::Deleted => {
                tracing::info!("sale deleted");
                RemovedSaleView {
                    outcome: RemovalKind::Deleted,
                    sale_id: found.id,
                    voided_holds: 0,
                    sale: None,
                }
            }
            RemoveOutcome::Archived { sale, voided_holds } => {
                tracing::info!(voided_holds, "sale archived");
                RemovedSaleView {
                    outcome: RemovalKind::Archived,
                    sale_id: sale.id,
                    voided_holds,
                    sale: Some(Box::new(AdminSaleView::from(&*sale))),
                }
            }
            RemoveOutcome::NotFound => {
                return Ok(DeleteSaleResponse::NotFound(ErrorBody::sale_not_found(
                    &sale.0,
                )));
            }
        };
        Ok(DeleteSaleResponse::Ok(Json(view)))
    }

    /// Check a sale's invariants
    ///
    /// Runs the checks of `stress/invariants.sql`: purchases within stock, one purchase per
    /// user, `sold + held + available = stock`, no negative counter, `sold` equal to the
    /// purchases recorded, `held` equal to the live holds, the queue length equal to the
    /// waiting entries, a purchase for every confirmed hold, a `purchase.created` event for
    /// every purchase, and the sale's event sequence without gaps.
    #[oai(
        path = "/sales/:sale/audit",
        method = "get",
        operation_id = "auditSale"
    )]
    async fn audit_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<AuditResponse, ServerError> {
        let Some(found) = self.resolve(&sale.0).await? else {
            return Ok(AuditResponse::NotFound(ErrorBody::sale_not_found(&sale.0)));
        };
        let report = self.store.audit_sale(found.id).await?;
        if !report.passed() {
            tracing::error!(sale = %found.id, "invariant audit FAILED");
        }
        Ok(AuditResponse::Ok(Json(AuditView::new(&found, report))))
    }

    /// Background jobs that failed for good
    ///
    /// A job that fails is retried with exponential backoff; after its last attempt it is
    /// parked here (and counted by `flashsale_jobs_dead`) until requeued. Queue ticks
    /// (admission and expiry) are never parked.
    #[oai(path = "/jobs", method = "get", operation_id = "listFailedJobs")]
    async fn failed_jobs(
        &self,
        _auth: AdminAuth,
        /// At most this many (1-1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<FailedJobsResponse, ServerError> {
        let jobs = self.store.failed_jobs(limit.0.unwrap_or(100)).await?;
        Ok(FailedJobsResponse::Ok(Json(
            jobs.into_iter().map(FailedJobView::from).collect(),
        )))
    }

    /// Requeue a failed job
    #[oai(
        path = "/jobs/:id/requeue",
        method = "post",
        operation_id = "requeueJob"
    )]
    #[tracing::instrument(skip_all, fields(job = id.0))]
    async fn requeue_job(
        &self,
        _auth: AdminAuth,
        /// The job's id.
        #[oai(validator(minimum(value = "1")))]
        id: Path<i64>,
    ) -> Result<RequeueJobResponse, ServerError> {
        Ok(match self.store.requeue_job(id.0).await? {
            RequeueOutcome::Requeued => {
                tracing::info!("failed job requeued");
                RequeueJobResponse::Ok(Json(RequeuedJobView {
                    id: id.0,
                    requeued: true,
                }))
            }
            RequeueOutcome::NotFailed => RequeueJobResponse::Conflict(ErrorBody::json(
                ErrorCode::JobNotFailed,
                "this job has not failed; it is pending or running",
            )),
            RequeueOutcome::NotFound => RequeueJobResponse::NotFound(ErrorBody::json(
                ErrorCode::JobNotFound,
                format!("no job {}", id.0),
            )),
        })
    }
}
