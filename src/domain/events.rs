//! The events a shop hears about (the outbox), the feed's cursor, and webhook endpoint rules.

use std::fmt;
use std::str::FromStr;

/// How long a webhook delivery is retried before it fails (`WEBHOOK_RETRY_FOR_SECS`'s
/// default): a day.
pub const DEFAULT_WEBHOOK_RETRY_FOR: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What happened. The strings are the wire names (and the `events.type` CHECK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PurchaseCreated,
    HoldGranted,
    HoldExpired,
    HoldReleased,
    SaleStarted,
    SaleSoldOut,
    SaleEnded,
    SaleCancelled,
    SaleArchived,
    /// An admin changed the sale's allow-list (an upload or a removal).
    SaleAllowlistChanged,
    RaffleEntered,
    RaffleWithdrawn,
    RaffleDrawn,
    RaffleSelected,
    RaffleExpired,
    RaffleNotSelected,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::PurchaseCreated,
        EventType::HoldGranted,
        EventType::HoldExpired,
        EventType::HoldReleased,
        EventType::SaleStarted,
        EventType::SaleSoldOut,
        EventType::SaleEnded,
        EventType::SaleCancelled,
        EventType::SaleArchived,
        EventType::SaleAllowlistChanged,
        EventType::RaffleEntered,
        EventType::RaffleWithdrawn,
        EventType::RaffleDrawn,
        EventType::RaffleSelected,
        EventType::RaffleExpired,
        EventType::RaffleNotSelected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PurchaseCreated => "purchase.created",
            EventType::HoldGranted => "hold.granted",
            EventType::HoldExpired => "hold.expired",
            EventType::HoldReleased => "hold.released",
            EventType::SaleStarted => "sale.started",
            EventType::SaleSoldOut => "sale.sold_out",
            EventType::SaleEnded => "sale.ended",
            EventType::SaleCancelled => "sale.cancelled",
            EventType::SaleArchived => "sale.archived",
            EventType::SaleAllowlistChanged => "sale.allowlist_changed",
            EventType::RaffleEntered => "raffle.entered",
            EventType::RaffleWithdrawn => "raffle.withdrawn",
            EventType::RaffleDrawn => "raffle.drawn",
            EventType::RaffleSelected => "raffle.selected",
            EventType::RaffleExpired => "raffle.expired",
            EventType::RaffleNotSelected => "raffle.not_selected",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

/// One event of the outbox.
#[derive(Debug, Clone)]
pub struct Event {
    /// Stable across redeliveries (the `webhook-id` of every delivery).
    pub id: Uuid,
    pub event_type: String,
    pub sale_id: Uuid,
    pub sale_sku: String,
    /// 1, 2, 3... per sale, without gaps.
    pub sequence: i64,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
    /// Where this event is in the feed; resuming after it returns the events after it.
    pub cursor: FeedCursor,
}

impl Event {
    /// The event as JSON: the body of a webhook delivery, an item of the feed and a
    /// stream message (the API's `EventView` documents the same shape).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.event_type,
            "saleId": self.sale_id,
            "sku": self.sale_sku,
            "sequence": self.sequence,
            // Written as the API writes every time (chrono's RFC 3339), so a webhook body and
            // the feed's item of one event are the same JSON.
            "occurredAt": self.occurred_at.to_rfc3339(),
            "data": self.data,
        })
    }
}

/// A position in the event feed: the event's `feed_tx`, then the sale and its sequence.
/// Written as `<feed_tx>-<sale id without dashes>-<sequence>`, opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedCursor {
    /// The feed position of the event's transaction: at least the writing transaction's id,
    /// raised to the sale's previous `feed_tx` when that is larger (not a transaction id).
    pub feed_tx: i64,
    pub sale_id: Uuid,
    pub sequence: i64,
}

impl fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.feed_tx,
            self.sale_id.simple(),
            self.sequence
        )
    }
}

/// A cursor that is not one this service wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor of this feed")]
pub struct BadCursor;

impl FromStr for FeedCursor {
    type Err = BadCursor;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut parts = value.splitn(3, '-');
        let (Some(tx), Some(sale), Some(sequence)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadCursor);
        };
        let cursor = FeedCursor {
            feed_tx: tx.parse().map_err(|_| BadCursor)?,
            sale_id: Uuid::try_parse(sale).map_err(|_| BadCursor)?,
            sequence: sequence.parse().map_err(|_| BadCursor)?,
        };
        if cursor.feed_tx < 0 || cursor.sequence < 0 || sale.len() != 32 {
            return Err(BadCursor);
        }
        Ok(cursor)
    }
}

/// A webhook endpoint as registered (its secret is never part of it).
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    /// `None`: every type.
    pub event_types: Option<Vec<String>>,
    /// `None`: every sale.
    pub sale_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// Until when the previous secret also signs, after a rotation.
    pub previous_secret_until: Option<DateTime<Utc>>,
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookUrlError {
    #[error("url must be an absolute http or https URL")]
    NotHttp,
    #[error("url must not carry credentials (user:password@); put them in the receiver")]
    Credentials,
    #[error("url must be at most 2048 characters")]
    TooLong,
}

/// Checks a webhook URL: absolute http(s), with a host, no credentials, at most 2048 chars.
pub fn check_webhook_url(raw: &str) -> Result<String, WebhookUrlError> {
    if raw.len() > 2048 {
        return Err(WebhookUrlError::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|_| WebhookUrlError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookUrlError::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebhookUrlError::Credentials);
    }
    Ok(url.to_string())
}

/// A fresh Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_webhook_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_refuses_anything_else() {
        let cursor = FeedCursor {
            feed_tx: 812,
            sale_id: Uuid::new_v4(),
            sequence: 7,
        };
        assert_eq!(cursor.to_string().parse::<FeedCursor>(), Ok(cursor));
        for bad in [
            "",
            "1-2",
            "x-00000000000000000000000000000000-1",
            "-1-a-b",
            "1-zz-1",
        ] {
            assert_eq!(bad.parse::<FeedCursor>(), Err(BadCursor), "{bad}");
        }
    }

    #[test]
    fn every_event_type_parses_back_from_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("purchase.deleted"), None);
    }

    #[test]
    fn webhook_urls_must_be_plain_http_or_https() {
        assert!(check_webhook_url("https://shop.example/hooks?x=1").is_ok());
        assert_eq!(
            check_webhook_url("ftp://shop.example/"),
            Err(WebhookUrlError::NotHttp)
        );
        assert_eq!(
            check_webhook_url("/relative"),
            Err(WebhookUrlError::NotHttp)
        );
        assert_eq!(
            check_webhook_url("https://u:p@shop.example/"),
            Err(WebhookUrlError::Credentials)
        );
    }

    #[test]
    fn a_new_secret_is_a_standard_webhooks_secret() {
        let secret = new_webhook_secret();
        assert!(secret.starts_with("whsec_"));
        assert!(standardwebhooks::Webhook::new(&secret).is_ok());
        assert_ne!(secret, new_webhook_secret());
    }
}
