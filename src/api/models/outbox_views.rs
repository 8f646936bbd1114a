//! The JSON shapes of the outbox: events (feed, stream, webhook body), webhook endpoints and
//! their deliveries, and a page of a sale's purchases.

use chrono::{DateTime, Utc};
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::PurchaseView;
use crate::api::strict::StrictString;
use crate::domain::{Event, EventType, WebhookEndpoint};
use crate::store::DeliveryView as StoredDelivery;

/// The kinds of event (see the README's event catalogue).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventTypeView {
    /// A purchase committed (instant, or a confirmed hold). `data`: the purchase (`id`,
    /// `userId`, `createdAt`, `checkout`).
    #[oai(rename = "purchase.created")]
    PurchaseCreated,
    /// A queued buyer got a hold. `data`: `userId`, `holdExpiresAt`.
    #[oai(rename = "hold.granted")]
    HoldGranted,
    /// A hold ran out (or was voided by a cancel or an archive); its unit went back to
    /// stock. `data`: `userId`, `holdExpiresAt`.
    #[oai(rename = "hold.expired")]
    HoldExpired,
    /// The buyer released their hold. `data`: `userId`, `holdExpiresAt`.
    #[oai(rename = "hold.released")]
    HoldReleased,
    /// The sale opened. `data`: the counters (`stock`, `sold`, `held`, `available`) when
    /// it was recorded.
    #[oai(rename = "sale.started")]
    SaleStarted,
    /// The last unit sold. `data`: the counters.
    #[oai(rename = "sale.sold_out")]
    SaleSoldOut,
    /// The sale's window closed. `data`: the counters.
    #[oai(rename = "sale.ended")]
    SaleEnded,
    /// An admin cancelled the sale. `data`: the counters.
    #[oai(rename = "sale.cancelled")]
    SaleCancelled,
    /// An admin deleted a sale that had purchases or holds: it is archived. `data`: the
    /// counters (its live holds are voided next, each with its `hold.expired`).
    #[oai(rename = "sale.archived")]
    SaleArchived,
    /// An admin changed the sale's allow-list: one event per upload (`PUT` or `POST`) or
    /// removal. `data`: `change` (`replaced`, `added` or `removed`), `added`, `removed`
    /// and `size` (the list's size after the change), and `userId` for a removal.
    #[oai(rename = "sale.allowlist_changed")]
    SaleAllowlistChanged,
    /// A buyer entered a raffle. `data`: `userId`, `quantity`.
    #[oai(rename = "raffle.entered")]
    RaffleEntered,
    /// An entrant withdrew (a hold they had went back to stock). `data`: `userId`,
    /// `quantity`, `drawPosition` (once drawn).
    #[oai(rename = "raffle.withdrawn")]
    RaffleWithdrawn,
    /// The raffle's draw is complete. `data`: `drawSeed` (decimal string), `entrants`.
    #[oai(rename = "raffle.drawn")]
    RaffleDrawn,
    /// An entrant's turn came: a hold of their units. `data`: `userId`, `quantity`,
    /// `drawPosition`, `holdExpiresAt`.
    #[oai(rename = "raffle.selected")]
    RaffleSelected,
    /// A selected entrant's hold ran out (or was voided); it passes on. `data`: as
    /// `raffle.selected`.
    #[oai(rename = "raffle.expired")]
    RaffleExpired,
    /// An entrant will not be served. `data`: `userId`, `quantity`, `drawPosition`.
    #[oai(rename = "raffle.not_selected")]
    RaffleNotSelected,
}

impl From<EventTypeView> for EventType {
    fn from(view: EventTypeView) -> Self {
        match view {
            EventTypeView::PurchaseCreated => EventType::PurchaseCreated,
            EventTypeView::HoldGranted => EventType::HoldGranted,
            EventTypeView::HoldExpired => EventType::HoldExpired,
            EventTypeView::HoldReleased => EventType::HoldReleased,
            EventTypeView::SaleStarted => EventType::SaleStarted,
            EventTypeView::SaleSoldOut => EventType::SaleSoldOut,
            EventTypeView::SaleEnded => EventType::SaleEnded,
            EventTypeView::SaleCancelled => EventType::SaleCancelled,
            EventTypeView::SaleArchived => EventType::SaleArchived,
            EventTypeView::SaleAllowlistChanged => EventType::SaleAllowlistChanged,
            EventTypeView::RaffleEntered => EventType::RaffleEntered,
            EventTypeView::RaffleWithdrawn => EventType::RaffleWithdrawn,
            EventTypeView::RaffleDrawn => EventType::RaffleDrawn,
            EventTypeView::RaffleSelected => EventType::RaffleSelected,
            EventTypeView::RaffleExpired => EventType::RaffleExpired,
            EventTypeView::RaffleNotSelected => EventType::RaffleNotSelected,
        }
    }
}

