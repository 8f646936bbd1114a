//! The answers of the raffle routes: one response enum per route, and the parse-error
//! handlers that turn a malformed request into its 400 with a `code`.

use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

use crate::api::buyer_auth::identity_refusal;
use crate::api::error::{ErrorBody, ErrorCode};
use crate::api::models::{PurchaseView, RaffleEntryView};

identity_refusal!(
    EnterResponse,
    EntryResponse,
    EntryConfirmResponse,
    WithdrawResponse
);

pub(super) fn wrong_checkout() -> Json<ErrorBody> {
    ErrorBody::json(
        ErrorCode::WrongCheckout,
        "this sale is not a raffle: buy with POST .../purchases or join POST .../queue",
    )
}

pub(super) fn not_entered() -> Json<ErrorBody> {
    ErrorBody::json(
        ErrorCode::NotEntered,
        "this user has no entry in this raffle",
    )
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "enter_parse_error")]
pub enum EnterResponse {
    /// Already entered: the entry as it is now (entering is idempotent; the first
    /// quantity stays).
    #[oai(status = 200)]
    Ok(Json<RaffleEntryView>),
    /// Entered (`entered`); the draw ranks the entrants at `endsAt`.
    #[oai(status = 202)]
    Accepted(Json<RaffleEntryView>),
    /// `INVALID_REQUEST`; `QUANTITY_TOO_LARGE` (with `maxPerOrder`).
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
    /// `NOT_ACCEPTING_ENTRIES` (with the state: before `startsAt`, from `endsAt`, or
    /// cancelled), `ENTRY_WITHDRAWN`, `WRONG_CHECKOUT` (not a raffle).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn enter_parse_error(err: poem::Error) -> EnterResponse {
    EnterResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "entry_parse_error")]
pub enum EntryResponse {
    /// The entrant's status: `entered`, `selected` (with `holdExpiresAt`), `purchased`,
    /// `expired`, `not_selected` or `withdrawn`; with `drawPosition` and `drawSeed` once
    /// drawn.
    #[oai(status = 200)]
    Ok(Json<RaffleEntryView>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`, or `NOT_ENTERED`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `WRONG_CHECKOUT`: not a raffle.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}

fn entry_parse_error(err: poem::Error) -> EntryResponse {
    EntryResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "confirm_parse_error")]
pub enum EntryConfirmResponse {
    /// Bought: the selection became a committed purchase of its `quantity`.
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
    /// `SALE_NOT_FOUND` or `NOT_ENTERED`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `NOT_SELECTED` (waiting, not selected or withdrawn), `ALREADY_PURCHASED` (with the
    /// purchase), `SALE_NOT_ACTIVE` (cancelled or archived), `WRONG_CHECKOUT`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `HOLD_EXPIRED`: the hold ran out, even by a millisecond; it passed on.
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn confirm_parse_error(err: poem::Error) -> EntryConfirmResponse {
    EntryConfirmResponse::BadRequest(ErrorBody::bad_input(err))
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "withdraw_parse_error")]
pub enum WithdrawResponse {
    /// Withdrawn (`withdrawn`): a selected entrant's units are back in stock and pass to
    /// the next entrant in draw order. Withdrawing again answers the same.
    #[oai(status = 200)]
    Ok(Json<RaffleEntryView>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the request's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND` or `NOT_ENTERED`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The entry is final: `ALREADY_PURCHASED` (with the purchase), `HOLD_EXPIRED`,
    /// `NOT_SELECTED`; or `WRONG_CHECKOUT`.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `RATE_LIMITED`, with `Retry-After`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn withdraw_parse_error(err: poem::Error) -> WithdrawResponse {
    WithdrawResponse::BadRequest(ErrorBody::bad_input(err))
}
