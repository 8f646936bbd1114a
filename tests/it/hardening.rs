//! Hostile input, database trouble and unsafe defaults: each gets a fast, honest answer with
//! a code, never a 500, a hang or a start on an exposed address with a development key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flashsale::store::{self, Store};
use poem::http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    ADMIN_KEY, code, fresh_database, impatient_client_with_sale, purchase, spawn_app,
    status_and_json,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_16_kib_is_413_before_it_is_read_whole() {
    let app = spawn_app().await;
    let big = format!("{{\"userId\": \"{}\"}}", "x".repeat(17 * 1024));
    let response = app
        .client
        .post("/api/v1/sales/any/purchases")
        .content_type("application/json")
        .body(big)
        .send()
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    // Without a Content-Length (chunked), the cap still holds.
    let chunks = futures_like_stream(40 * 1024);
    let response = app
        .client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .content_type("application/json")
        .body(poem::Body::from_async_read(chunks))
        .send()
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
}

/// A body of `len` bytes with no declared length.
fn futures_like_stream(len: usize) -> impl tokio::io::AsyncRead + Send + 'static {
    std::io::Cursor::new(vec![b' '; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_out_of_range_times_are_400_with_a_code() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/sales/a%00b",
        "/api/v1/sales/a%0Ab/purchases/u1",
        "/api/v1/sales/sku/queue/u%00ser",
        "/api/v1/admin/sales?limit=1%00",
    ] {
        let response = app
            .client
            .get(path)
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await;
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{path}"
        );
    }
    for bad in [
        json!({"sku": "t1", "name": "x", "stock": 1, "endsAt": "+275760-09-13T00:00:00Z"}),
        json!({"sku": "t2", "name": "x", "stock": 1, "startsAt": "0001-01-01T00:00:00Z"}),
        json!({"sku": "t3", "name": "nul\u{0}", "stock": 1}),
    ] {
        let response = app
            .client
            .post("/api/v1/admin/sales")
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .body_json(&bad)
            .send()
            .await;
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_method_is_405_with_an_allow_header() {
    let app = spawn_app().await;
    let response = app
        .client
        .put("/api/v1/sales/some-sku/queue/u1")
        .send()
        .await;
    assert_eq!(response.0.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response
        .0
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(allow.as_deref(), Some("DELETE, GET"));
}

/// A TCP proxy in front of Postgres whose link can be cut silently: once cut, bytes are
/// swallowed and never answered, and no connection is closed (a partition, not a reset).
async fn partitionable_store() -> (Store, Arc<AtomicBool>) {
    let real = fresh_database(2).await;
    let options = real.connect_options();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());
    let url = |port: u16| {
        format!(
            "postgres://{}@127.0.0.1:{port}/{}",
            options.get_username(),
            options.get_database().unwrap_or("postgres")
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cut = Arc::new(AtomicBool::new(false));
    let link = cut.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, link.clone()));
            tokio::spawn(pump(ro, wi, link.clone()));
        }
    });
    let pool = store::connect(&url(port), 4)
        .await
        .expect("connect through the proxy");
    (Store::new(pool), cut)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            return;
        }
        if cut.load(Ordering::SeqCst) {
            // Swallow everything from now on, and keep the socket open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_database_gets_fast_503s_with_retry_after_never_a_500() {
    let (store, cut) = partitionable_store().await;
    let client = impatient_client_with_sale(store, "cut", 10).await;
    assert_eq!(
        purchase(&client, "cut", "before").await.0,
        StatusCode::CREATED
    );

    cut.store(true, Ordering::SeqCst);
    // The pool's liveness ping on the idle connection goes unanswered, so the purchase is
    // never sent: a plain 503, retry-safe, not an unknown outcome.
    let started = Instant::now();
    let response = client
        .post("/api/v1/sales/cut/purchases")
        .body_json(&json!({"userId": "during"}))
        .send()
        .await;
    let retry_after = response.0.headers().get("retry-after").cloned();
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        "{body}"
    );
    assert_eq!(body.get("outcomeUnknown"), None, "{body}");
    assert!(retry_after.is_some(), "503 carries Retry-After");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered in {:?}",
        started.elapsed()
    );
    // Any route that needs the database answers the same way, within the deadline.
    for path in ["/api/v1/admin/sales/cut", "/api/v1/admin/sales"] {
        let started = Instant::now();
        let response = client
            .get(path)
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await;
        assert!(response.0.headers().get("retry-after").is_some(), "{path}");
        let (status, body) = status_and_json(response).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "{path}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn the_service_refuses_to_listen_on_0_0_0_0_with_the_development_key() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .env_clear()
        .env("HOST", "0.0.0.0")
        .env("PORT", "0")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .await
        .expect("run the binary");
    assert!(!output.status.success(), "it must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ADMIN_API_KEY"), "{stderr}");
    assert!(stderr.contains("BUYER_TOKEN_SECRET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_listed_and_can_be_requeued_and_queue_ticks_never_park() {
    let app = spawn_app().await;
    let sale = app.active_sale(1).await;
    let sale_id: uuid::Uuid = sale["id"].as_str().expect("id").parse().expect("uuid");
    sqlx::query(
        "INSERT INTO jobs (kind, sale_id, attempts, dead_at, last_error)
         VALUES ('sync_sale_state', $1, 25, now(), 'boom')",
    )
    .bind(sale_id)
    .execute(app.store.pool())
    .await
    .expect("a dead job");
    let (status, failed) = app.admin_get("/api/v1/admin/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let job = failed
        .as_array()
        .and_then(|jobs| jobs.first())
        .cloned()
        .expect("listed");
    assert_eq!(
        (job["kind"].as_str(), job["lastError"].as_str()),
        (Some("sync_sale_state"), Some("boom"))
    );
    let id = job["id"].as_i64().expect("id");
    let (status, body) = app
        .admin_post(&format!("/api/v1/admin/jobs/{id}/requeue"))
        .await;
    assert_eq!(
        (status, body["requeued"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, body) = app
        .admin_post(&format!("/api/v1/admin/jobs/{id}/requeue"))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "JOB_NOT_FAILED")
    );
    let (status, body) = app.admin_post("/api/v1/admin/jobs/999999/requeue").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
    );

    // A queue tick past its last attempt is retried, not parked.
    let queued = app
        .create_sale(json!({"sku": "tick-park", "name": "Q", "stock": 1, "checkout": "queued"}))
        .await;
    let queued_id: uuid::Uuid = queued["id"].as_str().expect("id").parse().expect("uuid");
    let job = flashsale::store::Job {
        id: sqlx::query_scalar(
            "UPDATE jobs SET attempts = 30, lock_token = gen_random_uuid(),
                    locked_until = now() + interval '1 minute'
              WHERE kind = 'queue_tick' AND sale_id = $1 RETURNING id",
        )
        .bind(queued_id)
        .fetch_one(app.store.pool())
        .await
        .expect("claim the tick"),
        kind: "queue_tick".into(),
        sale_id: Some(queued_id),
        attempts: 30,
        lock_token: sqlx::query_scalar(
            "SELECT lock_token FROM jobs WHERE kind = 'queue_tick' AND sale_id = $1",
        )
        .bind(queued_id)
        .fetch_one(app.store.pool())
        .await
        .expect("token"),
        lag_seconds: 0.0,
    };
    app.store
        .retry_job(&job, Duration::from_secs(1), "boom")
        .await
        .expect("retry");
    let parked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT dead_at FROM jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(app.store.pool())
            .await
            .expect("dead_at");
    assert_eq!(parked, None, "a queue tick is never parked");
}

#[tokio::test]
async fn swagger_ui_cannot_be_framed_and_runs_only_its_own_inline_code() {
    let app = spawn_app().await;
    let response = app.client.get("/docs").send().await;
    response.assert_status_is_ok();
    let csp = response
        .0
        .headers()
        .get("content-security-policy")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for directive in [
        "frame-ancestors 'none'",
        "default-src 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(
        response
            .0
            .headers()
            .get("x-frame-options")
            .map(|v| v.as_bytes()),
        Some(&b"DENY"[..])
    );
}
