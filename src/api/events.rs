//! Pulling the outbox (admin): the event feed, its live Server-Sent Events stream, and a
//! sale's purchases as JSON pages or one streamed CSV for fulfilment (written in `csv.rs`).

use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use poem::Body;
use poem::web::sse::Event as SseEvent;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Binary, EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Enum, OpenApi, ResponseContent};

use super::ApiTags;
use super::auth::AdminAuth;
use super::drain::{Drain, until_drain};
use super::error::{ErrorBody, ErrorCode, ServerError, admin_parse_error};
use super::models::{EventPage, EventTypeView, EventView, PurchasePage, PurchaseView};
use crate::domain::{EventType, FeedCursor};
use crate::live::OpenStream;
use crate::metrics::Metrics;
use crate::store::{FeedFilter, Store};

/// How often an idle stream asks for new events.
const STREAM_POLL: Duration = Duration::from_millis(250);
/// Keep-alive comments on an idle stream, so proxies keep it open.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events read per query by a stream.
const STREAM_BATCH: i64 = 500;

pub struct EventsApi {
    pub store: Store,
    pub metrics: Metrics,
    /// On shutdown the feed's stream ends after the last whole event (the client resumes
    /// from its `id:` elsewhere).
    pub drain: Drain,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "feed_parse_error")]
pub enum FeedResponse {
    /// Events in feed order after `after`, and the cursor to continue from.
    #[oai(status = 200)]
    Ok(Json<EventPage>),
    /// `INVALID_REQUEST`: a malformed cursor, an unknown type, `limit` out of range.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`: the `sale` filter names no sale.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `CURSOR_EXPIRED`: the cursor points before events retention removed; the message
    /// names the oldest cursor still complete (or start without one, from now).
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
}
admin_parse_error!(feed_parse_error, FeedResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "stream_parse_error")]
pub enum StreamResponse {
    /// Server-Sent Events: each message's `data` is one event (JSON) and its `id` the feed
    /// cursor after it; keep-alive comments every 15 s.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, EventView>>),
    /// `INVALID_REQUEST`: a malformed cursor or `Last-Event-ID`, an unknown type.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`: the `sale` filter names no sale.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `CURSOR_EXPIRED`: the cursor points before events retention removed; the message
    /// names the oldest cursor still complete (or start without one, from now).
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
}
admin_parse_error!(stream_parse_error, StreamResponse);

/// The export's format.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One page of JSON (the default).
    Json,
    /// Every purchase of the sale as CSV, streamed (same as `Accept: text/csv`).
    Csv,
}

/// A page of JSON, or the whole sale as CSV.
#[derive(ResponseContent)]
pub enum PurchasesContent {
    Page(Json<PurchasePage>),
    #[oai(content_type = "text/csv")]
    Csv(Binary<Body>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "purchases_parse_error")]
