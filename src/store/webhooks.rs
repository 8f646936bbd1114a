//! Webhook endpoints: register, list, rotate the secret, delete, and what the sender needs
//! of one (its address and secrets). Their deliveries are in `deliveries.rs`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::events::feed_horizon;
use super::{Store, StoreError};
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
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, url, event_types, sale_id, secret, cursor_tx,
                                            cursor_sale, cursor_sequence)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING {ENDPOINT_COLUMNS}"
        );
        let row = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::new_v4())
            .bind(&new.url)
            .bind(new.event_types.as_deref())
            .bind(new.sale_id)
            .bind(&secret)
            .bind(start.tx_id)
            .bind(start.sale_id)
            .bind(start.sequence)
            .fetch_one(&mut *conn)
            .await?;
        Ok((row.into(), secret))
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let sql =
            format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id");
        let rows = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.into_iter().map(WebhookEndpoint::from).collect())
    }

    /// Removes an endpoint and its deliveries. False when there was none.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *self.conn().await?)
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
            .bind(&secret)
            .bind(overlap.as_secs_f64())
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        Ok(row.map(|row| (row.into(), secret)))
    }

    /// The ids of every endpoint (the sender runs one loop per endpoint).
    pub async fn webhook_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM webhook_endpoints")
            .fetch_all(&mut *self.conn().await?)
            .await?)
    }

    /// Where and with which secrets to send for this endpoint; `None` once it is deleted.
    pub async fn webhook_target(&self, id: Uuid) -> Result<Option<EndpointTarget>, StoreError> {
        Ok(sqlx::query_as::<_, EndpointTarget>(
            "SELECT id, url, secret,
                    CASE WHEN previous_secret_until > now() THEN previous_secret END
                        AS previous_secret
               FROM webhook_endpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?)
    }
}
