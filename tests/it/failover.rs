//! A route to the database that moves (issue 18): when the service's connections land on a
//! read-only server (a hot standby behind DNS, a pooler or a load balancer that keeps old
//! sessions), buyers hear a retry-safe 503, `/health` fails, and once the route leads back
//! to a primary the service recovers by itself, without a restart.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::api::EdgeLimits;
use flashsale::api::buyer_auth::BuyerTokens;
use flashsale::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use flashsale::store::{self, Store};
use poem::http::StatusCode;
use serde_json::json;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::support::{ADMIN_KEY, Limits, client_with_edge, code, fresh_database, purchase};

/// A TCP route to Postgres whose upstream can be switched, like DNS or a load balancer
/// pointing somewhere else; it may also end every session in flight (a failover that
/// kills the old primary's connections).
struct Route {
    port: u16,
    upstream: Arc<AtomicU16>,
    sessions: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Route {
    async fn to(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let upstream = Arc::new(AtomicU16::new(upstream_port));
        let sessions: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (target, open) = (upstream.clone(), sessions.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = target.load(Ordering::SeqCst);
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let session = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                open.lock().expect("sessions").push(session.abort_handle());
            }
        });
        Self {
            port,
            upstream,
            sessions,
        }
    }

    /// New connections go to `port` from now on; with `end_sessions`, every open one is cut.
    fn switch(&self, port: u16, end_sessions: bool) {
        self.upstream.store(port, Ordering::SeqCst);
        if end_sessions {
            for session in self.sessions.lock().expect("sessions").drain(..) {
                session.abort();
            }
        }
    }
}

/// A throwaway cluster of its own (a primary), in a fresh folder.
async fn start_cluster(data_dir: std::path::PathBuf) -> EmbeddedPostgres {
    let options = EmbeddedOptions {
        data_dir,
        durable: false,
        remove_on_stop: true,
    };
    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
        .await
        .expect("join")
        .expect("a cluster starts")
}

