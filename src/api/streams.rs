//! Live streams for buyers and shop pages (Server-Sent Events): a buyer's place in a queue,
//! a raffle entrant's entry, and a sale's public view. All ride the instance's [`LiveHub`],
//! so an open stream costs no queries of its own (a buyer's stream re-reads its entry only
//! when the hub cannot tell, see `journey.rs`). The two buyer streams share everything but
//! their entry: the checks before they open, the journey's loop, and the SSE framing.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use poem::web::sse::Event as SseEvent;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::EventStream;
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{Enum, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use super::buyer_auth::{BuyerAuth, BuyerTokens};
use super::drain::{Drain, until_drain};
use super::error::{ErrorBody, ErrorCode, ServerError};
use super::journey::{BuyerJourney, Follow, Journey, RaffleJourney};
use super::models::{QueueStreamEvent, RaffleStreamEvent, SaleStreamEvent, SaleView};
use super::rate_limit::{RateLimits, client_ip, client_key};
use crate::domain::{Checkout, Sale, SaleState};
use crate::live::{LiveHub, Subscription};
use crate::store::{Store, StoreError};

mod responses;

use responses::{BuyerRefusal, refuse};
pub use responses::{QueueStreamResponse, RaffleStreamResponse, SaleStreamResponse};

/// Keep-alive comments on an idle stream, under common proxy idle timeouts.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A public stream sends at most one view this often.
const PUBLIC_EVERY: Duration = Duration::from_millis(200);

pub struct StreamsApi {
    pub live: LiveHub,
    pub tokens: std::sync::Arc<BuyerTokens>,
    /// On shutdown each stream sends its latest message again as `event: closing` and ends:
    /// the client reconnects (with `Last-Event-ID`) to another instance.
    pub drain: Drain,
    /// Whose client address to trust (`TRUST_FORWARDED_FOR`).
    pub limits: std::sync::Arc<RateLimits>,
}

/// A message of a live stream: its SSE `event:` and `id:` (the sale's event sequence it
/// reflects) ride beside its JSON, and on a drain it is sent again as `event: closing`.
trait LiveMessage: Type + ToJSON + Clone + Send + 'static {
    fn event(&self) -> &'static str;
    fn sequence(&self) -> i64;
    fn closing(self) -> Self;
}

macro_rules! live_message {
    ($($message:ty),+) => {$(
        impl LiveMessage for $message {
            fn event(&self) -> &'static str {
                self.event
            }
            fn sequence(&self) -> i64 {
                self.sequence
            }
            fn closing(self) -> Self {
                Self { event: "closing", ..self }
            }
        }
    )+};
}

live_message!(QueueStreamEvent, RaffleStreamEvent, SaleStreamEvent);

/// The SSE body of a stream: its messages until it ends or the instance drains (then the
/// last one again as `event: closing`), with keep-alive comments.
fn sse<M: LiveMessage>(
    messages: BoxStream<'static, M>,
    drain: Drain,
) -> EventStream<BoxStream<'static, M>> {
    EventStream::new(until_drain(messages, drain, |last: M| Some(last.closing())))
        .keep_alive(KEEP_ALIVE)
        .to_event(|message: M| {
            SseEvent::message(message.to_json_string())
                .event_type(message.event())
                .id(message.sequence().to_string())
        })
}

/// What tells one kind of buyer stream from another before it opens.
struct BuyerStream {
    /// The checkouts that have this stream, and the message for the others.
    accepts: fn(Checkout) -> bool,
    wrong_checkout: &'static str,
    /// The answer when the buyer has no entry.
    no_entry: (ErrorCode, &'static str),
}

const QUEUE_STREAM: BuyerStream = BuyerStream {
    accepts: |checkout| checkout != Checkout::Instant,
    wrong_checkout: "this sale uses the instant checkout: it has no queue",
    no_entry: (
        ErrorCode::NotInQueue,
        "this user has no entry in this sale's queue",
    ),
};

const RAFFLE_STREAM: BuyerStream = BuyerStream {
    accepts: |checkout| checkout == Checkout::Raffle,
    wrong_checkout: "this sale is not a raffle: it has no entries",
    no_entry: (
        ErrorCode::NotEntered,
        "this user has no entry in this raffle",
    ),
};

impl StreamsApi {
    /// The key the request's client is counted under (`None`: not known, not capped).
    fn client(&self, req: &poem::Request) -> Option<std::net::IpAddr> {
        client_ip(req, self.limits.trust_forwarded_for).map(client_key)
    }

