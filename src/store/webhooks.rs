//! Webhook endpoints: register, list, rotate the secret, delete, and what the sender needs
//! of one (its address and secrets). Their deliveries are in `deliveries.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::events::feed_horizon;
use super::{Store, StoreError, secret_box};
use crate::domain::{WebhookEndpoint, new_webhook_secret};

#[derive(FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    event_types: Option<Vec<String>>,
    sale_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    previous_secret_until: Option<DateTime<Utc>>,
}

impl From<EndpointRow> for WebhookEndpoint {
    fn from(row: EndpointRow) -> Self {
        WebhookEndpoint {
            id: row.id,
            url: row.url,
            event_types: row.event_types,
            sale_id: row.sale_id,
            created_at: row.created_at,
            previous_secret_until: row.previous_secret_until,
        }
    }
}

const ENDPOINT_COLUMNS: &str = "id, url, event_types, sale_id, created_at, previous_secret_until";

/// An endpoint as the sender needs it: where, and the secrets that sign.
#[derive(Debug, Clone, FromRow)]
pub struct EndpointTarget {
    pub id: Uuid,
    pub url: String,
    pub secret: String,
    /// Still signing beside the new secret after a rotation.
    pub previous_secret: Option<String>,
}

/// What a registration asks for.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub sale_id: Option<Uuid>,
}

impl Store {
    /// Registers an endpoint; it receives the events that commit from now on. Returns it
    /// with its secret, which is not shown again.
    pub async fn create_webhook(
        &self,
        new: &NewEndpoint,
    ) -> Result<(WebhookEndpoint, String), StoreError> {
        let mut conn = self.conn().await?;
        let start = feed_horizon(&mut conn).await?;
        let secret = new_webhook_secret();
        let id = Uuid::new_v4();
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, url, event_types, sale_id, secret, cursor_tx,
                                            cursor_sale, cursor_sequence)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&new.url)
            .bind(new.event_types.as_deref())
            .bind(new.sale_id)
            .bind(secret_box::seal(self.secrets.as_deref(), id, &secret))
            .bind(start.feed_tx)
            .bind(start.sale_id)
            .bind(start.sequence)
            .fetch_one(&mut conn)
            .await?;
        Ok((row.into(), secret))
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let sql =
            format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id");
        let rows = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut self.conn().await?)
            .await?;
        Ok(rows.into_iter().map(WebhookEndpoint::from).collect())
    }

    /// Removes an endpoint and its deliveries. False when there was none.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut self.conn().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives an endpoint a new secret; the old one keeps signing beside it for `overlap`,
    /// so the receiver can switch without refusing a delivery. `None` when no endpoint.
    pub async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        overlap: Duration,
    ) -> Result<Option<(WebhookEndpoint, String)>, StoreError> {
        let secret = new_webhook_secret();
        let sql = format!(
            "UPDATE webhook_endpoints
                SET previous_secret = secret, secret = $2,
                    previous_secret_until = now() + make_interval(secs => $3)
              WHERE id = $1
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(secret_box::seal(self.secrets.as_deref(), id, &secret))
            .bind(overlap.as_secs_f64())
            .fetch_optional(&mut self.conn().await?)
            .await?;
        Ok(row.map(|row| (row.into(), secret)))
    }

    /// The ids of every endpoint (the sender runs one loop per endpoint).
    pub async fn webhook_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM webhook_endpoints")
            .fetch_all(&mut self.conn().await?)
            .await?)
    }

    /// Where and with which secrets to send for this endpoint; `None` once it is deleted.
    /// Sealed secrets are opened here (an error when they cannot be: the deliveries wait).
    pub async fn webhook_target(&self, id: Uuid) -> Result<Option<EndpointTarget>, StoreError> {
        let target = sqlx::query_as::<_, EndpointTarget>(
            "SELECT id, url, secret,
                    CASE WHEN previous_secret_until > now() THEN previous_secret END
                        AS previous_secret
               FROM webhook_endpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut self.conn().await?)
        .await?;
        let Some(mut target) = target else {
            return Ok(None);
        };
        let secrets = self.secrets.as_deref();
        target.secret = secret_box::open(secrets, id, &target.secret)?;
        target.previous_secret = target
            .previous_secret
            .map(|previous| secret_box::open(secrets, id, &previous))
            .transpose()?;
        Ok(Some(target))
    }

    /// Seals every endpoint's secrets under the current key: plain ones (written before a
    /// key was set) and ones sealed under `WEBHOOK_SECRET_KEY_PREVIOUS`. Run at start-up
    /// when a key is set; returns how many endpoints changed. Race-free: each endpoint is
    /// re-read under its row lock, so a rotation in between is sealed, not overwritten.
    pub async fn reseal_webhook_secrets(&self) -> Result<usize, StoreError> {
        let Some(secrets) = self.secrets.clone() else {
            return Ok(0);
        };
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT id, secret, previous_secret FROM webhook_endpoints ORDER BY id FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = 0;
        for (id, secret, previous) in rows {
            let stale = |stored: &String| !secrets.is_current(id, stored);
            if !stale(&secret) && !previous.as_ref().is_some_and(stale) {
                continue;
            }
            let secret = secrets.seal(id, &secrets.open(id, &secret)?);
            let previous = previous
                .map(|previous| {
                    secrets
                        .open(id, &previous)
                        .map(|plain| secrets.seal(id, &plain))
                })
                .transpose()?;
            sqlx::query(
                "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(secret)
            .bind(previous)
            .execute(&mut *tx)
            .await?;
            changed += 1;
        }
        tx.commit().await?;
        Ok(changed)
    }
}
