//! `GET /health` (readiness): 200 while the database answers, takes writes (a primary, not
//! a standby the route moved to) and the job runner makes progress, 503 otherwise, and 503
//! at once from the start of a drain (shutdown). The probe uses the reserved pool, so a flood of buyers on the
//! main pool does not make a healthy instance look dead. `GET /health/live` (liveness): 200
//! while the process serves HTTP, touching nothing else; also the stress suite's floor.

use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::drain::Drain;
use super::error::{ErrorBody, ErrorCode};
use super::models::HealthView;
use crate::status::RunnerHealth;
use crate::store::{Ping, Store};

/// How long the database gets to answer the health check's ping before the service
/// reports itself unhealthy.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub struct HealthApi {
    pub store: Store,
    pub runner: RunnerHealth,
    pub drain: Drain,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The service and its database answer.
    #[oai(status = 200)]
    Ok(Json<HealthView>),
    /// `UNAVAILABLE`: the instance is shutting down, the database does not answer or is
    /// read-only, or the job runner (admission, expiry, sale states) has not finished a
    /// round for 30 s.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Readiness: the database answers and takes writes, and the job runner makes progress
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        if self.drain.is_draining() {
            return HealthResponse::Unavailable(
                ErrorBody::json(ErrorCode::Unavailable, "shutting down: draining"),
                1,
            );
        }
        let problem = match self.store.ping(PING_TIMEOUT).await {
            Ping::Writable => None,
            Ping::ReadOnly => Some("the database is read-only (a standby?)"),
            Ping::Unreachable => Some("the database does not answer"),
        };
        if let Some(problem) = problem {
            static LOGGED: crate::telemetry::Throttle =
                crate::telemetry::Throttle::new(Duration::from_secs(10));
            if LOGGED.ready() {
                tracing::warn!("health check: {problem} (the next 10 s: quiet)");
            }
            return HealthResponse::Unavailable(
                ErrorBody::json(ErrorCode::Unavailable, problem),
                1,
            );
        }
        if !self.runner.is_progressing() {
            let stalled = self.runner.since_last_beat().as_secs();
            tracing::error!(stalled_s = stalled, "health check: job runner stalled");
            return HealthResponse::Unavailable(
                ErrorBody::json(
                    ErrorCode::Unavailable,
                    format!("the job runner has not made progress for {stalled} s"),
                ),
                1,
            );
        }
        HealthResponse::Ok(Json(HealthView {
            status: "ok".into(),
        }))
    }

    /// Liveness: the process answers HTTP (no database call)
    #[oai(path = "/health/live", method = "get", operation_id = "liveness")]
    async fn liveness(&self) -> Json<HealthView> {
        Json(HealthView {
            status: "ok".into(),
        })
    }
}
