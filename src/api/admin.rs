//! Admin routes: create, list, read, cancel, delete and audit sales. Every route requires the
//! admin bearer key ([`AdminAuth`]).

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::auth::AdminAuth;
use super::error::{ErrorBody, ErrorCode, parse_error_body};
use super::models::{AdminSaleView, AuditView, CreateSaleRequest, QueueStatsView, SaleEventView};
use crate::store::{CancelOutcome, Store, StoreError};

pub struct AdminApi {
    pub store: Store,
}

/// Maps a request that failed to parse to 401 (bad key) or 400 (bad input).
macro_rules! admin_parse_error {
    ($handler:ident, $response:ident) => {
        fn $handler(err: poem::Error) -> $response {
            match parse_error_body(&err) {
                (true, body) => $response::Unauthorized(body),
                (false, body) => $response::BadRequest(body),
            }
        }
    };
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "create_sale_parse_error")]
pub enum CreateSaleResponse {
    /// The sale was created.
    #[oai(status = 201)]
    Created(Json<AdminSaleView>),
    /// `INVALID_REQUEST`: malformed JSON, a missing, unknown or out-of-range field, or an end
    /// not after the start.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SKU_TAKEN`: another sale uses this sku.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(create_sale_parse_error, CreateSaleResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_sales_parse_error")]
pub enum ListSalesResponse {
    /// Sales, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<AdminSaleView>>),
    /// `INVALID_REQUEST`: `limit` or `offset` out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(list_sales_parse_error, ListSalesResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "admin_sale_parse_error")]
pub enum AdminSaleResponse {
    /// The sale with live counters and its recorded state changes.
    #[oai(status = 200)]
    Ok(Json<AdminSaleView>),
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(admin_sale_parse_error, AdminSaleResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "cancel_sale_parse_error")]
pub enum CancelSaleResponse {
    /// The sale is cancelled as of now; purchases are refused from this moment.
    #[oai(status = 200)]
    Ok(Json<AdminSaleView>),
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `SALE_ALREADY_ENDED`: it ended by time, sold out, or was cancelled before.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(cancel_sale_parse_error, CancelSaleResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "delete_sale_parse_error")]
pub enum DeleteSaleResponse {
    /// The sale and all its purchases, events and jobs are gone; its sku is free.
    #[oai(status = 204)]
    Deleted,
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(delete_sale_parse_error, DeleteSaleResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "audit_parse_error")]
pub enum AuditResponse {
    /// Each invariant with its verdict (200 whether or not they pass: read `passed`).
    #[oai(status = 200)]
    Ok(Json<AuditView>),
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `INTERNAL`.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}
admin_parse_error!(audit_parse_error, AuditResponse);

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create a sale
    #[oai(path = "/sales", method = "post", operation_id = "createSale")]
    #[tracing::instrument(skip_all, fields(sku = %body.sku.0))]
    async fn create_sale(
        &self,
        _auth: AdminAuth,
        body: Json<CreateSaleRequest>,
    ) -> CreateSaleResponse {
        let new_sale = body.0.into_domain();
        if let Err(err) = new_sale.validate() {
            return CreateSaleResponse::BadRequest(ErrorBody::json(
                ErrorCode::InvalidRequest,
                err.to_string(),
            ));
        }
        match self.store.create_sale(&new_sale).await {
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
            Err(err) => CreateSaleResponse::Internal(ErrorBody::internal(&err)),
        }
    }

    /// List sales, newest first
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
    ) -> ListSalesResponse {
        match self
            .store
            .list_sales(limit.0.unwrap_or(100), offset.0.unwrap_or(0))
            .await
        {
            Ok(sales) => ListSalesResponse::Ok(Json(sales.iter().map(Into::into).collect())),
            Err(err) => ListSalesResponse::Internal(ErrorBody::internal(&err)),
        }
    }

    /// One sale with live counters and its state history
    #[oai(path = "/sales/:sale", method = "get", operation_id = "getAdminSale")]
    async fn get_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> AdminSaleResponse {
        let found = match self.store.find_sale(&sale.0).await {
            Ok(Some(found)) => found,
            Ok(None) => return AdminSaleResponse::NotFound(ErrorBody::sale_not_found(&sale.0)),
            Err(err) => return AdminSaleResponse::Internal(ErrorBody::internal(&err)),
        };
        match self.store.sale_events(found.id).await {
            Ok(events) => {
                let mut view = AdminSaleView::from(&found);
                view.events = Some(events.into_iter().map(SaleEventView::from).collect());
                match self.store.queue_stats(found.id).await {
                    Ok(stats) => view.queue = stats.map(|stats| QueueStatsView::new(&found, stats)),
                    Err(err) => return AdminSaleResponse::Internal(ErrorBody::internal(&err)),
                }
                AdminSaleResponse::Ok(Json(view))
            }
            Err(err) => AdminSaleResponse::Internal(ErrorBody::internal(&err)),
        }
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
    ) -> CancelSaleResponse {
        match self.store.cancel_sale(&sale.0).await {
            Ok(CancelOutcome::Cancelled(cancelled)) => {
                tracing::info!("sale cancelled");
                CancelSaleResponse::Ok(Json((&cancelled).into()))
            }
            Ok(CancelOutcome::AlreadyEnded(ended)) => {
                CancelSaleResponse::Conflict(ErrorBody::json(
                    ErrorCode::SaleAlreadyEnded,
                    format!("sale {:?} is already {}", ended.sku, ended.state().as_str()),
                ))
            }
            Ok(CancelOutcome::NotFound) => {
                CancelSaleResponse::NotFound(ErrorBody::sale_not_found(&sale.0))
            }
            Err(err) => CancelSaleResponse::Internal(ErrorBody::internal(&err)),
        }
    }

    /// Delete a sale and everything that belongs to it
    #[oai(path = "/sales/:sale", method = "delete", operation_id = "deleteSale")]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn delete_sale(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> DeleteSaleResponse {
        match self.store.delete_sale(&sale.0).await {
            Ok(true) => {
                tracing::info!("sale deleted");
                DeleteSaleResponse::Deleted
            }
            Ok(false) => DeleteSaleResponse::NotFound(ErrorBody::sale_not_found(&sale.0)),
            Err(err) => DeleteSaleResponse::Internal(ErrorBody::internal(&err)),
        }
    }

    /// Check a sale's invariants
    ///
    /// Runs the checks of `stress/invariants.sql`: purchases within stock, one purchase per
    /// user, `sold + held + available = stock`, no negative counter, `sold` equal to the
    /// purchases recorded, `held` equal to the live holds, the queue length equal to the
    /// waiting entries, and a purchase for every confirmed hold.
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
    ) -> AuditResponse {
        let found = match self.store.find_sale(&sale.0).await {
            Ok(Some(found)) => found,
            Ok(None) => return AuditResponse::NotFound(ErrorBody::sale_not_found(&sale.0)),
            Err(err) => return AuditResponse::Internal(ErrorBody::internal(&err)),
        };
        match self.store.audit_sale(&found.sku).await {
            Ok(report) => {
                if !report.passed() {
                    tracing::error!(sale = %found.sku, "invariant audit FAILED");
                }
                AuditResponse::Ok(Json(AuditView::new(&found, report)))
            }
            Err(err) => AuditResponse::Internal(ErrorBody::internal(&err)),
        }
    }
}
