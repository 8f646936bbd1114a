//! Builds and runs the service: database, migrations, HTTP server, job runner, shutdown.
//!
//! Start-up waits a bounded time for a database that does not answer yet, then migrates
//! (unless a deploy step did). Shutdown is a drain: on the signal `/health` answers 503 and
//! streams end after a last message; the listener stays open `SHUTDOWN_DELAY_MS` more (load
//! balancers take the instance out), then closes, and requests in flight get
//! `SHUTDOWN_DRAIN_MS` to finish; then the workers stop (the runner finishes the jobs in
//! hand and so ends their leases; webhook rounds stop claiming), and the pools close.
//!
//! `anyhow` lives here and in the workers only; request paths use typed errors.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::Server;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use tokio::sync::watch;

mod settings;

pub use settings::token_settings;

use crate::api::ApiState;
use crate::api::auth::AdminKey;
use crate::api::buyer_auth::BuyerTokens;
use crate::api::drain::Drain;
use crate::api::rate_limit::{self, KeyedLimiter, RateLimits};
use crate::api::view_cache::SaleViewCache;
use crate::config::Config;
use crate::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use crate::live::{LiveConfig, LiveHub};
use crate::metrics::Metrics;
use crate::status::RunnerHealth;
use crate::store::{self, JoinBatcher, PurchaseBatcher, Store};
use crate::worker::{Runner, RunnerConfig, ServiceJobs, WebhookConfig, WebhookSender, supervise};

/// Name of the database the service uses on its embedded cluster.
const EMBEDDED_DATABASE: &str = "flashsale";
/// Connections of the session pool (DATABASE_SESSION_URL): the live hub's LISTEN and the job
/// runner's.
const SESSION_POOL_SIZE: u32 = 2;
/// How often start-up tries a database that does not answer yet.
const DB_STARTUP_RETRY: Duration = Duration::from_secs(1);

/// A service bound to its port and connected to its database, ready to run.
pub struct Application {
    acceptor: TcpAcceptor,
    store: Store,
    /// On the reserved pool: the job runner and the health check, which a flood of buyers
    /// on the main pool cannot starve.
    reserved: Store,
    edge: crate::api::EdgeLimits,
    limits: Arc<RateLimits>,
    admin_key: AdminKey,
    tokens: Arc<BuyerTokens>,
    group_commit: bool,
    view_cache: Duration,
    metrics: Metrics,
    runner_config: RunnerConfig,
    webhook_config: WebhookConfig,
    /// How long events and finished webhook deliveries are kept.
    retention: Duration,
    live_config: LiveConfig,
    /// The private cluster we started, stopped after the server and workers.
    embedded: Option<EmbeddedPostgres>,
    lifecycle: crate::config::Lifecycle,
}

