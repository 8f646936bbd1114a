//! One delivery's request: signed with the endpoint's secrets (Standard Webhooks), sent to
//! an address the policy permits, and its outcome as a category (see `address.rs`).

use std::time::Instant;

use super::address::{AddressRefused, check_url};
use super::{MAX_ERROR_CHARS, WebhookSender};
use crate::domain::{backoff, jittered};
use crate::store::{AttemptResult, ClaimedDelivery, EndpointTarget};

impl WebhookSender {
    /// Sends one delivery and says how it went.
    pub(super) async fn attempt(
        &self,
        target: &EndpointTarget,
        delivery: ClaimedDelivery,
        start_by: Instant,
    ) -> AttemptResult {
        let mut result = AttemptResult {
            delivery_id: delivery.id,
            lock_token: delivery.lock_token,
            sent: Instant::now() <= start_by,
            status: None,
            error: None,
            // Jittered, so the retries of many deliveries spread out.
            retry_in: jittered(backoff(
                self.config.base_backoff,
                self.config.max_backoff,
                delivery.attempts,
            )),
        };
        if !result.sent {
            return result;
        }
        match self.send(target, &delivery).await {
            Ok(status) if status.is_success() => result.status = Some(status.as_u16()),
            Ok(status) => {
                result.status = Some(status.as_u16());
                result.error = Some(format!("the receiver answered {status}"));
            }
            Err(err) => result.error = Some(truncate(&err)),
        }
        result
    }

    async fn send(
        &self,
        target: &EndpointTarget,
        delivery: &ClaimedDelivery,
    ) -> Result<reqwest::StatusCode, String> {
        let body = serde_json::to_vec(&delivery.event.to_json()).map_err(|err| err.to_string())?;
        let message_id = delivery.event.id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(target, &message_id, timestamp, &body)?;
        check_url(&target.url, &self.policy).map_err(|refused| refused.to_string())?;
        let response = self
            .client
            .post(&target.url)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &message_id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|err| describe(&err))?;
        Ok(response.status())
    }
}

/// The `webhook-signature` value: one `v1,<base64>` per signing secret, space-separated
/// (the current one, and the previous one while a rotation overlaps).
fn sign(
    target: &EndpointTarget,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, String> {
    let mut signatures = Vec::with_capacity(2);
    for secret in std::iter::once(&target.secret).chain(target.previous_secret.as_ref()) {
        let signer = standardwebhooks::Webhook::new(secret)
            .map_err(|_| "the endpoint's secret is not valid base64".to_string())?;
        signatures.push(
            signer
                .sign(message_id, timestamp, body)
                .map_err(|err| err.to_string())?,
        );
    }
    Ok(signatures.join(" "))
}

/// What went wrong with a request, as a category: no URL (it may carry a token in its
/// query) and no network detail (an error text must not tell an admin which internal ports
/// are open).
fn describe(err: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<AddressRefused>() {
            return refused.to_string();
        }
        source = cause.source();
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_request() || err.is_body() {
        "the request failed"
    } else {
        "the exchange failed"
    };
    kind.to_string()
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_rotated_endpoint_signs_with_both_secrets_and_each_verifies() {
        let target = EndpointTarget {
            id: Uuid::new_v4(),
            url: "http://127.0.0.1/".into(),
            secret: crate::domain::new_webhook_secret(),
            previous_secret: Some(crate::domain::new_webhook_secret()),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(&target, "evt", timestamp, b"{}").expect("sign");
        assert_eq!(signature.split(' ').count(), 2);
        for secret in [
            &target.secret,
            target.previous_secret.as_ref().expect("old"),
        ] {
            let mut headers = poem::http::HeaderMap::new();
            headers.insert("webhook-id", "evt".parse().expect("header"));
            headers.insert(
                "webhook-timestamp",
                timestamp.to_string().parse().expect("header"),
            );
            headers.insert("webhook-signature", signature.parse().expect("header"));
            standardwebhooks::Webhook::new(secret)
                .expect("secret")
                .verify(b"{}", &headers)
                .expect("verifies");
        }
    }
}