/// One event: the body of a webhook delivery, an item of the feed, a message of the stream.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct EventView {
    /// Unique and stable: every delivery of this event carries it as `webhook-id`.
    pub id: Uuid,
    /// What happened.
    #[oai(rename = "type")]
    pub event_type: String,
    pub sale_id: Uuid,
    pub sku: String,
    /// 1, 2, 3... per sale with no gaps: order by it, and a gap means an event not yet seen.
    pub sequence: i64,
    /// The database's clock.
    pub occurred_at: DateTime<Utc>,
    /// Depends on `type` (see `EventTypeView`).
    pub data: serde_json::Value,
    /// The feed cursor after this event: a stream message's `id`, not part of the body.
    #[oai(skip)]
    pub cursor: String,
}

impl From<&Event> for EventView {
    fn from(event: &Event) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type.clone(),
            sale_id: event.sale_id,
            sku: event.sale_sku.clone(),
            sequence: event.sequence,
            occurred_at: event.occurred_at,
            data: event.data.clone(),
            cursor: String::new(),
        }
    }
}

/// A page of the event feed.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page (the same cursor when nothing new has committed).
    pub next_cursor: String,
}

/// Registers a webhook endpoint.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to POST the events: an absolute `http` or `https` URL, at most 2048 characters.
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: StrictString,
    /// Only these event types (1-15 distinct); default: every type.
    #[oai(validator(min_items = 1, max_items = 15, unique_items))]
    pub events: MaybeUndefined<Vec<EventTypeView>>,
    /// Only the events of this sale (its id, or the sku of a live sale: stored as the id);
    /// default: every sale.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub sale: MaybeUndefined<StrictString>,
}

/// A registered webhook endpoint (its secret is shown only when created or rotated).
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// It receives only this sale's events, when set.
    #[oai(skip_serializing_if_is_none)]
    pub sale_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// After a rotation: until then the previous secret also signs every delivery.
    #[oai(skip_serializing_if_is_none)]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

impl From<&WebhookEndpoint> for WebhookView {
    fn from(endpoint: &WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id,
            url: endpoint.url.clone(),
            events: endpoint.event_types.clone().unwrap_or_else(|| {
                EventType::ALL
                    .iter()
                    .map(|kind| kind.as_str().to_string())
                    .collect()
            }),
            sale_id: endpoint.sale_id,
            created_at: endpoint.created_at,
            previous_secret_valid_until: endpoint.previous_secret_until,
        }
    }
}

/// A webhook endpoint with its signing secret: shown this once, store it now.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct WebhookSecretView {
    #[oai(flatten)]
    pub webhook: WebhookView,
    /// The Standard Webhooks secret (`whsec_` + base64): verify each delivery with it.
    pub secret: String,
}

/// Where a delivery stands.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum DeliveryStatusView {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt of its retry window failed; replay it when the receiver is fixed.
    Failed,
}

/// One delivery of one event to one endpoint.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: i64,
    pub webhook_id: Uuid,
    /// The event's id (the `webhook-id` header).
    pub event_id: Uuid,
    pub event_type: String,
    pub sale_id: Uuid,
    pub sequence: i64,
    pub status: DeliveryStatusView,
    pub attempts: i32,
    /// The receiver's last HTTP status, when it answered.
    #[oai(skip_serializing_if_is_none)]
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    #[oai(skip_serializing_if_is_none)]
    pub last_error: Option<String>,
    /// When it is tried next (pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<StoredDelivery> for DeliveryView {
    fn from(row: StoredDelivery) -> Self {
        Self {
            id: row.id,
            webhook_id: row.endpoint_id,
            event_id: row.event_id,
            event_type: row.event_type,
            sale_id: row.sale_id,
            sequence: row.sequence,
            status: match row.status.as_str() {
                "delivered" => DeliveryStatusView::Delivered,
                "failed" => DeliveryStatusView::Failed,
                _ => DeliveryStatusView::Pending,
            },
            attempts: row.attempts,
            last_status: row.last_status,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            finished_at: row.finished_at,
        }
    }
}

/// A page of a sale's purchases, in `userId` order.
#[derive(Object, Debug, Clone)]
#[oai(rename_all = "camelCase")]
pub struct PurchasePage {
    pub purchases: Vec<PurchaseView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;
    use crate::domain::FeedCursor;

    #[test]
    fn a_webhook_body_and_the_feeds_item_are_the_same_json() {
        let event = Event {
            id: Uuid::new_v4(),
            event_type: "purchase.created".into(),
            sale_id: Uuid::new_v4(),
            sale_sku: "drop".into(),
            sequence: 3,
            occurred_at: chrono::Utc::now(),
            data: serde_json::json!({"userId": "alice"}),
            cursor: FeedCursor::default(),
        };
        assert_eq!(EventView::from(&event).to_json(), Some(event.to_json()));
    }
}
