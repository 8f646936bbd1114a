//! The answers of the queue routes: one response enum per route, and the parse-error
//! handlers that turn a malformed request into its 400 with a `code`.

use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

use crate::api::buyer_auth::identity_refusal;
use crate::api::error::{ErrorBody, ErrorCode};
use crate::api::models::{PurchaseView, QueueStatusView};

identity_refusal!(
    JoinResponse,
    QueueStatusResponse,
    ConfirmResponse,
    LeaveResponse,
    UserPurchasesResponse,
);

pub(super) fn wrong_checkout() -> Json<ErrorBody> {
    ErrorBody::json(
        ErrorCode::WrongCheckout,
        "this sale uses the instant checkout: buy with POST .../purchases",
    )
}

pub(super) fn not_in_queue() -> Json<ErrorBody> {
    ErrorBody::json(
        ErrorCode::NotInQueue,
        "this user has no entry in this sale's queue",
    )
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "join_parse_error")]
pub enum JoinResponse {
    /// In the queue (`queued`, with the position) or already holding its units (`held`).
    /// Joining again returns the current entry (with the quantity it asked for first).
    #[oai(status = 202)]
    Accepted(Json<QueueStatusView>),
    /// `INVALID_REQUEST`; `QUANTITY_TOO_LARGE` (with `maxPerOrder`): more units than the
    /// sale's `maxPerOrder`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`; `NOT_ELIGIBLE`: the
    /// sale has an allow-list and the buyer is not on it.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `ALREADY_PURCHASED` (with the purchase), `SOLD_OUT` (no stock and no live holds),
    /// `INSUFFICIENT_STOCK` (with `available`: the units unsold, available or held, fewer
    /// than the join asks for: its hold could never be granted), `SALE_NOT_ACTIVE` (with
    /// the state), `WRONG_CHECKOUT` (an instant sale).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `QUEUE_FULL`: the sale's queue capacity is reached; retry after `Retry-After`.
    #[oai(status = 503)]
    QueueFull(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn join_parse_error(err: poem::Error) -> JoinResponse {
    JoinResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "status_parse_error")]
pub enum QueueStatusResponse {
    /// The buyer's status: `queued` (with `position` and an estimated wait), `held` (with
    /// `holdExpiresAt`), `purchased`, `expired`, `sold_out`, `left` or `closed`; always
    /// with `pollAfterMs`.
    #[oai(status = 200)]
    Ok(Json<QueueStatusView>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`, or `NOT_IN_QUEUE` when the user never joined.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `WRONG_CHECKOUT`: an instant sale has no queue.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}

fn status_parse_error(err: poem::Error) -> QueueStatusResponse {
    QueueStatusResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "confirm_parse_error")]
pub enum ConfirmResponse {
    /// Bought: the hold became a committed purchase.
    #[oai(status = 201)]
    Created(Json<PurchaseView>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND` or `NOT_IN_QUEUE`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `NO_HOLD` (still queued), `ALREADY_PURCHASED` (with the purchase),
    /// `SALE_NOT_ACTIVE` (cancelled), `WRONG_CHECKOUT`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `HOLD_EXPIRED`: the hold ran out, even by a millisecond; the unit went back to stock.
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn confirm_parse_error(err: poem::Error) -> ConfirmResponse {
    ConfirmResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "leave_parse_error")]
pub enum LeaveResponse {
    /// Left (`left`): a released hold's unit is back in stock and the next buyer is being
    /// admitted. Leaving again, or after the hold expired, answers the same way.
    #[oai(status = 200)]
    Ok(Json<QueueStatusView>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND` or `NOT_IN_QUEUE`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `ALREADY_PURCHASED` (a purchase cannot be undone here), `WRONG_CHECKOUT`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn leave_parse_error(err: poem::Error) -> LeaveResponse {
    LeaveResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "purchases_parse_error")]
pub enum UserPurchasesResponse {
    /// The user's purchases, newest first (both checkouts).
    #[oai(status = 200)]
    Ok(Json<Vec<PurchaseView>>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
}

fn purchases_parse_error(err: poem::Error) -> UserPurchasesResponse {
    UserPurchasesResponse::BadRequest(ErrorBody::bad_input(err))
}
