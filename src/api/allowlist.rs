//! Admin routes of a sale's allow-list (a presale): replace it, add to it (both streamed
//! uploads of any size, all or nothing), remove one buyer, and ask whether a buyer is on
//! it. Every route requires the admin bearer key. The reading of an upload is in
//! `allowlist/ids.rs`; what the list does to purchases and joins is the store's.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};

use super::ApiTags;
use super::auth::AdminAuth;
use super::error::{ErrorBody, ErrorCode, ServerError, admin_parse_error};
use crate::domain::Sale;
use crate::domain::sale::valid_user_id;
use crate::store::{AllowlistOutcome, Store, UploadMode};

pub mod ids;

use ids::{CsvIds, Format, JsonIds, TextIds, UploadError};

/// How long an upload may take to arrive (the edge's deadline for these routes): the
/// store's transaction lasts as long.
pub const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// The routes of the allow-list.
pub struct AllowlistApi {
    pub store: Store,
}

/// An upload of user ids (1-128 characters each, no control characters).
#[derive(ApiRequest)]
pub enum AllowlistUpload {
    /// A JSON array of user id strings.
    Json(JsonIds),
    /// One user id per line, no header, no quoting; blank lines are skipped.
    Csv(CsvIds),
    /// The same as `text/csv`.
    Text(TextIds),
}

/// What an upload or a removal did.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct AllowlistChangeView {
    /// Ids read from the upload, repeats included (0 for a removal).
    pub received: i64,
    /// Buyers newly on the list.
    pub added: i64,
    /// Buyers taken off the list (by a replacing upload or a removal).
    pub removed: i64,
    /// The list's size now.
    pub size: i64,
}

/// The list's size, and whether one buyer is on it.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct AllowlistView {
    pub size: i64,
    /// The buyer asked about (`userId`), when given.
    pub user_id: Option<String>,
    /// Whether that buyer is on the list.
    pub on_allowlist: Option<bool>,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "upload_parse_error")]
pub enum UploadResponse {
    /// The list changed (or already was so); nothing else did.
    #[oai(status = 200)]
    Ok(Json<AllowlistChangeView>),
    /// `INVALID_ALLOWLIST`: an id is not a valid user id, or the body is not the format its
    /// `Content-Type` says (the message names the line or item); nothing changed.
    /// `UNSUPPORTED_MEDIA_TYPE`: not `application/json`, `text/csv` or `text/plain`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `NO_ALLOWLIST`: the sale was created without `"allowlist": true`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `PAYLOAD_TOO_LARGE`: the body is over 64 MiB; nothing changed.
    #[oai(status = 413)]
    TooLarge(Json<ErrorBody>),
}
admin_parse_error!(upload_parse_error, UploadResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "remove_parse_error")]
pub enum RemoveResponse {
    /// The buyer is not on the list (now, or already before: removing is idempotent).
    #[oai(status = 204)]
    Removed,
    /// `INVALID_REQUEST`: not a valid user id.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `NO_ALLOWLIST`: the sale was created without `"allowlist": true`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}
admin_parse_error!(remove_parse_error, RemoveResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "show_parse_error")]
pub enum ShowResponse {
    /// The list's size, and whether `userId` is on it.
    #[oai(status = 200)]
    Ok(Json<AllowlistView>),
    /// `INVALID_REQUEST`: `userId` is not a valid user id.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `NO_ALLOWLIST`: the sale was created without `"allowlist": true`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}
admin_parse_error!(show_parse_error, ShowResponse);

fn no_allowlist() -> Json<ErrorBody> {
    ErrorBody::json(
        ErrorCode::NoAllowlist,
        "this sale was created without an allow-list (\"allowlist\": true)",
    )
}

impl AllowlistApi {
    /// The sale `{sale}` names, if it has an allow-list: `Err` with the answer otherwise.
    async fn sale_with_list(&self, sale_ref: &str) -> Result<Result<Sale, Refusal>, ServerError> {
        Ok(match self.store.resolve_sale(sale_ref).await? {
            None => Err(Refusal::NotFound(ErrorBody::sale_not_found(sale_ref))),
            Some(sale) if !sale.allowlist => Err(Refusal::NoList(no_allowlist())),
            Some(sale) => Ok(sale),
        })
    }

