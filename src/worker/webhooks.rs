//! The webhook sender: at-least-once delivery of the outbox to every registered endpoint.
//!
//! One loop per endpoint on every instance. A round fans the endpoint's new events out into
//! delivery rows ([`Store::fan_out`]), claims due deliveries with a lease (SKIP LOCKED, so
//! instances share the work and no delivery is sent twice at once), sends them at most
//! `concurrency` at a time, and records every result in one statement. Nothing here runs
//! inside a purchase's transaction: the outbox absorbs a burst and the sender catches up.
//!
//! Each request carries the Standard Webhooks headers (`webhook-id` = the event's id, the
//! same on every redelivery; `webhook-timestamp`; `webhook-signature`, signed by the
//! `standardwebhooks` crate, with the previous secret too for a while after a rotation). A
//! 2xx is success; anything else is retried with exponential backoff and jitter until the
//! retry window closes, then the delivery is failed: listed by the admin API, counted in
//! the metrics, and replayable. No delivery goes to an internal address (`address.rs`).

mod address;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{AttemptResult, EndpointTarget, Store};
use address::{AddressPolicy, GuardedResolver};

/// Events fanned out per round and endpoint.
const FAN_OUT_BATCH: i64 = 2000;
/// How often the sender looks for new or deleted endpoints and counts the deliveries.
const ENDPOINT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// An endpoint loop's memory between rounds.
#[derive(Default)]
struct LoopState {
    target: Option<(Arc<EndpointTarget>, Instant)>,
    last_fan_out: Option<Instant>,
    /// The last claim was full: more deliveries are waiting than one round sends.
    backlog: bool,
}

/// How long an endpoint's address and secrets are used before they are read again.
const TARGET_TTL: Duration = Duration::from_secs(1);
/// Fan-out runs at least this often, even while a backlog is being sent.
const FAN_OUT_INTERVAL: Duration = Duration::from_millis(250);
/// Pause of an endpoint's loop after a failed round.
const ERROR_PAUSE: Duration = Duration::from_secs(2);
/// Deliveries claimed per concurrency slot in one round.
const CLAIM_PER_SLOT: usize = 8;
/// Error text kept per delivery.
const MAX_ERROR_CHARS: usize = 300;

/// How the sender behaves.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Requests in flight at once per endpoint on this instance.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// For the whole answer, after connecting.
    pub answer_timeout: Duration,
    /// How long a delivery is retried before it fails for good.
    pub retry_for: Duration,
    /// Sleep of an endpoint's loop when it has nothing to do.
    pub idle_poll: Duration,
    /// The first retry waits about this long; each attempt doubles it, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Internal ranges deliveries may reach anyway (`WEBHOOK_ALLOWED_NETWORKS`).
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            connect_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(10),
            retry_for: crate::domain::events::DEFAULT_WEBHOOK_RETRY_FOR,
            idle_poll: Duration::from_millis(200),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            allowed_networks: Vec::new(),
        }
    }
}

impl WebhookConfig {
    /// Deliveries claimed per round: several requests per slot, so a round (two commits)
    /// carries many deliveries to a fast receiver.
    fn claim_size(&self) -> i64 {
        (self.concurrency.max(1) * CLAIM_PER_SLOT) as i64
    }

    /// How long after its claim a round may still start a request: whatever starts by then
    /// ends (connect + answer timeouts) before the lease runs out. Deliveries a slow
    /// receiver leaves unstarted by then go back unsent, to be claimed again at once.
    fn start_window(&self) -> Duration {
        self.connect_timeout + self.answer_timeout
    }

    /// How long a claim is ours: the start window plus one whole attempt plus a margin, so
    /// a delivery is never claimed again while its request may still be in flight. It is
    /// also how long the deliveries a dead instance had claimed wait (35 s with the default
    /// timeouts).
    pub fn lease(&self) -> Duration {
        self.start_window() + self.connect_timeout + self.answer_timeout + Duration::from_secs(5)
    }
}

/// Sends the outbox to the registered endpoints until shut down.
#[derive(Clone)]
pub struct WebhookSender {
    store: Store,
    client: reqwest::Client,
    config: WebhookConfig,
    policy: Arc<AddressPolicy>,
    metrics: Option<Metrics>,
}

