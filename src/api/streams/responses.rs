//! The answers of the live-stream routes: one response enum per route, the refusals a
//! buyer's stream (a queue's or a raffle's) shares, and the parse-error handlers that turn
//! a malformed request into its 400 with a `code`.

use futures_util::stream::BoxStream;
use poem_openapi::ApiResponse;
use poem_openapi::payload::{EventStream, Json};

use crate::api::buyer_auth::{IdentityError, identity_refusal};
use crate::api::error::{ErrorBody, ErrorCode};
use crate::api::models::{QueueStreamEvent, RaffleStreamEvent, SaleStreamEvent};
use crate::live::StreamsFull;

/// Seconds a refused stream is told to wait.
const STREAMS_FULL_RETRY_SECONDS: u64 = 5;

/// The response of a buyer's stream (a queue's or a raffle's): the same statuses and
/// codes, with what differs (the messages, what is not found, what is the wrong checkout)
/// in each variant's description.
macro_rules! buyer_stream_response {
    (
        $response:ident, $message:ty, $parse_error:ident = $handler:literal,
        ok: $ok:literal, not_found: $not_found:literal, conflict: $conflict:literal
    ) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = $handler)]
        pub enum $response {
            #[doc = $ok]
            #[oai(status = 200)]
            Ok(EventStream<BoxStream<'static, $message>>),
            /// `INVALID_REQUEST`: a malformed `Last-Event-ID`.
            #[oai(status = 400)]
            BadRequest(Json<ErrorBody>),
            /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
            #[oai(status = 401)]
            Unauthorized(Json<ErrorBody>),
            /// `FORBIDDEN`: the token's user is not the path's `userId`.
            #[oai(status = 403)]
            Forbidden(Json<ErrorBody>),
            #[doc = $not_found]
            #[oai(status = 404)]
            NotFound(Json<ErrorBody>),
            #[doc = $conflict]
            #[oai(status = 409)]
            Conflict(Json<ErrorBody>),
            /// `TOO_MANY_STREAMS`: this client (an IP address, an IPv6 /64) holds as many streams
            /// as one client may (`MAX_STREAMS_PER_CLIENT`); close one, or poll.
            #[oai(status = 429)]
            TooMany(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
            /// `TOO_MANY_STREAMS`: this instance serves its maximum; retry later or poll.
            #[oai(status = 503)]
            Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
        }

        fn $parse_error(err: poem::Error) -> $response {
            $response::BadRequest(ErrorBody::json(ErrorCode::InvalidRequest, err.to_string()))
        }

        identity_refusal!($response);

        impl $response {
            /// The answer to a refusal of [`BuyerRefusal`].
            pub(super) fn refused(refusal: BuyerRefusal, sale: &str) -> Self {
                use crate::api::buyer_auth::IdentityRefusal;
                match refusal {
                    BuyerRefusal::Identity(err) => Self::refuse(err),
                    BuyerRefusal::LastEventId => Self::BadRequest(ErrorBody::json(
                        ErrorCode::InvalidRequest,
                        "Last-Event-ID must be the id of a message of this stream (a number)",
                    )),
                    BuyerRefusal::SaleNotFound => Self::NotFound(ErrorBody::sale_not_found(sale)),
                    BuyerRefusal::NoEntry(code, message) => {
                        Self::NotFound(ErrorBody::json(code, message))
                    }
                    BuyerRefusal::WrongCheckout(message) => {
                        Self::Conflict(ErrorBody::json(ErrorCode::WrongCheckout, message))
                    }
                    BuyerRefusal::Full(full) => refuse(full, Self::TooMany, Self::Unavailable),
                }
            }
        }
    };
}

buyer_stream_response!(
    QueueStreamResponse, QueueStreamEvent, queue_stream_parse_error = "queue_stream_parse_error",
    ok: "The buyer's status at once, then each change; the stream ends when the journey does.",
    not_found: "`SALE_NOT_FOUND`, or `NOT_IN_QUEUE`: join first.",
    conflict: "`WRONG_CHECKOUT`: an instant sale has no queue."
);

buyer_stream_response!(
    RaffleStreamResponse, RaffleStreamEvent, raffle_stream_parse_error = "raffle_stream_parse_error",
    ok: "The entry at once, then each change; the stream ends when the entry can no longer \
         change (`purchased`, `expired`, `not_selected`, `withdrawn`).",
    not_found: "`SALE_NOT_FOUND`, or `NOT_ENTERED`: enter first.",
    conflict: "`WRONG_CHECKOUT`: not a raffle."
);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "sale_stream_parse_error")]
pub enum SaleStreamResponse {
    /// The sale's public view at once, then after each change; the stream ends once the
    /// sale has ended, was cancelled or archived.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, SaleStreamEvent>>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `TOO_MANY_STREAMS`: this client (an IP address, an IPv6 /64) holds as many streams
    /// as one client may (`MAX_STREAMS_PER_CLIENT`); close one, or poll.
    #[oai(status = 429)]
    TooMany(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// `TOO_MANY_STREAMS`: this instance serves its maximum; retry later or poll.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

fn sale_stream_parse_error(err: poem::Error) -> SaleStreamResponse {
    SaleStreamResponse::BadRequest(ErrorBody::json(ErrorCode::InvalidRequest, err.to_string()))
}

/// The refusal of a stream: `too_many` (429) for a client over its share, `unavailable`
/// (503) for a full instance, each with `Retry-After`.
pub(super) fn refuse<R>(
    full: StreamsFull,
    too_many: fn(Json<ErrorBody>, u64) -> R,
    unavailable: fn(Json<ErrorBody>, u64) -> R,
) -> R {
    let retry = STREAMS_FULL_RETRY_SECONDS;
    match full {
        StreamsFull::Client => too_many(
            ErrorBody::json(
                ErrorCode::TooManyStreams,
                "this client holds as many live streams as one client may; close one, or poll",
            ),
            retry,
        ),
        StreamsFull::Instance => unavailable(
            ErrorBody::json(
                ErrorCode::TooManyStreams,
                "this instance serves as many live streams as it may; retry later, or poll",
            ),
            retry,
        ),
    }
}

/// Why a buyer's stream (a queue's or a raffle's) was not opened; each route's response
/// answers it with its status and `code` (`refused`).
pub(super) enum BuyerRefusal {
    Identity(IdentityError),
    /// `Last-Event-ID` is not a sequence.
    LastEventId,
    SaleNotFound,
    /// The buyer has no entry to follow: the code and message say which.
    NoEntry(ErrorCode, &'static str),
    /// The sale's checkout has no such stream: the message says why.
    WrongCheckout(&'static str),
    Full(StreamsFull),
}
