//! The error body every refusal and failure uses, and the mapping of framework errors into it.
//!
//! Policy: every error a client can cause is a 4xx with a machine-readable `code`; a database
//! that cannot be reached, times out or has no free connection is a 503 `UNAVAILABLE` with
//! `Retry-After` ([`ServerError::Unavailable`], with `outcomeUnknown` when a write may have
//! committed); any other failure is an opaque 500 `INTERNAL`, logged once here with its
//! cause. Nothing from the database or the configuration ever reaches a response body.

mod bodies;

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object};

use super::models::{PurchaseView, SaleStateView};
use crate::store::StoreError;
use crate::telemetry::Throttle;

/// The message of every 500: the details are only in the log.
const INTERNAL_MESSAGE: &str = "internal error; see the service log";

/// Seconds a client told 503 `UNAVAILABLE` is asked to wait before retrying (longer, and
/// jittered, while the database is known to be down: see `StoreError::Down`).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Machine-readable reason of an error response.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, out-of-range or missing values, unknown fields.
    InvalidRequest,
    /// Missing or wrong admin key.
    Unauthorized,
    /// Buyer routes with `BUYER_TOKEN_SECRET` set: a missing, malformed, wrongly signed or
    /// expired buyer token.
    Unauthenticated,
    /// The buyer token's user is not the `userId` of the request.
    Forbidden,
    /// No sale has this id or sku.
    SaleNotFound,
    /// Another sale already uses this sku.
    SkuTaken,
    /// Nothing left to sell.
    SoldOut,
    /// The user already bought from this sale (its per-customer limit is 1); the body
    /// carries the purchase.
    AlreadyPurchased,
    /// Some units are left, fewer than the order asks for; the body carries `available`.
    InsufficientStock,
    /// The order would take the buyer past the sale's per-customer limit; the body carries
    /// `remaining`, the units the buyer may still buy.
    LimitReached,
    /// The order asks for more units than the sale's `maxPerOrder`, which the body carries.
    QuantityTooLarge,
    /// The sale has variants and the order names none (`variant`).
    VariantRequired,
    /// The order names a variant the sale does not have (or the sale has no variants).
    UnknownVariant,
    /// A new sale's variants repeat a code.
    DuplicateVariant,
    /// The sale is scheduled, ended or cancelled; the body carries the state.
    SaleNotActive,
    /// The sale uses the other checkout.
    WrongCheckout,
    /// The sale has an allow-list (a presale) and the buyer is not on it (403).
    NotEligible,
    /// An allow-list upload is not a list of valid user ids (the message names the line or
    /// position); nothing was changed.
    InvalidAllowlist,
    /// The sale was created without an allow-list (`"allowlist": true`), so it has none to
    /// change.
    NoAllowlist,
    /// The user has no purchase in this sale.
    NotPurchased,
    /// The sale already ended; it cannot be cancelled.
    SaleAlreadyEnded,
    /// Too many requests; retry after the `Retry-After` seconds.
    RateLimited,
    /// The sale's queue is at capacity; retry after the `Retry-After` seconds.
    QueueFull,
    /// The instance serves as many live streams as it may (503), or this client holds as
    /// many as one client may (429); retry after `Retry-After` seconds, or poll.
    TooManyStreams,
    /// The feed cursor points before events retention has removed: reading on would skip
    /// them. The message names the oldest cursor still complete.
    CursorExpired,
    /// The user has no entry in this sale's queue.
    NotInQueue,
    /// The user is still waiting for a hold; nothing to confirm yet.
    NoHold,
    /// The hold ran out before the confirmation; the unit went back to stock.
    HoldExpired,
    /// A raffle takes entries only while active (its window); the body carries the state.
    NotAcceptingEntries,
    /// The buyer withdrew from this raffle and may not enter again.
    EntryWithdrawn,
    /// The user has no entry in this raffle.
    NotEntered,
    /// No selection to confirm: waiting, not selected or withdrawn (the message says).
    NotSelected,
    /// No background job has this id.
    JobNotFound,
    /// The job has not failed for good; only failed jobs can be requeued.
    JobNotFailed,
    /// No webhook endpoint has this id.
    WebhookNotFound,
    /// No webhook delivery has this id.
    DeliveryNotFound,
    /// The delivery is still pending; only finished ones can be replayed.
    DeliveryPending,
    /// No such route.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The body is not JSON (`Content-Type: application/json` expected).
    UnsupportedMediaType,
    /// The request body is too large.
    PayloadTooLarge,
    /// The database does not answer.
    Unavailable,
    /// An unexpected fault on our side; details are in the service log.
    Internal,
}

