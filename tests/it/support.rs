//! `spawn_app()`: a fresh database and an in-process HTTP client for one test.

use std::sync::{Arc, OnceLock};

use flashsale::api::ApiState;
use flashsale::api::auth::AdminKey;
use flashsale::api::buyer_auth::BuyerTokens;
use flashsale::api::rate_limit::{KeyedLimiter, RateLimits};
use flashsale::api::view_cache::SaleViewCache;
use flashsale::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use flashsale::live::{LiveConfig, LiveHub};
use flashsale::metrics::Metrics;
use flashsale::store::{self, JoinBatcher, PurchaseBatcher, Store};
use poem::endpoint::BoxEndpoint;
use poem::http::StatusCode;
use poem::test::{TestClient, TestResponse};
use poem::{EndpointExt, Response};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::time::Duration;
use uuid::Uuid;

pub const ADMIN_KEY: &str = "test-admin-key";

/// The server every test database lives on: `DATABASE_URL`'s, or a throwaway cluster that
/// is removed when the test process exits.
fn server_url() -> &'static str {
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let data_dir = std::env::temp_dir().join(format!(
            "flashsale-test-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        let cluster = EmbeddedPostgres::start(&EmbeddedOptions {
            data_dir,
            durable: false,
            remove_on_stop: true,
        })
        .expect("the test cluster starts (PostgreSQL binaries installed?)");
        let url = cluster.url("postgres");
        // The watchdog stops and removes the cluster when this process exits.
        std::mem::forget(cluster);
        url
    })
}

/// Creates and migrates a fresh database; returns a pool on it.
pub async fn fresh_database(pool_size: u32) -> PgPool {
    let url = empty_database().await;
    let pool = store::connect(&url, pool_size).await.expect("connect");
    store::MIGRATOR.run(&pool).await.expect("migrate");
    pool
}

/// Creates a fresh database with no tables; returns its URL.
pub async fn empty_database() -> String {
    let name = format!("test_{}", Uuid::new_v4().simple());
    store::create_database_if_missing(server_url(), &name)
        .await
        .expect("create the test database");
    let options: PgConnectOptions = server_url().parse().expect("valid server url");
    options_to_url(&options.database(&name))
}

fn options_to_url(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// Rate limits for a test app: off unless a test asks.
pub struct Limits {
    pub per_user: (u32, u32),
    pub per_ip: (u32, u32),
    pub trust_forwarded_for: bool,
}

impl Limits {
    pub fn off() -> Self {
        Self {
            per_user: (0, 0),
            per_ip: (0, 0),
            trust_forwarded_for: false,
        }
    }
}

pub struct TestApp {
    pub store: Store,
    pub client: Arc<TestClient<BoxEndpoint<'static, Response>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Limits::off()).await
}

pub async fn spawn_app_with(limits: Limits) -> TestApp {
    let store = Store::new(fresh_database(10).await);
    TestApp {
        client: Arc::new(client_for(store.clone(), limits)),
        store,
    }
}

pub fn client_for(store: Store, limits: Limits) -> TestClient<BoxEndpoint<'static, Response>> {
    client_with_tokens(store, limits, BuyerTokens::disabled())
}

pub fn client_with_tokens(
    store: Store,
    limits: Limits,
    tokens: BuyerTokens,
) -> TestClient<BoxEndpoint<'static, Response>> {
    client_with_edge(store, limits, tokens, flashsale::api::EdgeLimits::default())
}

pub fn client_with_edge(
    store: Store,
    limits: Limits,
    tokens: BuyerTokens,
    edge: flashsale::api::EdgeLimits,
) -> TestClient<BoxEndpoint<'static, Response>> {
    // No LISTEN connection (it would take one of the test pool's): streams hear of
    // changes from the hub's own refresh, every 200 ms here.
    let live = LiveHub::new(
        store.clone(),
        Metrics::new().expect("metrics"),
        LiveConfig {
            max_streams: 1_000,
            refresh_every: Duration::from_millis(200),
            ..LiveConfig::default()
        },
    );
    client_with_hub(store, limits, tokens, edge, live)
}

