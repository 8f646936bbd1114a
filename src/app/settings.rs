//! The settings of each layer, made from the configuration here at the composition root:
//! the config layer knows no layer above it, and each layer knows nothing of the config.

use std::time::Duration;

use crate::api::buyer_auth::TokenSettings;
use crate::config::{Config, DatabasePooler};
use crate::live::LiveConfig;
use crate::store::{BadKey, Pooler, SecretBox};
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

/// What stands between the service and `DATABASE_URL`. A transaction-mode pooler needs a
/// database URL, and a real session beside it for LISTEN and migrations: through the pooler
/// they would silently fail (LISTEN would hear nothing, the migration lock would not hold).
pub fn pooler(config: &Config) -> Result<Pooler, String> {
    match config.database_pooler {
        DatabasePooler::None => Ok(Pooler::None),
        DatabasePooler::Transaction if config.database_url().is_none() => {
            Err("DATABASE_POOLER=transaction needs DATABASE_URL (the pooler's address)".to_string())
        }
        DatabasePooler::Transaction if config.database_session_url().is_none() => Err(
            "DATABASE_POOLER=transaction needs DATABASE_SESSION_URL: a direct session (to \
             Postgres, or to a session-mode pool) for LISTEN and migrations"
                .to_string(),
        ),
        DatabasePooler::Transaction => Ok(Pooler::Transaction),
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
