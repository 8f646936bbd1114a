//! A route to the database that moves (issue 18): when the service's connections land on a
//! read-only server (a hot standby behind DNS, a pooler or a load balancer that keeps old
//! sessions), buyers hear a retry-safe 503, `/health` fails, and once the route leads back
//! to a primary the service recovers by itself, without a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use flashsale::live::{LiveConfig, LiveHub};
use flashsale::metrics::Metrics;
use flashsale::store::{self, Store};
use poem::http::StatusCode;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;

use crate::route::{Route, captured_logs};
use crate::support::{
    ADMIN_KEY, Limits, code, fresh_database, impatient_client_with_sale, purchase,
};

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
    let client = impatient_client_with_sale(store, "ha", 100).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_listener_logs_an_outage_once_and_the_recovery_once() {
    use tracing::Instrument;
    let logs = captured_logs();
    let direct = fresh_database(2).await;
    let options = direct.connect_options();
    let route = Route::to(options.get_port()).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        options.get_username(),
        route.port,
        options.get_database().unwrap_or("postgres")
    );
    let store = Store::new(store::connect(&url, 2).await.expect("connect"));
    let hub = LiveHub::new(
        store,
        Metrics::new().expect("metrics"),
        LiveConfig::default(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tag = Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("listener", tag = %tag);
    let listener = tokio::spawn(hub.run_listener(stopped).instrument(span));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The database goes away for several of the listener's retries, then comes back.
    let before = route.accepted();
    route.switch(crate::route::dead_port(), true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(route.accepted() >= before + 3, "it kept trying");
    route.switch(options.get_port(), false);
    let ours = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.contains(&tag))
            .map(String::from)
            .collect()
    };
    let back = Instant::now();
    let lines = loop {
        let lines = ours(&String::from_utf8_lossy(&logs.lock().expect("logs")));
        if lines.iter().any(|line| line.contains("listening again")) {
            break lines;
        }
        assert!(back.elapsed() < Duration::from_secs(40), "{lines:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = stop.send(true);
    listener
        .await
        .expect("join")
        .expect("the listener ends cleanly");

    let count = |what: &str| lines.iter().filter(|line| line.contains(what)).count();
    assert_eq!(count("lost the database"), 1, "{lines:?}");
    assert_eq!(count("listening again"), 1, "{lines:?}");
    assert_eq!(count("ERROR"), 0, "{lines:?}");
}
