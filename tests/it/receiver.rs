//! A real HTTP webhook receiver for the tests: verifies every delivery's Standard Webhooks
//! signature with the `standardwebhooks` crate, records it, and can be told to fail a share
//! of requests, to be down, or to be slow; it also notices a delivery sent twice at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale::store::Store;
use flashsale::worker::{WebhookConfig, WebhookSender};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{EndpointExt, Request, Route, Server, handler, http::StatusCode};
use serde_json::Value;
use tokio::sync::watch;

/// One request the receiver answered 2xx.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub webhook_id: String,
    pub body: Value,
}

#[derive(Default)]
pub struct ReceiverState {
    pub secret: Mutex<Option<String>>,
    pub delivered: Mutex<Vec<Delivered>>,
    /// Requests refused on purpose (failures, down).
    pub refused: AtomicUsize,
    /// Requests whose signature did not verify (answered 400).
    pub unverified: AtomicUsize,
    /// Share of requests to answer 500, in percent.
    pub fail_percent: AtomicUsize,
    pub down: AtomicBool,
    /// Each request takes this long (milliseconds) before answering.
    pub delay_ms: AtomicUsize,
    in_flight: Mutex<HashSet<String>>,
    /// Times a delivery arrived while the same webhook-id was still in flight.
    pub overlaps: AtomicUsize,
}

pub struct Receiver {
    pub url: String,
    pub state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind the receiver");
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().map(|a| a.port()))
            .expect("port");
        let app = Route::new().at("/hook", receive).data(state.clone());
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
        }
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.state.delivered.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what was delivered, up to `limit`.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Delivered]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if done(&self.delivered()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(&self.delivered())
    }
}

#[handler]
async fn receive(request: &Request, body: Vec<u8>, state: Data<&Arc<ReceiverState>>) -> StatusCode {
    let id = request.header("webhook-id").unwrap_or_default().to_string();
    if !state.in_flight.lock().expect("lock").insert(id.clone()) {
        state.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    let status = answer(request, &body, &state, &id).await;
    state.in_flight.lock().expect("lock").remove(&id);
    status
}

async fn answer(request: &Request, body: &[u8], state: &ReceiverState, id: &str) -> StatusCode {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    if state.down.load(Ordering::SeqCst)
        || fastrand::usize(0..100) < state.fail_percent.load(Ordering::SeqCst)
    {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let secret = state
        .secret
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or_default();
    let verified = standardwebhooks::Webhook::new(&secret)
        .and_then(|hook| hook.verify(body, request.headers()))
        .is_ok();
    if !verified {
        state.unverified.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    state.delivered.lock().expect("lock").push(Delivered {
        webhook_id: id.to_string(),
        body,
    });
    StatusCode::NO_CONTENT
}

/// A running webhook sender (one "instance"); stops when dropped.
pub struct RunningSender {
    stop: watch::Sender<bool>,
}

impl Drop for RunningSender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Quick retries, so the tests do not wait for real backoff.
pub fn fast_config() -> WebhookConfig {
    WebhookConfig {
        concurrency: 8,
        connect_timeout: Duration::from_secs(2),
        answer_timeout: Duration::from_secs(5),
        idle_poll: Duration::from_millis(20),
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        // The test receivers listen on this host.
        allowed_networks: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..WebhookConfig::default()
    }
}

pub fn start_sender(store: Store, config: WebhookConfig) -> RunningSender {
    let (stop, stopped) = watch::channel(false);
    let sender = WebhookSender::new(store, config).expect("sender");
    tokio::spawn(sender.run(stopped));
    RunningSender { stop }
}