    /// What every buyer's stream does before it opens, in this order: check the buyer's
    /// identity (as the poll route), `Last-Event-ID`, the sale and its checkout; take a
    /// seat (the client's share and the instance's) that follows the buyer; then `read`
    /// the entry with the sale's event sequence. The seat follows the buyer before the
    /// read, so every change committed after it reaches the stream (see
    /// `Subscription::buyer`).
    async fn open_buyer<E, F>(
        &self,
        (req, auth): (&poem::Request, &BuyerAuth),
        (sale, user_id): (&str, &str),
        last_event_id: Option<&str>,
        kind: &BuyerStream,
        read: impl FnOnce(Store, Uuid, String) -> F,
    ) -> Result<Result<(Sale, Follow, E), BuyerRefusal>, ServerError>
    where
        F: Future<Output = Result<Option<(E, i64)>, StoreError>>,
    {
        if let Err(err) = self.tokens.identify(auth, Some(user_id)) {
            return Ok(Err(BuyerRefusal::Identity(err)));
        }
        if !valid_last_event_id(last_event_id) {
            return Ok(Err(BuyerRefusal::LastEventId));
        }
        let store = self.live.store().clone();
        let Some(found) = store.resolve_sale(sale).await? else {
            return Ok(Err(BuyerRefusal::SaleNotFound));
        };
        if !(kind.accepts)(found.checkout) {
            return Ok(Err(BuyerRefusal::WrongCheckout(kind.wrong_checkout)));
        }
        let subscription = match self.live.subscribe(found.id, self.client(req)) {
            Ok(subscription) => subscription,
            Err(full) => return Ok(Err(BuyerRefusal::Full(full))),
        };
        let changes = subscription.buyer(user_id);
        let Some((entry, seen)) = read(store, found.id, user_id.to_string()).await? else {
            let (code, message) = kind.no_entry;
            return Ok(Err(BuyerRefusal::NoEntry(code, message)));
        };
        let follow = Follow::new(self.live.clone(), subscription, changes, seen);
        Ok(Ok((found, follow, entry)))
    }
}

/// Where a buyer's stream in a queue may end early.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum StreamUntil {
    /// End once the buyer holds a unit (or the journey ends first): for clients that read
    /// the stream as one long request, then confirm.
    Held,
}

/// Where a raffle entrant's stream may end early.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum EntryStreamUntil {
    /// End once the entrant is selected (or the entry is final first): for clients that
    /// read the stream as one long request, then confirm.
    Selected,
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
        let read =
            |store: Store, sale, user: String| async move { store.live_entry(sale, &user).await };
        let ids = (sale.0.as_str(), user_id.0.as_str());
        let last = last_event_id.0.as_deref();
        match self
            .open_buyer((req, &auth), ids, last, &QUEUE_STREAM, read)
            .await?
        {
            Ok((found, follow, entry)) => {
                let mut journey = BuyerJourney::new(follow, found, entry);
                journey.end_when_held = until.0 == Some(StreamUntil::Held);
                let messages = journey.into_stream();
                Ok(QueueStreamResponse::Ok(sse(messages, self.drain.clone())))
            }
            Err(refusal) => Ok(QueueStreamResponse::refused(refusal, &sale.0)),
        }
    }

    /// A raffle entrant's entry, live (Server-Sent Events)
    ///
    /// The same authentication as `GET .../entries/{userId}`. Sends the entry at once
    /// (`event: status`), then each change: `drawn` (the draw gave the entrant a
    /// `drawPosition`; `drawSeed` is shown), `selected` (with `holdExpiresAt`: confirm
    /// before then), `purchased`, `expired`, `not_selected`, `withdrawn`. Every message
    /// carries the whole entry, like the poll route. The stream ends when the entry can no
    /// longer change (or at `selected` with `until=selected`); keep-alive comments every
    /// 15 s. A reconnecting client (with or without `Last-Event-ID`) gets the current entry
    /// first, so nothing between is lost.
    #[oai(
        path = "/sales/:sale/entries/:user_id/events",
        method = "get",
        operation_id = "entryEvents",
        tag = "ApiTags::Raffle"
    )]
    async fn entry_events(
        &self,
        req: &poem::Request,
        auth: BuyerAuth,
        /// The sale's id or sku.
        #[oai(validator(max_length = 64))]
        sale: Path<String>,
        /// The entrant.
        #[oai(validator(min_length = 1, max_length = 128))]
        user_id: Path<String>,
        /// The `id:` of the last message received, when reconnecting.
        #[oai(name = "Last-Event-ID", validator(max_length = 20))]
        last_event_id: Header<Option<String>>,
        /// `selected`: end the stream once the entrant is selected, not only when the
        /// entry is final.
        until: Query<Option<EntryStreamUntil>>,
    ) -> Result<RaffleStreamResponse, ServerError> {
        let read = |store: Store, sale, user: String| async move {
            store.live_raffle_entry(sale, &user).await
        };
        let ids = (sale.0.as_str(), user_id.0.as_str());
        let last = last_event_id.0.as_deref();
        match self
            .open_buyer((req, &auth), ids, last, &RAFFLE_STREAM, read)
            .await?
        {
            Ok((found, follow, entry)) => {
                let mut journey = RaffleJourney::new(follow, found.id, entry);
                journey.end_when_selected = until.0 == Some(EntryStreamUntil::Selected);
                let messages = journey.into_stream();
                Ok(RaffleStreamResponse::Ok(sse(messages, self.drain.clone())))
            }
            Err(refusal) => Ok(RaffleStreamResponse::refused(refusal, &sale.0)),
        }
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
        Ok(SaleStreamResponse::Ok(sse(
            sale_views(found, subscription).boxed(),
            self.drain.clone(),
        )))
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
