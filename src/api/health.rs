//! `GET /health`: 200 while the database answers, 503 when it does not.

use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::error::{ErrorBody, ErrorCode};
use super::models::HealthView;
use crate::store::Store;

/// How long the database gets to answer before the service reports itself unhealthy.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

pub struct HealthApi {
    pub store: Store,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The service and its database answer.
    #[oai(status = 200)]
    Ok(Json<HealthView>),
    /// `UNAVAILABLE`: the database does not answer.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness and database reachability
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        if self.store.ping(DB_TIMEOUT).await {
            HealthResponse::Ok(Json(HealthView {
                status: "ok".into(),
            }))
        } else {
            tracing::warn!("health check: database does not answer");
            HealthResponse::Unavailable(ErrorBody::json(
                ErrorCode::Unavailable,
                "the database does not answer",
            ))
        }
    }
}
