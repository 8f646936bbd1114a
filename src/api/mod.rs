//! The HTTP API: poem + poem-openapi routes, the OpenAPI document, Swagger UI, and the
//! middleware every request passes (request id, tracing, per-IP limit, JSON errors, panics).
//!
//! Handlers validate input and translate between JSON and the domain; they never write SQL
//! (that is [`crate::store`]).

mod admin;
mod allowlist;
pub mod auth;
mod buyer;
pub mod buyer_auth;
mod console;
mod csv;
pub mod drain;
pub mod edge;
pub mod error;
mod events;
mod health;
mod journey;
pub mod models;
mod queue;
mod raffle;
pub mod rate_limit;
mod streams;
mod strict;
pub mod view_cache;
mod webhooks;

use std::sync::Arc;

use poem::http::StatusCode;
use poem::middleware::{CatchPanic, RequestId, Tracing};
use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::{OpenApiService, OperationId, Tags};

use crate::live::{LiveConfig, LiveHub};
use crate::metrics::Metrics;
use crate::status::RunnerHealth;
use crate::store::{EntryBatcher, JoinBatcher, PurchaseBatcher, Store};
use admin::AdminApi;
use allowlist::AllowlistApi;
use auth::AdminKey;
use buyer::BuyerApi;
use buyer_auth::BuyerTokens;
use drain::Drain;
pub use edge::EdgeLimits;
use error::{ErrorBody, ErrorCode};
use events::EventsApi;
use health::HealthApi;
use queue::QueueApi;
use raffle::RaffleApi;
use rate_limit::RateLimits;
use streams::StreamsApi;
use view_cache::SaleViewCache;
use webhooks::WebhooksApi;

#[derive(Tags)]
pub enum ApiTags {
    /// Create, inspect, cancel, delete and audit sales (bearer admin key).
    Admin,
    /// The public sale view and instant checkout.
    Buyer,
    /// Queued checkout: the waiting room, holds and confirmation.
    Queue,
    /// Raffles: entries, the seeded draw, selections and confirmation.
    Raffle,
    /// The outbox, pulled: the event feed, its live stream, and purchase exports.
    Events,
    /// The outbox, pushed: webhook endpoints and their deliveries.
    Webhooks,
    /// Service health.
    Health,
}

type Apis = (
    AdminApi,
    AllowlistApi,
    EventsApi,
    WebhooksApi,
    BuyerApi,
    QueueApi,
    RaffleApi,
    StreamsApi,
    HealthApi,
);

const API_DESCRIPTION: &str = "\
Sells a limited stock to a burst of buyers with no overselling and one unit per buyer, \
on PostgreSQL alone.\n\n\
Every error response is JSON `{\"code\": ..., \"message\": ...}`; `code` is one of the \
`ErrorCode` values. Admin routes need `Authorization: Bearer <ADMIN_API_KEY>`. `{sale}` \
in a path is the sale's UUID (archived sales too) or the sku of a live sale.\n\n\
Failure contract: when the database cannot be reached, times out or has no free connection, \
or the service is at its limit of requests in flight, a route answers 503 `UNAVAILABLE` \
with `Retry-After` within a few seconds, never a 500 and never a hang. A buyer write whose \
answer was lost answers 503 with `outcomeUnknown: true`; retrying it is safe (a purchase or \
confirm then answers 201 or `ALREADY_PURCHASED` with the purchase). Bodies over 16 KiB are \
413 `PAYLOAD_TOO_LARGE`, except allow-list uploads (streamed, up to 64 MiB).";

/// What the HTTP layer needs from the rest of the service.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    /// On the reserved pool: the health check's database probe.
    pub reserved: Store,
    pub runner_health: RunnerHealth,
    pub edge: EdgeLimits,
    pub limits: Arc<RateLimits>,
    pub admin_key: AdminKey,
    pub tokens: Arc<BuyerTokens>,
    /// Instant purchases go through group commit.
    pub purchases: PurchaseBatcher,
    /// So do joins of a waiting room.
    pub joins: JoinBatcher,
    /// The public sale view's short-lived cache.
    pub views: Arc<SaleViewCache>,
    pub metrics: Metrics,
    /// How long a replayed webhook delivery is retried.
    pub webhook_retry_for: std::time::Duration,
    /// Fans sale changes out to the live streams.
    pub live: LiveHub,
    /// Started on shutdown: readiness fails, streams close.
    pub drain: Drain,
    /// When set, `/metrics` wants it as a bearer token.
    pub metrics_token: Option<AdminKey>,
}

