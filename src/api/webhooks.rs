//! Webhook endpoints (admin): register, list, rotate the secret, delete; and their
//! deliveries: list (failed ones especially) and replay.

use std::time::Duration;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use super::auth::AdminAuth;
use super::error::{ErrorBody, ErrorCode, ServerError, admin_parse_error};
use super::models::{
    CreateWebhookRequest, DeliveryStatusView, DeliveryView, WebhookSecretView, WebhookView,
};
use crate::domain::{EventType, check_webhook_url};
use crate::store::{NewEndpoint, ReplayOutcome, Store};

/// After a rotation the previous secret keeps signing for this long.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

pub struct WebhooksApi {
    pub store: Store,
    /// How long a replayed delivery is retried.
    pub retry_for: Duration,
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "create_webhook_parse_error")]
pub enum CreateWebhookResponse {
    /// Registered: it receives the events that commit from now on. The `secret` is shown
    /// only here.
    #[oai(status = 201)]
    Created(Json<WebhookSecretView>),
    /// `INVALID_REQUEST`: not an absolute http(s) URL, credentials in the URL, an unknown
    /// or repeated event type, a bad field.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `SALE_NOT_FOUND`: the `sale` filter names no sale.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}
admin_parse_error!(create_webhook_parse_error, CreateWebhookResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "list_webhooks_parse_error")]
pub enum ListWebhooksResponse {
    /// Every endpoint, oldest first (without secrets).
    #[oai(status = 200)]
    Ok(Json<Vec<WebhookView>>),
    /// `INVALID_REQUEST`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
}
admin_parse_error!(list_webhooks_parse_error, ListWebhooksResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "webhook_by_id_parse_error")]
pub enum WebhookByIdResponse {
    /// Done: the endpoint and its deliveries are gone.
    #[oai(status = 204)]
    Deleted,
    /// `INVALID_REQUEST`: the id is not a UUID.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `WEBHOOK_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}
admin_parse_error!(webhook_by_id_parse_error, WebhookByIdResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "rotate_parse_error")]
pub enum RotateSecretResponse {
    /// The new secret, shown only here. The previous one keeps signing beside it (two
    /// `v1,` signatures in `webhook-signature`) until `previousSecretValidUntil` (24 h), so
    /// the receiver can switch at its own pace.
    #[oai(status = 200)]
    Ok(Json<WebhookSecretView>),
    /// `INVALID_REQUEST`: the id is not a UUID.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `WEBHOOK_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}
admin_parse_error!(rotate_parse_error, RotateSecretResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "deliveries_parse_error")]
pub enum DeliveriesResponse {
    /// Deliveries, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<DeliveryView>>),
    /// `INVALID_REQUEST`: a bad `status`, `webhook` or `limit`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
}
admin_parse_error!(deliveries_parse_error, DeliveriesResponse);

#[derive(ApiResponse)]
#[oai(bad_request_handler = "replay_parse_error")]
pub enum ReplayResponse {
    /// The delivery is pending again, due now, with a fresh retry window; it keeps its
    /// `webhook-id`.
    #[oai(status = 202)]
    Accepted,
    /// `INVALID_REQUEST`: the id is not a positive number.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `UNAUTHORIZED`: missing or wrong admin key.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `DELIVERY_NOT_FOUND`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `DELIVERY_PENDING`: it is still being tried; nothing to replay.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
}
admin_parse_error!(replay_parse_error, ReplayResponse);

fn webhook_not_found(id: Uuid) -> Json<ErrorBody> {
    ErrorBody::json(ErrorCode::WebhookNotFound, format!("no webhook {id}"))
}