impl Application {
    /// Connects (starting the embedded cluster when no `DATABASE_URL` is set), migrates and
    /// binds the port (0 picks a free one; see [`port`](Self::port)).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        config.check_exposure().map_err(anyhow::Error::msg)?;
        let (admin_key, is_default) = config.admin_key();
        if is_default {
            tracing::warn!(
                "ADMIN_API_KEY is not set: the admin API accepts the built-in development key. \
                 Set ADMIN_API_KEY before exposing this service."
            );
        }
        let tokens = BuyerTokens::new(&settings::token_settings(config));
        if !tokens.enabled() {
            tracing::warn!(
                "BUYER_TOKEN_SECRET is not set: buyer identity is NOT verified; any client can \
                 buy, confirm or release in any userId's name. Set it before going live."
            );
        }
        let (url, embedded) = match config.database_url() {
            Some(url) => (url.to_string(), None),
            None => {
                let cluster = start_embedded(config).await?;
                (cluster.url(EMBEDDED_DATABASE), Some(cluster))
            }
        };
        let pooler = settings::pooler(config).map_err(anyhow::Error::msg)?;
        let wait = config.lifecycle.db_startup_wait();
        let pool = connect_waiting(&url, config.db_pool_size, pooler, wait)
            .await
            .context("Failed to connect to Postgres")?;
        let reserved_size = config.db_reserved_pool_size.max(2);
        let reserved_pool = connect_waiting(&url, reserved_size, pooler, wait)
            .await
            .context("Failed to connect the reserved pool to Postgres")?;
        // LISTEN (the live hub's and the runner's) on a session of its own when one is
        // configured apart; else on the main and the reserved pool, as always.
        let session_pool = match config.database_session_url() {
            Some(session_url) => Some(
                connect_waiting(session_url, SESSION_POOL_SIZE, store::Pooler::None, wait)
                    .await
                    .context("Failed to connect to Postgres on DATABASE_SESSION_URL")?,
            ),
            None => None,
        };
        if config.lifecycle.migrate_on_start {
            store::migrate(config.database_session_url().unwrap_or(&url))
                .await
                .context("Failed to run migrations")?;
        } else {
            let pending = store::pending_migrations(session_pool.as_ref().unwrap_or(&pool))
                .await
                .context("Failed to read the applied migrations")?;
            anyhow::ensure!(
                pending.is_empty(),
                "the database lacks migrations {pending:?} this release needs: run \
                 `flashsale migrate` first (MIGRATE_ON_START=false)"
            );
        }
        let limits = Arc::new(RateLimits {
            per_user: KeyedLimiter::new(
                config.rate_limit_per_user,
                config.rate_limit_per_user_burst,
            ),
            per_ip: KeyedLimiter::new(config.rate_limit_per_ip, config.rate_limit_per_ip_burst),
            trust_forwarded_for: config.trust_forwarded_for,
        });
        let acceptor = TcpListener::bind(format!("{}:{}", config.host, config.port))
            .into_acceptor()
            .await
            .with_context(|| format!("Failed to bind {}:{}", config.host, config.port))?;
        let metrics = Metrics::new().context("Failed to set up metrics")?;
        let waited = |pool: &str| metrics.pool_wait.with_label_values(&[pool]);
        let mut store = Store::new(pool)
            .behind(pooler, session_pool)
            .with_pool_wait(waited("main"));
        match settings::secret_box(config).map_err(anyhow::Error::msg)? {
            Some(secrets) => {
                store = store.with_secret_box(Arc::new(secrets));
                let resealed = store
                    .reseal_webhook_secrets()
                    .await
                    .context("Failed to seal the webhook secrets under WEBHOOK_SECRET_KEY")?;
                if resealed > 0 {
                    tracing::info!(
                        endpoints = resealed,
                        "webhook secrets sealed under the current key"
                    );
                }
            }
            None => tracing::warn!(
                "WEBHOOK_SECRET_KEY is not set: webhook secrets are stored in plain text, so a \
                 database backup can sign deliveries. Set it (openssl rand -hex 32)."
            ),
        }
        Ok(Self {
            acceptor,
            // One view of an outage, and one probe, for both pools.
            reserved: store
                .beside(reserved_pool)
                .with_pool_wait(waited("reserved")),
            store,
            edge: crate::api::EdgeLimits {
                answer_timeout: Duration::from_millis(config.db_timeout_ms.max(100)),
                max_in_flight: config.max_in_flight.max(1),
                max_body_bytes: config.max_body_bytes.max(1024),
            },
            limits,
            admin_key: AdminKey::new(admin_key),
            tokens: Arc::new(tokens),
            group_commit: config.group_commit,
            metrics,
            view_cache: Duration::from_millis(config.sale_view_cache_ms),
            runner_config: RunnerConfig {
                poll_interval: Duration::from_millis(config.worker_poll_ms.max(10)),
                ..RunnerConfig::default()
            },
            webhook_config: settings::webhook_config(config),
            retention: config.event_retention(),
            live_config: settings::live_config(config),
            embedded,
            lifecycle: config.lifecycle.clone(),
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().map(|a| a.port()))
            .unwrap_or(0)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish, stops the job runner and the embedded cluster.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (stop_workers, workers_stopped) = watch::channel(false);
        let health = RunnerHealth::default();
        let runner = Runner::new(
            self.reserved.clone(),
            ServiceJobs::new(self.reserved.clone(), self.retention)
                .with_metrics(self.metrics.clone()),
            self.runner_config.clone(),
        )
        .with_metrics(self.metrics.clone())
        .with_health(health.clone());
        let worker = tokio::spawn(supervise(
            "job runner",
            move |stop| runner.clone().run(stop),
            workers_stopped.clone(),
        ));
        // Deliveries use the main pool: they are background work, and the reserved pool is
        // kept small for the runner and the health check.
        let webhooks = WebhookSender::new(self.store.clone(), self.webhook_config.clone())
            .context("Failed to set up the webhook client")?
            .with_metrics(self.metrics.clone());
        let sender = tokio::spawn(supervise(
            "webhook sender",
            move |stop| webhooks.clone().run(stop),
            workers_stopped.clone(),
        ));
        // The live hub's LISTEN connection comes from the main pool, like the streams' reads
        // (from the session pool when DATABASE_SESSION_URL is set).
        let live = LiveHub::new(self.store.clone(), self.metrics.clone(), self.live_config);
        let listener = {
            let live = live.clone();
            tokio::spawn(supervise(
                "live listener",
                move |stop| live.clone().run_listener(stop),
                workers_stopped.clone(),
            ))
        };
        let gauges = {
            let (store, metrics) = (self.reserved.clone(), self.metrics.clone());
            let every = self.lifecycle.metrics_refresh();
            tokio::spawn(supervise(
                "metrics gauges",
                move |stop| {
                    crate::worker::refresh_gauges(store.clone(), metrics.clone(), every, stop)
                },
                workers_stopped.clone(),
            ))
        };
        let (drain_switch, drain) = Drain::new();
        rate_limit::spawn_pruner(&self.limits);
        let app = crate::api::app(ApiState {
            store: self.store.clone(),
            reserved: self.reserved.clone(),
            runner_health: health,
            limits: self.limits.clone(),
            admin_key: self.admin_key,
            tokens: self.tokens,
            purchases: PurchaseBatcher::new(
                self.store.clone(),
                self.group_commit,
                self.edge.answer_timeout,
            )
            .with_metrics(self.metrics.clone()),
            joins: JoinBatcher::new(self.store.clone(), self.edge.answer_timeout),
            views: Arc::new(SaleViewCache::new(self.view_cache)),
            metrics: self.metrics.clone(),
            edge: self.edge,
            webhook_retry_for: self.webhook_config.retry_for,
            live,
            drain,
            metrics_token: self.lifecycle.metrics_token().map(AdminKey::new),
        });
        tracing::info!(
            port = self.acceptor.local_addr().first().map(ToString::to_string),
            "listening; Swagger UI at /docs"
        );
        let (delay, drain_for) = (
            self.lifecycle.shutdown_delay(),
            self.lifecycle.shutdown_drain(),
        );
        let draining = async move {
            shutdown.await;
            drain_switch.start();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                drain_ms = drain_for.as_millis() as u64,
                "draining: /health answers 503, streams closed; the listener closes after the delay"
            );
            tokio::time::sleep(delay).await;
        };
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, draining, Some(drain_for))
            .await;
        tracing::info!("HTTP server stopped; stopping the job runner");
        let _ = stop_workers.send(true);
        if let Err(err) = worker.await {
            tracing::error!(error = %err, "job runner supervisor panicked");
        }
        if let Err(err) = sender.await {
            tracing::error!(error = %err, "webhook sender supervisor panicked");
        }
        if let Err(err) = listener.await {
            tracing::error!(error = %err, "live listener supervisor panicked");
        }
        if let Err(err) = gauges.await {
            tracing::error!(error = %err, "metrics gauges supervisor panicked");
        }
        self.store.pool().close().await;
        self.reserved.pool().close().await;
        if let Some(cluster) = self.embedded {
            tokio::task::spawn_blocking(move || cluster.stop()).await?;
            tracing::info!("embedded Postgres stopped");
        }
        served.context("HTTP server failed")
    }
}