impl ApiState {
    /// No rate limits and no buyer tokens: for the OpenAPI document and tests.
    pub fn unlimited(store: Store, admin_key: AdminKey) -> prometheus::Result<Self> {
        let metrics = Metrics::new()?;
        Ok(Self {
            live: LiveHub::new(store.clone(), metrics.clone(), LiveConfig::default()),
            reserved: store.clone(),
            runner_health: RunnerHealth::default(),
            edge: EdgeLimits::default(),
            limits: Arc::new(RateLimits {
                per_user: rate_limit::KeyedLimiter::new(0, 0),
                per_ip: rate_limit::KeyedLimiter::new(0, 0),
                trust_forwarded_for: false,
            }),
            admin_key,
            tokens: Arc::new(BuyerTokens::disabled()),
            purchases: PurchaseBatcher::new(
                store.clone(),
                true,
                EdgeLimits::default().answer_timeout,
            ),
            joins: JoinBatcher::new(store.clone(), EdgeLimits::default().answer_timeout),
            views: Arc::new(SaleViewCache::new(std::time::Duration::ZERO)),
            metrics,
            webhook_retry_for: crate::domain::events::DEFAULT_WEBHOOK_RETRY_FOR,
            drain: Drain::never(),
            metrics_token: None,
            store,
        })
    }
}

/// The OpenAPI service over all operations.
pub fn openapi_service(state: &ApiState) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            AdminApi {
                store: state.store.clone(),
            },
            AllowlistApi {
                store: state.store.clone(),
            },
            EventsApi {
                store: state.store.clone(),
                metrics: state.metrics.clone(),
                drain: state.drain.clone(),
            },
            WebhooksApi {
                store: state.store.clone(),
                retry_for: state.webhook_retry_for,
            },
            BuyerApi {
                store: state.store.clone(),
                limits: state.limits.clone(),
                tokens: state.tokens.clone(),
                purchases: state.purchases.clone(),
                views: state.views.clone(),
                metrics: state.metrics.clone(),
            },
            QueueApi {
                store: state.store.clone(),
                joins: state.joins.clone(),
                limits: state.limits.clone(),
                tokens: state.tokens.clone(),
                metrics: state.metrics.clone(),
            },
            RaffleApi {
                store: state.store.clone(),
                entries: EntryBatcher::new(state.store.clone(), state.edge.answer_timeout),
                limits: state.limits.clone(),
                tokens: state.tokens.clone(),
                metrics: state.metrics.clone(),
            },
            StreamsApi {
                live: state.live.clone(),
                tokens: state.tokens.clone(),
                drain: state.drain.clone(),
                limits: state.limits.clone(),
            },
            HealthApi {
                store: state.reserved.clone(),
                runner: state.runner_health.clone(),
                drain: state.drain.clone(),
            },
        ),
        "flashsale",
        env!("CARGO_PKG_VERSION"),
    )
    .description(API_DESCRIPTION)
}

/// The OpenAPI document as served at `/openapi.json` (and committed under `openapi/`).
pub fn openapi_json(store: Store) -> prometheus::Result<String> {
    Ok(openapi_service(&ApiState::unlimited(store, AdminKey::new(String::new()))?).spec())
}

/// The metrics text. Everything is in memory: the pools' connections are read here, the
/// waiting rooms by a background task every few seconds (`worker::refresh_gauges`), so a
/// scrape never touches the database.
fn scrape(metrics: &Metrics, store: &Store, reserved: &Store) -> String {
    for (name, pool) in [("main", store.pool()), ("reserved", reserved.pool())] {
        let (size, idle) = (i64::from(pool.size()), pool.num_idle() as i64);
        let connections = &metrics.pool_connections;
        connections
            .with_label_values(&[name, "in_use"])
            .set(size - idle);
        connections.with_label_values(&[name, "idle"]).set(idle);
    }
    metrics.render()
}