#[OpenApi(prefix_path = "/api/v1/admin", tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register a webhook endpoint
    ///
    /// Every event that commits from now on (of the chosen types and sale) is POSTed to
    /// `url` as JSON, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), at least once; retried with backoff for 24 h on anything but a
    /// 2xx.
    #[oai(path = "/webhooks", method = "post", operation_id = "createWebhook")]
    #[tracing::instrument(skip_all)]
    async fn create_webhook(
        &self,
        _auth: AdminAuth,
        body: Json<CreateWebhookRequest>,
    ) -> Result<CreateWebhookResponse, ServerError> {
        let bad = |message: String| {
            Ok(CreateWebhookResponse::BadRequest(ErrorBody::json(
                ErrorCode::InvalidRequest,
                message,
            )))
        };
        let request = body.0;
        let url = match check_webhook_url(&request.url.0) {
            Ok(url) => url,
            Err(err) => return bad(err.to_string()),
        };
        let event_types = match request.events {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => {
                return bad("events must not be null: leave it out for every type".into());
            }
            MaybeUndefined::Value(types) => Some(
                types
                    .into_iter()
                    .map(|kind| EventType::from(kind).as_str().to_string())
                    .collect(),
            ),
        };
        let sale_id = match request.sale {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => {
                return bad("sale must not be null: leave it out for every sale".into());
            }
            MaybeUndefined::Value(reference) => {
                match self.store.resolve_sale(&reference.0).await? {
                    Some(sale) => Some(sale.id),
                    None => {
                        return Ok(CreateWebhookResponse::NotFound(ErrorBody::sale_not_found(
                            &reference.0,
                        )));
                    }
                }
            }
        };
        let (endpoint, secret) = self
            .store
            .create_webhook(&NewEndpoint {
                url,
                event_types,
                sale_id,
            })
            .await?;
        tracing::info!(webhook = %endpoint.id, "webhook registered");
        Ok(CreateWebhookResponse::Created(Json(WebhookSecretView {
            webhook: WebhookView::from(&endpoint),
            secret,
        })))
    }

    /// List webhook endpoints
    #[oai(path = "/webhooks", method = "get", operation_id = "listWebhooks")]
    async fn list_webhooks(&self, _auth: AdminAuth) -> Result<ListWebhooksResponse, ServerError> {
        let endpoints = self.store.list_webhooks().await?;
        Ok(ListWebhooksResponse::Ok(Json(
            endpoints.iter().map(WebhookView::from).collect(),
        )))
    }

    /// Delete a webhook endpoint
    ///
    /// Its pending deliveries are dropped with it.
    #[oai(
        path = "/webhooks/:id",
        method = "delete",
        operation_id = "deleteWebhook"
    )]
    #[tracing::instrument(skip_all, fields(webhook = %id.0))]
    async fn delete_webhook(
        &self,
        _auth: AdminAuth,
        /// The endpoint's id.
        id: Path<Uuid>,
    ) -> Result<WebhookByIdResponse, ServerError> {
        Ok(if self.store.delete_webhook(id.0).await? {
            tracing::info!("webhook deleted");
            WebhookByIdResponse::Deleted
        } else {
            WebhookByIdResponse::NotFound(webhook_not_found(id.0))
        })
    }

    /// Rotate a webhook endpoint's secret
    #[oai(
        path = "/webhooks/:id/rotate-secret",
        method = "post",
        operation_id = "rotateWebhookSecret"
    )]
    #[tracing::instrument(skip_all, fields(webhook = %id.0))]
    async fn rotate_secret(
        &self,
        _auth: AdminAuth,
        /// The endpoint's id.
        id: Path<Uuid>,
    ) -> Result<RotateSecretResponse, ServerError> {
        Ok(
            match self
                .store
                .rotate_webhook_secret(id.0, ROTATION_OVERLAP)
                .await?
            {
                Some((endpoint, secret)) => {
                    tracing::info!("webhook secret rotated");
                    RotateSecretResponse::Ok(Json(WebhookSecretView {
                        webhook: WebhookView::from(&endpoint),
                        secret,
                    }))
                }
                None => RotateSecretResponse::NotFound(webhook_not_found(id.0)),
            },
        )
    }

    /// Webhook deliveries
    ///
    /// Newest first. `status=failed` lists those whose retry window closed (also counted by
    /// the `flashsale_webhook_deliveries_failed` gauge); replay them once the receiver works.
    #[oai(
        path = "/webhooks/deliveries",
        method = "get",
        operation_id = "listWebhookDeliveries"
    )]
    async fn list_deliveries(
        &self,
        _auth: AdminAuth,
        /// Only deliveries in this state.
        status: Query<Option<DeliveryStatusView>>,
        /// Only deliveries to this endpoint.
        webhook: Query<Option<Uuid>>,
        /// At most this many (1-1000, default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<DeliveriesResponse, ServerError> {
        let status = status.0.map(|status| match status {
            DeliveryStatusView::Pending => "pending",
            DeliveryStatusView::Delivered => "delivered",
            DeliveryStatusView::Failed => "failed",
        });
        let deliveries = self
            .store
            .list_deliveries(status, webhook.0, limit.0.unwrap_or(100))
            .await?;
        Ok(DeliveriesResponse::Ok(Json(
            deliveries.into_iter().map(DeliveryView::from).collect(),
        )))
    }

    /// Replay a delivery
    ///
    /// Sends a failed (or already delivered) delivery again, as soon as possible, with a
    /// fresh retry window and the same `webhook-id`.
    #[oai(
        path = "/webhooks/deliveries/:id/replay",
        method = "post",
        operation_id = "replayWebhookDelivery"
    )]
    #[tracing::instrument(skip_all, fields(delivery = id.0))]
    async fn replay_delivery(
        &self,
        _auth: AdminAuth,
        /// The delivery's id.
        #[oai(validator(minimum(value = "1")))]
        id: Path<i64>,
    ) -> Result<ReplayResponse, ServerError> {
        Ok(
            match self.store.replay_delivery(id.0, self.retry_for).await? {
                ReplayOutcome::Replayed => {
                    tracing::info!("delivery replayed");
                    ReplayResponse::Accepted
                }
                ReplayOutcome::Pending => ReplayResponse::Conflict(ErrorBody::json(
                    ErrorCode::DeliveryPending,
                    "the delivery is still pending: it is being tried",
                )),
                ReplayOutcome::NotFound => ReplayResponse::NotFound(ErrorBody::json(
                    ErrorCode::DeliveryNotFound,
                    format!("no delivery {}", id.0),
                )),
            },
        )
    }
}
