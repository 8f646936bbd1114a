//! Live streams for buyers and shop pages (Server-Sent Events): a buyer's place in a queue,
//! and a sale's public view. Both ride the instance's [`LiveHub`], so an open stream costs no
//! queries of its own (a buyer's stream re-reads its entry only when the hub cannot tell,
//! see `journey.rs`).

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use poem::web::sse::Event as SseEvent;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Enum, OpenApi};

use super::ApiTags;
use super::buyer_auth::{BuyerAuth, BuyerTokens, IdentityRefusal, identity_refusal};
use super::drain::{Drain, until_drain};
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::journey::BuyerJourney;
use super::models::{QueueStreamEvent, SaleStreamEvent, SaleView};
use super::rate_limit::{RateLimits, client_ip, client_key};
use crate::domain::{Checkout, Sale, SaleState};
use crate::live::{LiveHub, StreamsFull, Subscription};

/// Keep-alive comments on an idle stream, under common proxy idle timeouts.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A public stream sends at most one view this often.
const PUBLIC_EVERY: Duration = Duration::from_millis(200);
/// Seconds a refused stream is told to wait.
const STREAMS_FULL_RETRY_SECONDS: u64 = 5;

pub struct StreamsApi {
    pub live: LiveHub,
    pub tokens: std::sync::Arc<BuyerTokens>,
    /// On shutdown each stream sends its latest message again as `event: closing` and ends:
    /// the client reconnects (with `Last-Event-ID`) to another instance.
    pub drain: Drain,
    /// Whose client address to trust (`TRUST_FORWARDED_FOR`).
    pub limits: std::sync::Arc<RateLimits>,
}

