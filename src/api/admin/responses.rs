//! The answers of the admin routes: one response enum per route, with the handler that
//! turns a malformed request into its 400 with a `code`.

use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

use crate::api::error::{ErrorBody, admin_parse_error};
use crate::api::models::{
    AdminSaleView, AuditView, FailedJobView, RemovedSaleView, RequeuedJobView,
};

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
}
admin_parse_error!(cancel_sale_parse_error, CancelSaleResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "delete_sale_parse_error")]
pub enum DeleteSaleResponse {
    /// `outcome` says what happened: `deleted` (nothing was ever sold or held; the sale
    /// and every row of it are gone) or `archived` (it has purchases or holds: kept for its
    /// buyers and readable by its id, hidden from listings, sku free, live holds voided).
    /// Either way the sku can be used for a new sale at once.
    #[oai(status = 200)]
    Ok(Json<RemovedSaleView>),
    /// `INVALID_REQUEST`: the sale reference is too long.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
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
}
admin_parse_error!(audit_parse_error, AuditResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "failed_jobs_parse_error")]
pub enum FailedJobsResponse {
    /// Jobs that failed for good, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<FailedJobView>>),
    /// `INVALID_REQUEST`: `limit` out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
}
admin_parse_error!(failed_jobs_parse_error, FailedJobsResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "requeue_parse_error")]
pub enum RequeueJobResponse {
    /// The job is due now, with a fresh set of attempts.
    #[oai(status = 200)]
    Ok(Json<RequeuedJobView>),
    /// `INVALID_REQUEST`: the id is not a number.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `JOB_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `JOB_NOT_FAILED`: the job is pending or running, not failed.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}
admin_parse_error!(requeue_parse_error, RequeueJobResponse);