fn temp_dir(role: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "flashsale-{role}-{}-{}",
        std::process::id(),
        Uuid::new_v4().simple()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_standby_answers_503_and_the_service_recovers_when_it_leads_back() {
    // A primary with the service's database, and a hot standby streaming from it.
    let primary = start_cluster(temp_dir("primary")).await;
    store::create_database_if_missing(&primary.url("postgres"), "flashsale")
        .await
        .expect("create the database");
    let direct = store::connect(&primary.url("flashsale"), 2)
        .await
        .expect("connect");
    store::MIGRATOR.run(&direct).await.expect("migrate");
    let primary = Arc::new(primary);
    let source = primary.clone();
    let standby_dir = temp_dir("standby");
    let standby = tokio::task::spawn_blocking(move || {
        source.base_backup(&standby_dir)?;
        EmbeddedPostgres::start(&EmbeddedOptions {
            data_dir: standby_dir,
            durable: false,
            remove_on_stop: true,
        })
    })
    .await
    .expect("join")
    .expect("the standby starts");

    let route = Route::to(primary.port()).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/flashsale", route.port);
    let store = Store::new(store::connect(&url, 4).await.expect("connect"));
    let edge = EdgeLimits {
        db_timeout: Duration::from_secs(1),
        ..EdgeLimits::default()
    };
    let client = client_with_edge(store, Limits::off(), BuyerTokens::disabled(), edge);
    let created = client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": "ha", "name": "Failover", "stock": 100}))
        .send()
        .await;
    assert_eq!(created.0.status(), StatusCode::CREATED);
    assert_eq!(purchase(&client, "ha", "u0").await.0, StatusCode::CREATED);

    // The standby has replayed the purchase: a faithful copy, only read-only.
    let mut replica = sqlx::PgConnection::connect(&standby.url("flashsale"))
        .await
        .expect("connect to the standby");
    let mut replayed = 0;
    for _ in 0..50 {
        replayed = sqlx::query_scalar("SELECT count(*) FROM purchases")
            .fetch_one(&mut replica)
            .await
            .expect("read the standby");
        if replayed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replayed, 1_i64, "the standby replays the primary");
    replica.close().await.expect("close");

    // The route moves to the standby and the old sessions die.
    route.switch(standby.port(), true);
    for attempt in 0..4 {
        let response = client
            .post("/api/v1/sales/ha/purchases")
            .body_json(&json!({"userId": format!("during-{attempt}")}))
            .send()
            .await;
        let retry_after = response.0.headers().get("retry-after").cloned();
        let (status, body) = crate::support::status_and_json(response).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "attempt {attempt}: {body}"
        );
        assert!(retry_after.is_some(), "503 carries Retry-After");
    }
    let health = client.get("/health").send().await;
    assert_eq!(health.0.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The route is fixed (no session is cut): purchases come back without a restart.
    route.switch(primary.port(), false);
    let fixed = Instant::now();
    let mut last = (StatusCode::OK, json!(null));
    while fixed.elapsed() < Duration::from_secs(10) {
        last = purchase(&client, "ha", "after").await;
        assert_ne!(last.0, StatusCode::INTERNAL_SERVER_ERROR, "{}", last.1);
        if last.0 == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, StatusCode::CREATED, "{}", last.1);
    assert!(
        fixed.elapsed() < Duration::from_secs(5),
        "back after {:?}",
        fixed.elapsed()
    );
    let health = client.get("/health").send().await;
    assert_eq!(health.0.status(), StatusCode::OK);

    direct.close().await;
    tokio::task::spawn_blocking(move || {
        standby.stop();
        primary.stop();
    })
    .await
    .expect("stop the clusters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_that_turns_read_only_is_closed_not_kept() {
    // One connection, so every purchase uses the one that turns read-only.
    let pool = fresh_database(1).await;
    let client = crate::support::client_for(Store::new(pool.clone()), Limits::off());
    let created = client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": "ro", "name": "Read-only", "stock": 10}))
        .send()
        .await;
    assert_eq!(created.0.status(), StatusCode::CREATED);
    assert_eq!(purchase(&client, "ro", "u0").await.0, StatusCode::CREATED);
    let backend: i32 = {
        let mut conn = pool.acquire().await.expect("the pooled connection");
        sqlx::query("SET default_transaction_read_only = on")
            .execute(&mut *conn)
            .await
            .expect("make the session read-only");
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
            .expect("pid")
    };

    let response = client
        .post("/api/v1/sales/ro/purchases")
        .body_json(&json!({"userId": "u1"}))
        .send()
        .await;
    let retry_after = response.0.headers().get("retry-after").cloned();
    let (status, body) = crate::support::status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        "{body}"
    );
    assert!(retry_after.is_some(), "503 carries Retry-After");

    // The read-only session is gone, and the retry gets a fresh, writable connection.
    let (status, body) = purchase(&client, "ro", "u1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let alive: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(backend)
            .fetch_one(&pool)
            .await
            .expect("pg_stat_activity");
    assert!(!alive, "the read-only session was closed");
}

/// Everything logged at WARN and above, from every test of this binary while it runs (the
/// first caller installs the subscriber; lines are told apart by sale id).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let installed = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        assert!(installed.is_ok(), "no other test installs a subscriber");
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_logs_its_sqlstate_once_not_once_per_buyer() {
    let logs = captured_logs();
    let pool = fresh_database(1).await;
    let client = Arc::new(crate::support::client_for(
        Store::new(pool.clone()),
        Limits::off(),
    ));
    let created = client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": "logged", "name": "Logs", "stock": 100}))
        .send()
        .await;
    let (_, sale) = crate::support::status_and_json(created).await;
    let sale_id = sale["id"].as_str().expect("id").to_string();
    assert_eq!(
        purchase(&client, "logged", "u0").await.0,
        StatusCode::CREATED
    );
    {
        let mut conn = pool.acquire().await.expect("the pooled connection");
        sqlx::query("SET default_transaction_read_only = on")
            .execute(&mut *conn)
            .await
            .expect("make the session read-only");
    }

    // Eight buyers at once: the first batch fails on the read-only session.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let buyers: Vec<_> = (0..8)
        .map(|i| {
            let (client, start) = (client.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                purchase(&client, "logged", &format!("buyer-{i}")).await.0
            })
        })
        .collect();
    let mut refused = 0;
    for buyer in buyers {
        let status = buyer.await.expect("buyer");
        assert!(
            status == StatusCode::CREATED || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        refused += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(refused >= 1, "the batch on the read-only session failed");

    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).to_string();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&sale_id)).collect();
    let failures: Vec<&&str> = ours
        .iter()
        .filter(|l| l.contains("purchase batch failed"))
        .collect();
    assert!(!failures.is_empty(), "{text}");
    for line in &failures {
        assert!(line.contains("25006"), "the SQLSTATE: {line}");
        assert!(
            line.contains("read-only transaction"),
            "the message: {line}"
        );
    }
    // One line per failed batch, with how many buyers it failed; none per buyer.
    let callers: usize = failures
        .iter()
        .filter_map(|l| {
            l.split("callers=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(callers, refused, "{text}");
    let repeated = text
        .lines()
        .filter(|l| l.contains("25006") && !l.contains("purchase batch failed"))
        .count();
    assert_eq!(repeated, 0, "the cause is logged once: {text}");
}