impl StreamsApi {
    /// The key the request's client is counted under (`None`: not known, not capped).
    fn client(&self, req: &poem::Request) -> Option<std::net::IpAddr> {
        client_ip(req, self.limits.trust_forwarded_for).map(client_key)
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "queue_stream_parse_error")]
pub enum QueueStreamResponse {
    /// The buyer's status at once, then each change; the stream ends when the journey does.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, QueueStreamEvent>>),
    /// `INVALID_REQUEST`: a malformed `Last-Event-ID`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHENTICATED`: with buyer tokens on, a missing or invalid token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `FORBIDDEN`: the token's user is not the path's `userId`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`, or `NOT_IN_QUEUE`: join first.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `WRONG_CHECKOUT`: an instant sale has no queue.
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

fn queue_stream_parse_error(err: poem::Error) -> QueueStreamResponse {
    QueueStreamResponse::BadRequest(ErrorBody::json(ErrorCode::InvalidRequest, err.to_string()))
}

identity_refusal!(QueueStreamResponse);

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
fn refuse<R>(
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

/// Where a buyer's stream may end early.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum StreamUntil {
    /// End once the buyer holds a unit (or the journey ends first): for clients that read
    /// the stream as one long request, then confirm.
    Held,
}

/// `Last-Event-ID` is a sequence the client saw; anything else is a client error.
fn valid_last_event_id(value: Option<&str>) -> bool {
    value.is_none_or(|id| id.parse::<u64>().is_ok())
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Queue")]
impl StreamsApi {
    /// A buyer's place in the queue, live (Server-Sent Events)
    ///
    /// The same authentication as the poll route. Sends the status at once (`event:
    /// status`), then each change: `position` (at most about once a second), `held` (with
    /// `holdExpiresAt`), `expired`, `purchased`, `left`, `sold_out`, `closed`. Every
    /// message carries the whole status, like the poll route. The stream ends when the
    /// journey does (or at `held` with `until=held`); keep-alive comments every 15 s. A reconnecting client (with or without
    /// `Last-Event-ID`) gets the current status first, so nothing between is lost.
    #[oai(
        path = "/sales/:sale/queue/:user_id/events",
        method = "get",
        operation_id = "queueEvents"
    )]
    async fn queue_events(
        &self,
        req: &poem::Request,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The buyer.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
        /// The `id:` of the last message received, when reconnecting.
        #[oai(name = "Last-Event-ID", validator(max_length = 20))]
        last_event_id: Header<Option<String>>,
        /// `held`: end the stream once the buyer holds a unit, not only when the journey
        /// ends.
        until: Query<Option<StreamUntil>>,
    ) -> Result<QueueStreamResponse, ServerError> {
        if let Err(err) = self.tokens.identify(&auth, Some(&user_id.0)) {
            return Ok(QueueStreamResponse::refuse(err));
        }
        if !valid_last_event_id(last_event_id.0.as_deref()) {
            return Ok(QueueStreamResponse::BadRequest(ErrorBody::json(
                ErrorCode::InvalidRequest,
                "Last-Event-ID must be the id of a message of this stream (a number)",
            )));
        }
        let store = self.live.store();
        let Some(found) = store.resolve_sale(&sale.0).await? else {
            return Ok(QueueStreamResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        if found.checkout == Checkout::Instant {
            return Ok(QueueStreamResponse::Conflict(ErrorBody::json(
                ErrorCode::WrongCheckout,
                "this sale uses the instant checkout: it has no queue",
            )));
        }
        // Follow the buyer before reading the entry: every change committed after the read
        // then reaches the stream (see `Subscription::buyer`).
        let subscription = match self.live.subscribe(found.id, self.client(req)) {
            Ok(subscription) => subscription,
            Err(full) => {
                return Ok(refuse(
                    full,
                    QueueStreamResponse::TooMany,
                    QueueStreamResponse::Unavailable,
                ));
            }
        };
        let changes = subscription.buyer(&user_id.0);
        let Some(read) = store.live_entry(found.id, &user_id.0).await? else {
            return Ok(QueueStreamResponse::NotFound(ErrorBody::json(
                ErrorCode::NotInQueue,
                "this user has no entry in this sale's queue",
            )));
        };
        let mut journey = BuyerJourney::new(self.live.clone(), subscription, changes, found, read);
        journey.end_when_held = until.0 == Some(StreamUntil::Held);
        Ok(QueueStreamResponse::Ok(
            EventStream::new(until_drain(
                journey.into_stream(),
                self.drain.clone(),
                |last| {
                    Some(QueueStreamEvent {
                        event: "closing",
                        ..last
                    })
                },
            ))
            .keep_alive(KEEP_ALIVE)
            .to_event(|message: QueueStreamEvent| {
                SseEvent::message(message.to_json_string())
                    .event_type(message.event)
                    .id(message.sequence.to_string())
            }),
        ))
    }

    /// A sale's public view, live (Server-Sent Events)
    ///
    /// The view of `GET /api/v1/sales/{sale}` at once (`event: sale`) and again after
    /// each change, at most a few times a second; the stream ends after the view that shows
    /// the sale ended, cancelled or archived. Keep-alive comments every 15 s.
    #[oai(
        path = "/sales/:sale/events",
        method = "get",
        operation_id = "saleEvents"
    )]
    async fn sale_events(
        &self,
        req: &poem::Request,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
    ) -> Result<SaleStreamResponse, ServerError> {
        let Some(found) = self.live.store().resolve_sale(&sale.0).await? else {
            return Ok(SaleStreamResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        let subscription = match self.live.subscribe(found.id, self.client(req)) {
            Ok(subscription) => subscription,
            Err(full) => {
                return Ok(refuse(
                    full,
                    SaleStreamResponse::TooMany,
                    SaleStreamResponse::Unavailable,
                ));
            }
        };
        Ok(SaleStreamResponse::Ok(
            EventStream::new(until_drain(
                sale_views(found, subscription).boxed(),
                self.drain.clone(),
                |last| {
                    Some(SaleStreamEvent {
                        event: "closing",
                        ..last
                    })
                },
            ))
            .keep_alive(KEEP_ALIVE)
            .to_event(|message: SaleStreamEvent| {
                SseEvent::message(message.to_json_string())
                    .event_type(message.event)
                    .id(message.sequence.to_string())
            }),
        ))
    }
}

fn is_over(sale: &Sale) -> bool {
    matches!(
        sale.state(),
        SaleState::Ended | SaleState::Cancelled | SaleState::Archived
    )
}

/// The sale's view now, then each different one (at most every `PUBLIC_EVERY`: a busy
/// sale's counters change far more often than a page needs), until the sale is over or gone.
fn sale_views(
    sale: Sale,
    subscription: Subscription,
) -> impl futures_util::Stream<Item = SaleStreamEvent> + Send + 'static {
    let first = SaleStreamEvent {
        event: "sale",
        sequence: 0,
        sale: SaleView::from(&sale),
    };
    let over = is_over(&sale);
    let last = first.sale.to_json_string();
    stream::once(async move { first }).chain(stream::unfold(
        (subscription, last, over),
        |(mut subscription, mut last, over)| async move {
            if over {
                return None;
            }
            // Whatever changes meanwhile is folded into the next view.
            tokio::time::sleep(PUBLIC_EVERY).await;
            loop {
                subscription.updates.changed().await.ok()?;
                let latest = subscription.updates.borrow_and_update().clone()?;
                let live = latest.live.as_ref()?;
                let view = SaleView::from(&live.sale);
                let json = view.to_json_string();
                if json == last {
                    continue;
                }
                last = json;
                let over = is_over(&live.sale);
                let message = SaleStreamEvent {
                    event: "sale",
                    sequence: live.last_sequence,
                    sale: view,
                };
                return Some((message, (subscription, last, over)));
            }
        },
    ))
}