/// `GET /metrics`: 401 without the bearer token when `METRICS_TOKEN` is set (compared in
/// constant time, like the admin key).
fn metrics_response(
    req: &poem::Request,
    token: Option<&AdminKey>,
    metrics: &Metrics,
    store: &Store,
    reserved: &Store,
) -> poem::Response {
    if let Some(token) = token {
        let offered = req
            .header(poem::http::header::AUTHORIZATION)
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token.matches(offered) {
            return ErrorBody::json(
                ErrorCode::Unauthorized,
                "/metrics wants METRICS_TOKEN as a bearer token",
            )
            .with_status(StatusCode::UNAUTHORIZED)
            .with_header(poem::http::header::WWW_AUTHENTICATE, "Bearer")
            .into_response();
        }
    }
    scrape(metrics, store, reserved)
        .with_content_type("text/plain; version=0.0.4")
        .into_response()
}

/// Swagger UI's page: its script and styles are inline in the page (no CDN), and it calls
/// only this origin; nothing may frame it (clickjacking a page where an admin key is typed).
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src 'self' data:; font-src data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `2xx`, `4xx`, ... for a status.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The whole HTTP application. Its middleware stack is one deeply nested type: a crate that
/// serves it needs `#![recursion_limit = "256"]` (boxing it instead costs an allocation of
/// the whole request future per request: measured as a tenth of the purchase throughput).
pub fn app(state: ApiState) -> impl Endpoint<Output = poem::Response> {
    let api = openapi_service(&state);
    let guards = Arc::new(edge::Edge::new(state.edge, &api.spec()));
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let ip_limits = state.limits.clone();
    let admin_key = state.admin_key;
    let scraped = (
        state.metrics.clone(),
        state.store.clone(),
        state.reserved.clone(),
        state.metrics_token.clone(),
    );
    let counted = state.metrics.clone();
    Route::new()
        .nest(
            "/docs",
            docs.with(
                poem::middleware::SetHeader::new()
                    .overriding(poem::http::header::CONTENT_SECURITY_POLICY, DOCS_CSP)
                    .overriding(poem::http::header::X_FRAME_OPTIONS, "DENY")
                    .overriding(poem::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ),
        )
        .nest("/console", console::routes())
        .at("/openapi.json", spec)
        .at(
            "/metrics",
            poem::get(poem::endpoint::make_sync(move |req| {
                let (metrics, store, reserved, token) = &scraped;
                metrics_response(&req, token.as_ref(), metrics, store, reserved)
            })),
        )
        .nest("/", api)
        .around(move |next, req| {
            let limits = ip_limits.clone();
            rate_limit::per_ip_limit(next, req, limits)
        })
        .around(move |next, req| {
            let counted = counted.clone();
            async move {
                let started = std::time::Instant::now();
                let result = next.call(req).await;
                // poem-openapi tags each answer with its operation: a route template, so
                // no user id or sku ever becomes a label.
                let (status, operation) = match &result {
                    Ok(response) => (response.status(), response.data::<OperationId>()),
                    Err(err) => (err.status(), err.data::<OperationId>()),
                };
                let class = status_class(status);
                let operation = operation.map_or("other", |operation| operation.0);
                counted.http_responses.with_label_values(&[class]).inc();
                counted
                    .http_duration
                    .with_label_values(&[operation, class])
                    .observe(started.elapsed().as_secs_f64());
                result
            }
        })
        .data(admin_key)
        .with(CatchPanic::new().with_handler(|_| {
            tracing::error!("handler panicked");
            ErrorBody::json(ErrorCode::Internal, "internal error; see the service log")
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        }))
        .catch_all_error(|err| async move { error::fallback_response(err) })
        .around(move |next, req| edge::guard(next, req, guards.clone()))
        .with(Tracing)
        .with(RequestId::default())
        .map_to_response()
}