impl WebhookSender {
    pub fn new(store: Store, config: WebhookConfig) -> anyhow::Result<Self> {
        let policy = Arc::new(AddressPolicy::new(config.allowed_networks.clone()));
        let client = reqwest::Client::builder()
            // Host names resolve to checked addresses only (see `address.rs`), and the
            // connection goes straight to one of them: through an HTTP proxy from the
            // environment the proxy would resolve the name, past the check.
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .timeout(config.connect_timeout + config.answer_timeout)
            // A receiver answers; it does not send us elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flashsale-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            client,
            config,
            policy,
            metrics: None,
        })
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs one loop per endpoint until `shutdown`; returns after they have stopped.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let sender = Arc::new(self);
        let mut loops: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
        while !*shutdown.borrow() {
            loops.retain(|_, task| !task.is_finished());
            match sender.store.webhook_ids().await {
                Ok(ids) => {
                    for id in ids {
                        loops.entry(id).or_insert_with(|| {
                            tokio::spawn(sender.clone().endpoint_loop(id, shutdown.clone()))
                        });
                    }
                }
                Err(err) => {
                    static LOGGED: crate::telemetry::Throttle =
                        crate::telemetry::Throttle::new(Duration::from_secs(30));
                    if LOGGED.ready() {
                        tracing::warn!(error = %err, "could not list webhook endpoints (the next 30 s: quiet)");
                    }
                }
            }
            sender.count_deliveries().await;
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(ENDPOINT_SCAN_INTERVAL) => {}
            }
        }
        for (_, task) in loops {
            let _ = task.await;
        }
        Ok(())
    }

    async fn count_deliveries(&self) {
        let Some(metrics) = &self.metrics else { return };
        if let Ok((pending, failed)) = self.store.count_deliveries().await {
            metrics.webhook_pending.set(pending);
            metrics.webhook_failed.set(failed);
        }
    }

    /// Delivers one endpoint's events until it is deleted or the service stops.
    async fn endpoint_loop(
        self: Arc<Self>,
        endpoint_id: Uuid,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut state = LoopState::default();
        while !*shutdown.borrow() {
            let pause = match self.round(endpoint_id, &mut state).await {
                Ok(Some(true)) => continue,
                Ok(Some(false)) => self.config.idle_poll,
                Ok(None) => return,
                Err(err) => {
                    // The database is in trouble: try again, but not at the idle pace (and
                    // not with a warning five times a second per endpoint).
                    tracing::warn!(endpoint = %endpoint_id, error = format!("{err:#}"), "webhook round failed");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One round for an endpoint: fan out (when due), claim, send, record. `None` when the
    /// endpoint is gone; `Some(true)` when there was work (go again at once).
    async fn round(
        &self,
        endpoint_id: Uuid,
        state: &mut LoopState,
    ) -> anyhow::Result<Option<bool>> {
        let Some(target) = self.target(endpoint_id, state).await? else {
            return Ok(None);
        };
        // While a full claim's worth is waiting, fanning out more only adds rows nobody can
        // send yet: do it when the backlog runs low, or every FAN_OUT_INTERVAL anyway.
        let mut fanned = 0;
        if !state.backlog
            || state
                .last_fan_out
                .is_none_or(|at| at.elapsed() >= FAN_OUT_INTERVAL)
        {
            fanned = self
                .store
                .fan_out(endpoint_id, FAN_OUT_BATCH, self.config.retry_for)
                .await?;
            state.last_fan_out = Some(Instant::now());
        }
        let claimed = self
            .store
            .claim_deliveries(endpoint_id, self.config.claim_size(), self.config.lease())
            .await?;
        state.backlog = claimed.len() as i64 == self.config.claim_size();
        if claimed.is_empty() {
            return Ok(Some(fanned > 0));
        }
        let start_by = Instant::now() + self.config.start_window();
        let results: Vec<AttemptResult> = futures_util::stream::iter(claimed)
            .map(|delivery| self.attempt(&target, delivery, start_by))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        let tally = self.store.record_attempts(&results).await?;
        if let Some(metrics) = &self.metrics {
            let attempts = &metrics.webhook_attempts;
            attempts
                .with_label_values(&["delivered"])
                .inc_by(tally.delivered);
            attempts
                .with_label_values(&["retrying"])
                .inc_by(tally.retrying);
            attempts.with_label_values(&["failed"]).inc_by(tally.failed);
        }
        if tally.failed > 0 {
            tracing::error!(endpoint = %endpoint_id, failed = tally.failed,
                "webhook deliveries failed for good; replay them from the admin API");
        }
        Ok(Some(true))
    }

    /// The endpoint's address and secrets, read again at most every [`TARGET_TTL`] (a
    /// rotation or a delete takes effect within it). `None` once it is deleted.
    async fn target(
        &self,
        endpoint_id: Uuid,
        state: &mut LoopState,
    ) -> anyhow::Result<Option<Arc<EndpointTarget>>> {
        if let Some((target, read_at)) = &state.target
            && read_at.elapsed() < TARGET_TTL
        {
            return Ok(Some(target.clone()));
        }
        let target = self.store.webhook_target(endpoint_id).await?.map(Arc::new);
        state.target = target.clone().map(|target| (target, Instant::now()));
        Ok(target)
    }
}
