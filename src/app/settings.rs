//! The settings of each layer, made from the configuration here at the composition root:
//! the config layer knows no layer above it, and each layer knows nothing of the config.

use std::time::Duration;

use crate::api::buyer_auth::TokenSettings;
use crate::config::Config;
use crate::live::LiveConfig;
use crate::store::{BadKey, SecretBox};
use crate::worker::WebhookConfig;

/// How the webhook sender behaves.
pub fn webhook_config(config: &Config) -> WebhookConfig {
    WebhookConfig {
        concurrency: config.webhook_concurrency.clamp(1, 1024),
        connect_timeout: Duration::from_millis(config.webhook_connect_timeout_ms.max(100)),
        answer_timeout: Duration::from_millis(config.webhook_timeout_ms.max(100)),
        retry_for: Duration::from_secs(config.webhook_retry_for_secs.max(1)),
        base_backoff: Duration::from_millis(config.webhook_backoff_base_ms.max(10)),
        max_backoff: Duration::from_secs(config.webhook_backoff_max_secs.max(1)),
        allowed_networks: config.webhook_allowed_networks.clone(),
        ..WebhookConfig::default()
    }
}

/// How the live hub is tuned.
pub fn live_config(config: &Config) -> LiveConfig {
    LiveConfig {
        max_streams: config.max_live_streams.max(1),
        max_streams_per_client: config.max_streams_per_client,
        refresh_every: Duration::from_millis(config.live_refresh_ms.max(100)),
    }
}

/// How buyer tokens are checked.
pub fn token_settings(config: &Config) -> TokenSettings {
    TokenSettings {
        secret: config.buyer_token_secret(),
        audience: config.buyer_token_audience.clone(),
        issuer: config.buyer_token_issuer.clone(),
    }
}

/// The box sealing webhook secrets at rest, when `WEBHOOK_SECRET_KEY` is set.
pub fn secret_box(config: &Config) -> Result<Option<SecretBox>, BadKey> {
    let (current, previous) = config.webhook_secret_keys();
    let Some(current) = current else {
        return Ok(None);
    };
    SecretBox::new(&current, previous.as_deref()).map(Some)
}