/// An app whose streams hear of changes only through `LISTEN`/`NOTIFY` (the hub's own
/// refresh is a minute apart): what a stream receives within seconds came by notification.
pub async fn spawn_notified_app(max_streams: usize) -> (TestApp, LiveHub) {
    let store = Store::new(fresh_database(10).await);
    let live = LiveHub::new(
        store.clone(),
        Metrics::new().expect("metrics"),
        LiveConfig {
            max_streams,
            refresh_every: Duration::from_secs(60),
            ..LiveConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The listener runs for the rest of the test.
    std::mem::forget(stop);
    tokio::spawn(live.clone().run_listener(stopped));
    let client = client_with_hub(
        store.clone(),
        Limits::off(),
        BuyerTokens::disabled(),
        flashsale::api::EdgeLimits::default(),
        live.clone(),
    );
    let app = TestApp {
        client: Arc::new(client),
        store,
    };
    (app, live)
}

pub fn client_with_hub(
    store: Store,
    limits: Limits,
    tokens: BuyerTokens,
    edge: flashsale::api::EdgeLimits,
    live: LiveHub,
) -> TestClient<BoxEndpoint<'static, Response>> {
    let limits = Arc::new(RateLimits {
        per_user: KeyedLimiter::new(limits.per_user.0, limits.per_user.1),
        per_ip: KeyedLimiter::new(limits.per_ip.0, limits.per_ip.1),
        trust_forwarded_for: limits.trust_forwarded_for,
    });
    let metrics = live.metrics().clone();
    let app = flashsale::api::app(ApiState {
        reserved: store.clone(),
        runner_health: flashsale::status::RunnerHealth::default(),
        edge,
        limits,
        admin_key: AdminKey::new(ADMIN_KEY.into()),
        tokens: Arc::new(tokens),
        purchases: PurchaseBatcher::new(store.clone(), true, edge.answer_timeout)
            .with_metrics(metrics.clone()),
        joins: JoinBatcher::new(store.clone(), edge.answer_timeout),
        views: Arc::new(SaleViewCache::new(Duration::ZERO)),
        metrics,
        webhook_retry_for: std::time::Duration::from_secs(3600),
        store,
        live,
        drain: flashsale::api::drain::Drain::never(),
        metrics_token: None,
    });
    TestClient::new(app.boxed())
}

/// A response's status and JSON body.
pub async fn status_and_json(response: TestResponse) -> (StatusCode, Value) {
    let status = response.0.status();
    let body = response
        .0
        .into_body()
        .into_string()
        .await
        .unwrap_or_default();
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

impl TestApp {
    /// Creates a sale through the admin API and returns its JSON.
    pub async fn create_sale(&self, body: Value) -> Value {
        let response = self
            .client
            .post("/api/v1/admin/sales")
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .body_json(&body)
            .send()
            .await;
        let (status, json) = status_and_json(response).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        json
    }

    /// An active instant sale with `stock` units and a unique sku.
    pub async fn active_sale(&self, stock: i64) -> Value {
        let sku = format!("sku-{}", Uuid::new_v4().simple());
        self.create_sale(json!({"sku": sku, "name": "Test drop", "stock": stock}))
            .await
    }

    pub async fn purchase(&self, sale: &str, user: &str) -> (StatusCode, Value) {
        purchase(&self.client, sale, user).await
    }

    /// Joins the queued sale `sku` as `user`.
    pub async fn join_queue(&self, sku: &str, user: &str) -> (StatusCode, Value) {
        join(&self.client, sku, user).await
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(path)
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await;
        status_and_json(response).await
    }

    pub async fn admin_post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(path)
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .body_json(&body)
            .send()
            .await;
        status_and_json(response).await
    }

    pub async fn admin_post(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(path)
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await;
        status_and_json(response).await
    }
}

pub async fn purchase(
    client: &TestClient<BoxEndpoint<'static, Response>>,
    sale: &str,
    user: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("/api/v1/sales/{sale}/purchases"))
        .body_json(&json!({ "userId": user }))
        .send()
        .await;
    status_and_json(response).await
}