pub enum PurchasesResponse {
    /// A page of purchases in `userId` order (JSON), or with `Accept: text/csv` or
    /// `format=csv` every purchase as CSV (`purchase_id,sale_id,user_id,created_at,quantity,variant`),
    /// streamed in constant memory. A CSV cut short by a failure ends without its final
    /// chunk, so a client sees a broken transfer, never a short file that looks whole.
    #[oai(status = 200)]
    Ok(PurchasesContent),
    /// `INVALID_REQUEST`: `limit` out of range, a bad `format`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}
admin_parse_error!(purchases_parse_error, PurchasesResponse);

/// A feed request's filters, checked; `Err` is the 400 or 404 to answer.
struct FeedQuery {
    after: Option<FeedCursor>,
    filter: FeedFilter,
}

enum FeedQueryError {
    BadRequest(Json<ErrorBody>),
    SaleNotFound(Json<ErrorBody>),
    Expired(Json<ErrorBody>),
}

impl EventsApi {
    async fn feed_query(
        &self,
        after: Option<&str>,
        sale: Option<&str>,
        types: &[EventTypeView],
    ) -> Result<Result<FeedQuery, FeedQueryError>, ServerError> {
        let after = match after.map(str::parse::<FeedCursor>).transpose() {
            Ok(after) => after,
            Err(err) => {
                return Ok(Err(FeedQueryError::BadRequest(ErrorBody::json(
                    ErrorCode::InvalidRequest,
                    format!("after: {err}: pass a nextCursor or stream id you were given"),
                ))));
            }
        };
        // Read on from before what retention removed, a reader would skip it silently.
        if let Some(after) = after
            && let Some(through) = self.store.feed_pruned_through().await?
            && after < through
        {
            return Ok(Err(FeedQueryError::Expired(ErrorBody::json(
                ErrorCode::CursorExpired,
                format!(
                    "events after this cursor were removed by retention; the oldest complete \
                     cursor is {through}"
                ),
            ))));
        }
        let sale_id = match sale {
            None => None,
            Some(reference) => match self.store.resolve_sale(reference).await? {
                Some(found) => Some(found.id),
                None => {
                    return Ok(Err(FeedQueryError::SaleNotFound(
                        ErrorBody::sale_not_found(reference),
                    )));
                }
            },
        };
        let types = (!types.is_empty()).then(|| {
            types
                .iter()
                .map(|kind| EventType::from(*kind).as_str().to_string())
                .collect()
        });
        Ok(Ok(FeedQuery {
            after,
            filter: FeedFilter { sale_id, types },
        }))
    }
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Events")]
impl EventsApi {
    /// The event feed
    ///
    /// Every event in feed order: per sale in `sequence` order, and an event that committed
    /// before another began comes first. Paging from the start with each `nextCursor` returns
    /// every event exactly once, also while new ones are being written: an event appears
    /// only once no earlier-numbered transaction can still commit (a few milliseconds
    /// behind the writes).
    #[oai(path = "/events", method = "get", operation_id = "listEvents")]
    async fn list_events(
        &self,
        _auth: AdminAuth,
        /// Continue after this cursor (a `nextCursor`, or a stream message's `id`); default:
        /// from the oldest event kept.
        #[oai(validator(max_length = 100))]
        after: Query<Option<String>>,
        /// At most this many (1-1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Only this sale's events (its id, or the sku of a live sale).
        #[oai(validator(max_length = 64))]
        sale: Query<Option<String>>,
        /// Only these types (repeat the parameter for several).
        #[oai(name = "type", validator(max_items = 15))]
        event_types: Query<Vec<EventTypeView>>,
    ) -> Result<FeedResponse, ServerError> {
        let query = match self
            .feed_query(after.0.as_deref(), sale.0.as_deref(), &event_types.0)
            .await?
        {
            Ok(query) => query,
            Err(FeedQueryError::BadRequest(body)) => return Ok(FeedResponse::BadRequest(body)),
            Err(FeedQueryError::SaleNotFound(body)) => return Ok(FeedResponse::NotFound(body)),
            Err(FeedQueryError::Expired(body)) => return Ok(FeedResponse::Gone(body)),
        };
        let events = self
            .store
            .events_after(query.after, &query.filter, limit.0.unwrap_or(100))
            .await?;
        let next = events
            .last()
            .map(|event| event.cursor)
            .or(query.after)
            .unwrap_or_default();
        Ok(FeedResponse::Ok(Json(EventPage {
            events: events.iter().map(EventView::from).collect(),
            next_cursor: next.to_string(),
        })))
    }

    /// The event feed, live (Server-Sent Events)
    ///
    /// The feed's events as they commit, in the same order, as `text/event-stream`. Each
    /// message's `id` is the cursor after it: a client that reconnects with
    /// `Last-Event-ID` (browsers' EventSource does so by itself) or `after` resumes exactly
    /// there. Without either it starts with what commits from now on.
    #[oai(path = "/events/stream", method = "get", operation_id = "streamEvents")]
    async fn stream_events(
        &self,
        _auth: AdminAuth,
        /// Resume after this cursor (wins over `after`).
        #[oai(name = "Last-Event-ID", validator(max_length = 100))]
        last_event_id: Header<Option<String>>,
        /// Start after this cursor; default: now.
        #[oai(validator(max_length = 100))]
        after: Query<Option<String>>,
        /// Only this sale's events (its id, or the sku of a live sale).
        #[oai(validator(max_length = 64))]
        sale: Query<Option<String>>,
        /// Only these types (repeat the parameter for several).
        #[oai(name = "type", validator(max_items = 15))]
        event_types: Query<Vec<EventTypeView>>,
    ) -> Result<StreamResponse, ServerError> {
        let resume = last_event_id.0.or(after.0);
        let query = match self
            .feed_query(resume.as_deref(), sale.0.as_deref(), &event_types.0)
            .await?
        {
            Ok(query) => query,
            Err(FeedQueryError::BadRequest(body)) => return Ok(StreamResponse::BadRequest(body)),
            Err(FeedQueryError::SaleNotFound(body)) => {
                return Ok(StreamResponse::NotFound(body));
            }
            Err(FeedQueryError::Expired(body)) => return Ok(StreamResponse::Gone(body)),
        };
        let start = match query.after {
            Some(after) => after,
            None => self.store.feed_now().await?,
        };
        let open = OpenStream::new(&self.metrics.streams_open);
        let events = live_events(self.store.clone(), start, query.filter, open);
        Ok(StreamResponse::Ok(
            EventStream::new(until_drain(events.boxed(), self.drain.clone(), |_| None))
                .keep_alive(STREAM_KEEP_ALIVE)
                .to_event(|event: EventView| {
                    let id = event.cursor.clone();
                    SseEvent::message(event.to_json_string()).id(id)
                }),
        ))
    }