/// The body of every error response.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// With `SALE_NOT_ACTIVE` and `NOT_ACCEPTING_ENTRIES`: the sale's current state.
    pub state: Option<SaleStateView>,
    /// With `ALREADY_PURCHASED`: the purchase the user already owns. (Boxed: the largest
    /// field, and every handler returns this body by value in its response enum.)
    pub purchase: Option<Box<PurchaseView>>,
    /// With `INSUFFICIENT_STOCK`: the units left (fewer than asked for).
    pub available: Option<i64>,
    /// With `LIMIT_REACHED`: the units the buyer may still buy in this sale (0 at the limit).
    pub remaining: Option<i64>,
    /// With `QUANTITY_TOO_LARGE`: the most units one order of this sale may ask for.
    pub max_per_order: Option<i64>,
    /// With `UNAVAILABLE` on a write: `true` when the write was sent but its answer was lost,
    /// so it may or may not have taken effect. Buyer writes are safe to retry: a purchase or
    /// confirm retried answers 201, or `ALREADY_PURCHASED` with the purchase.
    pub outcome_unknown: Option<bool>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            state: None,
            purchase: None,
            available: None,
            remaining: None,
            max_per_order: None,
            outcome_unknown: None,
        }
    }

    pub fn json(code: ErrorCode, message: impl Into<String>) -> Json<Self> {
        Json(Self::new(code, message))
    }

    /// The opaque 500 body; logs `err` with its cause chain, the one place it is logged.
    pub fn internal(err: &dyn std::error::Error) -> Json<Self> {
        tracing::error!(error = %chain(err), "request failed");
        Self::json(ErrorCode::Internal, INTERNAL_MESSAGE)
    }
}

/// The failures of our side every route that uses the database may answer.
#[derive(ApiResponse, Debug)]
pub enum ServerError {
    /// `INTERNAL`: an unexpected fault; details are in the service log.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// `UNAVAILABLE`: the database cannot be reached, timed out, or every connection is
    /// busy, or the service is at its limit of requests in flight; retry after `Retry-After`
    /// seconds. With `outcomeUnknown: true` a write may have committed: retrying a buyer
    /// write is safe and tells which (201, or `ALREADY_PURCHASED` with the purchase).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

impl ServerError {
    /// 503 `UNAVAILABLE` with `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ServerError::Unavailable(
            ErrorBody::json(ErrorCode::Unavailable, message),
            RETRY_AFTER_SECONDS,
        )
    }
}

impl From<StoreError> for ServerError {
    /// Logs what was not logged where it happened: a failure of this request alone (with
    /// its SQLSTATE), never again the failure of a group-commit batch (logged once for the
    /// whole batch) or an unanswered statement (logged where it was cut off).
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::OutcomeUnknown => {
                tracing::debug!("answering: outcome unknown");
                let mut body = ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the database did not confirm this write in time: it may or may not have \
                     taken effect. Retrying is safe: a retried purchase or confirm answers 201 \
                     or ALREADY_PURCHASED with the purchase",
                );
                body.outcome_unknown = Some(true);
                ServerError::Unavailable(Json(body), RETRY_AFTER_SECONDS)
            }
            StoreError::Overloaded => ServerError::unavailable(
                "too many purchases of this sale are waiting; retry in a second",
            ),
            StoreError::Down { retry_after } => {
                tracing::debug!("answering: the database is down (logged by its probe)");
                ServerError::Unavailable(
                    ErrorBody::json(
                        ErrorCode::Unavailable,
                        format!("the database is down; retry after {retry_after} s"),
                    ),
                    retry_after,
                )
            }
            StoreError::Unavailable(None) => {
                tracing::debug!("answering: database unavailable (logged where it failed)");
                ServerError::unavailable("the database is unavailable; retry in a second")
            }
            err if err.is_unavailable() => {
                // Once per request would be a line per buyer in an outage.
                static LOGGED: Throttle = Throttle::new(std::time::Duration::from_secs(5));
                if LOGGED.ready() {
                    let (code, message) = err.cause();
                    tracing::warn!(code, message, "database unavailable (the next 5 s: quiet)");
                }
                ServerError::unavailable("the database is unavailable; retry in a second")
            }
            StoreError::Batch(message) => {
                tracing::debug!(
                    message,
                    "answering: group-commit batch failed (logged once)"
                );
                ServerError::Internal(ErrorBody::json(ErrorCode::Internal, INTERNAL_MESSAGE))
            }
            err => ServerError::Internal(ErrorBody::internal(&err)),
        }
    }
}

/// An error with its causes, `: `-separated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// The code for an error status the framework produced outside our handlers.
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        status if status.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    }
}

/// A request error from parameter or body parsing (the operations' bad-request handlers):
/// whether it is an authentication failure, and the body to send.
pub fn parse_error_body(err: &poem::Error) -> (bool, Json<ErrorBody>) {
    let status = err.status();
    if status == StatusCode::UNAUTHORIZED {
        return (
            true,
            ErrorBody::json(ErrorCode::Unauthorized, "missing or invalid bearer key"),
        );
    }
    (
        false,
        ErrorBody::json(code_for_status(status), err.to_string()),
    )
}

/// Turns any error that escaped the operations (unknown route, wrong method, panic) into the
/// JSON error body with the same status.
pub fn fallback_response(err: poem::Error) -> Response {
    if err.is_from_response() {
        // Already one of our JSON answers (a route's error response).
        return err.into_response();
    }
    let status = err.status();
    let body = if status.is_server_error() {
        ErrorBody::internal(&err)
    } else {
        ErrorBody::json(code_for_status(status), err.to_string())
    };
    body.with_status(status).into_response()
}

/// Maps a request that failed to parse to 401 (bad key) or 400 (bad input).
macro_rules! admin_parse_error {
    ($handler:ident, $response:ident) => {
        fn $handler(err: poem::Error) -> $response {
            match $crate::api::error::parse_error_body(&err) {
                (true, body) => $response::Unauthorized(body),
                (false, body) => $response::BadRequest(body),
            }
        }
    };
}
pub(crate) use admin_parse_error;