/// Joins the waiting room of `sale` as `user` through `client` (one instance).
pub async fn join(
    client: &TestClient<BoxEndpoint<'static, Response>>,
    sale: &str,
    user: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("/api/v1/sales/{sale}/queue"))
        .body_json(&json!({ "userId": user }))
        .send()
        .await;
    status_and_json(response).await
}

/// A client on `store` that waits at most 1 s for the database (the tests of a database
/// that goes away), with the instant sale `sku` of `stock` units created through it.
pub async fn impatient_client_with_sale(
    store: Store,
    sku: &str,
    stock: i64,
) -> TestClient<BoxEndpoint<'static, Response>> {
    let edge = flashsale::api::EdgeLimits {
        answer_timeout: Duration::from_secs(1),
        ..flashsale::api::EdgeLimits::default()
    };
    let client = client_with_edge(store, Limits::off(), BuyerTokens::disabled(), edge);
    let created = client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": sku, "name": "Away", "stock": stock}))
        .send()
        .await;
    assert_eq!(created.0.status(), StatusCode::CREATED);
    client
}

/// The `code` of an error body.
pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<no code>")
}

/// The sale's counters straight from the table.
pub async fn counters(pool: &PgPool, sku: &str) -> (i32, i32, i32, i32) {
    sqlx::query_as("SELECT stock, available, held, sold FROM sales WHERE sku = $1")
        .bind(sku)
        .fetch_one(pool)
        .await
        .expect("sale row")
}

/// The id of the live sale with this sku.
/// The `id` of a created resource's JSON, as a UUID.
pub fn id_of(created: &Value) -> Uuid {
    created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("id")
}

pub async fn live_sale_id(store: &Store, sku: &str) -> Uuid {
    store
        .resolve_sale(sku)
        .await
        .expect("resolve")
        .expect("a live sale with this sku")
        .id
}

/// One Server-Sent Events message.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub event: String,
    pub id: String,
    pub data: Value,
}

type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send>>;

/// Reads an SSE response message by message.
pub struct SseReader {
    body: BodyStream,
    text: String,
}

impl SseReader {
    pub fn new(response: TestResponse) -> Self {
        use futures_util::StreamExt;
        Self {
            body: Box::pin(
                response
                    .0
                    .into_body()
                    .into_bytes_stream()
                    .map(|chunk| chunk.map(|bytes| bytes.to_vec())),
            ),
            text: String::new(),
        }
    }

    /// The next message, `None` once the server ended the stream; panics after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<SseMessage> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut message = SseMessage {
                    event: "message".into(),
                    id: String::new(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        message.event = value.to_string();
                    } else if let Some(value) = line.strip_prefix("id: ") {
                        message.id = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if !data.is_empty() {
                    message.data = serde_json::from_str(&data).expect("JSON data");
                    return Some(message);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no SSE message within {wait:?}"))?
                .expect("chunk");
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The first `count` messages of an SSE response, as (id, data).
pub async fn read_messages(response: TestResponse, count: usize) -> Vec<(String, Value)> {
    let mut reader = SseReader::new(response);
    let mut messages = Vec::new();
    while messages.len() < count {
        let message = reader
            .next(Duration::from_secs(10))
            .await
            .expect("the stream stays open");
        messages.push((message.id, message.data));
    }
    messages
}

/// A metric's value in the app's `/metrics` (the first sample whose line starts with
/// `name` followed by a space or a label set), -1 if absent.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let response = app.client.get("/metrics").send().await;
    let text = response.0.into_body().into_string().await.expect("metrics");
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = rest.rsplit(' ').next()?;
            (rest.starts_with(' ') || rest.starts_with('{')).then(|| value.parse().ok())?
        })
        .unwrap_or(-1.0)
}