    /// A sale's purchases, for fulfilment
    ///
    /// JSON pages in `userId` order (`after` = the previous page's `nextCursor`), or with
    /// `Accept: text/csv` (or `format=csv`) every purchase of the sale in one streamed CSV,
    /// in constant memory however many there are. Archived sales too, by id.
    #[oai(
        path = "/sales/:sale/purchases",
        method = "get",
        operation_id = "listSalePurchases"
    )]
    async fn sale_purchases(
        &self,
        _auth: AdminAuth,
        request: &poem::Request,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// JSON: continue after this cursor (a `nextCursor`).
        #[oai(validator(max_length = 128))]
        after: Query<Option<String>>,
        /// JSON: the orders of at most this many buyers (1-1000, default 100; one order
        /// each in a sale whose per-customer limit is 1).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// `csv` for the whole sale as CSV, `json` for a page; wins over `Accept`. Default:
        /// CSV when `Accept` starts with `text/csv`, else JSON.
        format: Query<Option<ExportFormat>>,
    ) -> Result<PurchasesResponse, ServerError> {
        let Some(found) = self.store.resolve_sale(&sale.0).await? else {
            return Ok(PurchasesResponse::NotFound(ErrorBody::sale_not_found(
                &sale.0,
            )));
        };
        // An explicit `format` wins over the Accept header.
        let csv = format
            .0
            .map_or_else(|| wants_csv(request), |f| f == ExportFormat::Csv);
        if csv {
            let body = Body::from_bytes_stream(super::csv::purchases(self.store.clone(), found.id));
            return Ok(PurchasesResponse::Ok(PurchasesContent::Csv(Binary(body))));
        }
        let limit = limit.0.unwrap_or(100);
        let page = self
            .store
            .purchases_page(found.id, after.0.as_deref(), limit)
            .await?;
        let next_cursor = (super::csv::buyers_in(&page) == limit)
            .then(|| page.last().map(|p| p.user_id.clone()))
            .flatten();
        Ok(PurchasesResponse::Ok(PurchasesContent::Page(Json(
            PurchasePage {
                purchases: page.into_iter().map(PurchaseView::from).collect(),
                next_cursor,
            },
        ))))
    }
}

/// Whether the client asked for CSV (and not JSON first).
fn wants_csv(request: &poem::Request) -> bool {
    request
        .header("accept")
        .and_then(|accept| accept.split(',').next())
        .is_some_and(|first| first.trim().starts_with("text/csv"))
}

/// The feed from `start` on, forever: each round reads what has become visible, and waits
/// [`STREAM_POLL`] when nothing has. A failed read is retried (the stream stays open).
/// `open` counts the stream until it is dropped.
fn live_events(
    store: Store,
    start: FeedCursor,
    filter: FeedFilter,
    open: OpenStream,
) -> impl futures_util::Stream<Item = EventView> + Send + 'static {
    stream::unfold(
        (store, start, filter, open),
        |(store, cursor, filter, open)| async move {
            loop {
                match store
                    .events_after(Some(cursor), &filter, STREAM_BATCH)
                    .await
                {
                    Ok(events) if !events.is_empty() => {
                        let next = events.last().map_or(cursor, |event| event.cursor);
                        let views: Vec<EventView> = events
                            .iter()
                            .map(|event| {
                                let mut view = EventView::from(event);
                                view.cursor = event.cursor.to_string();
                                view
                            })
                            .collect();
                        return Some((stream::iter(views), (store, next, filter, open)));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        static LOGGED: crate::telemetry::Throttle =
                            crate::telemetry::Throttle::new(Duration::from_secs(10));
                        if LOGGED.ready() {
                            tracing::warn!(error = %err, "event stream: read failed; retrying (the next 10 s: quiet)");
                        }
                    }
                }
                tokio::time::sleep(STREAM_POLL).await;
            }
        },
    )
    .flatten()
}