    /// Reads the upload into the store, all or nothing.
    async fn upload(
        &self,
        sale_ref: &str,
        mode: UploadMode,
        body: AllowlistUpload,
    ) -> Result<UploadResponse, ServerError> {
        let sale = match self.sale_with_list(sale_ref).await? {
            Ok(sale) => sale,
            Err(Refusal::NotFound(body)) => return Ok(UploadResponse::NotFound(body)),
            Err(Refusal::NoList(body)) => return Ok(UploadResponse::Conflict(body)),
        };
        let (body, format) = match body {
            AllowlistUpload::Json(JsonIds(body)) => (body, Format::Json),
            AllowlistUpload::Csv(CsvIds(body)) | AllowlistUpload::Text(TextIds(body)) => {
                (body, Format::Lines)
            }
        };
        let (chunks, reader) = ids::read_ids(body, format);
        let stored = self.store.upload_allowlist(sale.id, mode, chunks).await;
        // The reader ends once the store stops taking chunks (its receiver is dropped).
        let read = reader
            .await
            .unwrap_or_else(|err| Err(UploadError::Unreadable(err.to_string())));
        match read {
            Ok(()) | Err(UploadError::NotTaken) => {}
            Err(err @ UploadError::TooLarge) => {
                return Ok(UploadResponse::TooLarge(ErrorBody::json(
                    ErrorCode::PayloadTooLarge,
                    err.to_string(),
                )));
            }
            Err(UploadError::Invalid(message)) => {
                return Ok(UploadResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidAllowlist,
                    message,
                )));
            }
            Err(err @ UploadError::Unreadable(_)) => {
                return Ok(UploadResponse::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    err.to_string(),
                )));
            }
        }
        Ok(match stored? {
            AllowlistOutcome::Changed {
                received,
                added,
                removed,
                size,
            } => {
                tracing::info!(sale = %sale.id, received, added, removed, size, "allow-list uploaded");
                UploadResponse::Ok(Json(AllowlistChangeView {
                    received,
                    added,
                    removed,
                    size,
                }))
            }
            // The reader said why; this is a fallback.
            AllowlistOutcome::Invalid(message) => {
                UploadResponse::BadRequest(ErrorBody::json(ErrorCode::InvalidAllowlist, message))
            }
            AllowlistOutcome::SaleNotFound => {
                UploadResponse::NotFound(ErrorBody::sale_not_found(sale_ref))
            }
            AllowlistOutcome::NoAllowlist => UploadResponse::Conflict(no_allowlist()),
        })
    }
}

/// Why a route does not reach the list.
enum Refusal {
    NotFound(Json<ErrorBody>),
    NoList(Json<ErrorBody>),
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Admin")]
impl AllowlistApi {
    /// Replace a sale's allow-list
    ///
    /// The list becomes exactly the uploaded ids: a JSON array (`application/json`) or one
    /// id per line (`text/csv`, `text/plain`), streamed (up to 64 MiB, about 1.5 million
    /// ids), in one transaction: an invalid id anywhere changes nothing. Idempotent.
    /// Buyers on both the old and the new list stay eligible throughout; purchases of
    /// removed buyers stay. One `sale.allowlist_changed` event.
    #[oai(
        path = "/sales/:sale/allowlist",
        method = "put",
        operation_id = "replaceAllowlist"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn replace(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        body: AllowlistUpload,
    ) -> Result<UploadResponse, ServerError> {
        self.upload(&sale.0, UploadMode::Replace, body).await
    }

    /// Add buyers to a sale's allow-list
    ///
    /// The uploaded ids join the list (the same formats and rules as the replace);
    /// ids already on it are counted in `received`, not in `added`.
    #[oai(
        path = "/sales/:sale/allowlist",
        method = "post",
        operation_id = "addToAllowlist"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn add(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        body: AllowlistUpload,
    ) -> Result<UploadResponse, ServerError> {
        self.upload(&sale.0, UploadMode::Add, body).await
    }

    /// The allow-list's size, or whether one buyer is on it
    #[oai(
        path = "/sales/:sale/allowlist",
        method = "get",
        operation_id = "getAllowlist"
    )]
    async fn show(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer to look up.
        #[oai(name = "userId", validator(min_length = 1, max_length = 128))]
        user_id: Query<Option<String>>,
    ) -> Result<ShowResponse, ServerError> {
        if let Some(user) = &user_id.0
            && !valid_user_id(user)
        {
            return Ok(ShowResponse::BadRequest(ErrorBody::invalid_user_id()));
        }
        let sale = match self.sale_with_list(&sale.0).await? {
            Ok(sale) => sale,
            Err(Refusal::NotFound(body)) => return Ok(ShowResponse::NotFound(body)),
            Err(Refusal::NoList(body)) => return Ok(ShowResponse::Conflict(body)),
        };
        let (size, on_allowlist) = self
            .store
            .allowlist_of(sale.id, user_id.0.as_deref())
            .await?;
        Ok(ShowResponse::Ok(Json(AllowlistView {
            size,
            user_id: user_id.0,
            on_allowlist,
        })))
    }

    /// Remove a buyer from a sale's allow-list
    ///
    /// Idempotent: 204 whether or not the buyer was on it. Their purchases stay. Once this
    /// is answered, no purchase or join of theirs succeeds (one in flight either committed
    /// before the removal, or is refused).
    #[oai(
        path = "/sales/:sale/allowlist/:user_id",
        method = "delete",
        operation_id = "removeFromAllowlist"
    )]
    #[tracing::instrument(skip_all, fields(sale = %sale.0))]
    async fn remove(
        &self,
        _auth: AdminAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
    ) -> Result<RemoveResponse, ServerError> {
        if !valid_user_id(&user_id.0) {
            return Ok(RemoveResponse::BadRequest(ErrorBody::invalid_user_id()));
        }
        let sale = match self.sale_with_list(&sale.0).await? {
            Ok(sale) => sale,
            Err(Refusal::NotFound(body)) => return Ok(RemoveResponse::NotFound(body)),
            Err(Refusal::NoList(body)) => return Ok(RemoveResponse::Conflict(body)),
        };
        Ok(
            match self
                .store
                .remove_from_allowlist(sale.id, &user_id.0)
                .await?
            {
                AllowlistOutcome::SaleNotFound => {
                    RemoveResponse::NotFound(ErrorBody::sale_not_found(&sale.id.to_string()))
                }
                AllowlistOutcome::NoAllowlist => RemoveResponse::Conflict(no_allowlist()),
                AllowlistOutcome::Changed { .. } | AllowlistOutcome::Invalid(_) => {
                    RemoveResponse::Removed
                }
            },
        )
    }
}