async fn start_embedded(config: &Config) -> anyhow::Result<EmbeddedPostgres> {
    let options = EmbeddedOptions {
        data_dir: config.data_dir.join("pg"),
        durable: true,
        remove_on_stop: false,
    };
    tracing::info!(data_dir = %options.data_dir.display(), "DATABASE_URL is not set: starting the embedded Postgres");
    let cluster = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
        .await?
        .context("Failed to start the embedded Postgres")?;
    store::create_database_if_missing(&cluster.url("postgres"), EMBEDDED_DATABASE)
        .await
        .context("Failed to create the flashsale database")?;
    Ok(cluster)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}

/// Connects a pool, trying again every second for up to `wait` while the database does not
/// answer (it may start after the service); the last error when it never does.
async fn connect_waiting(
    url: &str,
    size: u32,
    pooler: store::Pooler,
    wait: Duration,
) -> Result<sqlx::PgPool, sqlx::Error> {
    let started = std::time::Instant::now();
    loop {
        match store::connect_through(url, size, pooler).await {
            Ok(pool) => return Ok(pool),
            Err(err) if started.elapsed() + DB_STARTUP_RETRY < wait => {
                tracing::warn!(error = %err, "the database does not answer yet; trying again");
                tokio::time::sleep(DB_STARTUP_RETRY).await;
            }
            Err(err) => return Err(err),
        }
    }
}
