//! Behind a connection pooler: the binary through a real PgBouncer (Debian's 1.18, no
//! prepared statements across transactions) in transaction mode, with
//! `deploy/pgbouncer/pgbouncer.ini`, in front of the test Postgres; LISTEN and migrations on
//! `DATABASE_SESSION_URL`. Skipped, saying so, only where no `pgbouncer` binary is installed
//! (CI installs it).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

mod bouncer;

use crate::deploy::{Instance, client, create_sale, sale_with_stream};
use crate::support::{ADMIN_KEY, empty_database};
use bouncer::{Bouncer, pgbouncer_binary};

/// The pooled instance: DATABASE_URL through `bouncer`, LISTEN and migrations on `direct`.
/// The live hub's own refresh is a minute apart, so a stream that moves sooner heard a
/// notification; statements may take 15 s, so a faster refusal is the server's timeout.
fn pooled_instance(
    bouncer: &Bouncer,
    direct: &str,
    pooler: &str,
    startup_wait_ms: &str,
) -> Instance {
    Instance::start(
        &bouncer.url(),
        &[
            ("DATABASE_SESSION_URL", direct),
            ("DATABASE_POOLER", pooler),
            ("DB_POOL_SIZE", "10"),
            ("DB_TIMEOUT_MS", "15000"),
            ("LIVE_REFRESH_MS", "60000"),
            ("RATE_LIMIT_PER_USER", "0"),
            ("WORKER_POLL_MS", "200"),
            ("DB_STARTUP_WAIT_MS", startup_wait_ms),
        ],
    )
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    let response = client
        .get(url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("request");
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json")
}

/// Reads the stream until a `sale` message shows `sold` at least `at_least`, within `wait`.
async fn sold_on_stream(stream: &mut reqwest::Response, at_least: i64, wait: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + wait;
    let mut text = String::new();
    loop {
        let sold = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .filter_map(|view| view["sold"].as_i64())
            .max()
            .unwrap_or(-1);
        if sold >= at_least {
            return sold;
        }
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return sold,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode_buyers_queue_stream_and_timeouts_work() {
    let Some(binary) = pgbouncer_binary() else {
        eprintln!(
            "SKIPPED: no pgbouncer binary (/usr/sbin/pgbouncer or PGBOUNCER): \
             apt-get install pgbouncer"
        );
        return;
    };
    let direct = empty_database().await;
    let bouncer = Bouncer::start(&binary, &direct, 3);
    let client = client();
    // Migrations run on the session URL: the pooler's transactions cannot hold their lock.
    let mut instance = pooled_instance(&bouncer, &direct, "transaction", "30000");
    instance.wait_healthy(&client).await;
    let base = instance.base.clone();

    // Instant: 200 buyers at once for 50 units, a public stream watching.
    let sku = format!("pooled-{}", Uuid::new_v4().simple());
    let sale = json!({"sku": sku, "name": "Pooled", "stock": 50});
    let mut stream = sale_with_stream(&client, &base, sale).await;
    assert_eq!(
        sold_on_stream(&mut stream, 0, Duration::from_secs(5)).await,
        0
    );
    let buyers: Vec<_> = (0..200)
        .map(|n| {
            let (client, url) = (
                client.clone(),
                format!("{base}/api/v1/sales/{sku}/purchases"),
            );
            tokio::spawn(
                async move { post(&client, url, json!({"userId": format!("b{n}")})).await },
            )
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut winner = String::new();
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer");
        match status {
            201 => winner = body["userId"].as_str().unwrap_or_default().to_string(),
            409 => assert_eq!(body["code"], "SOLD_OUT", "{body}"),
            _ => {}
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [(201, 50), (409, 150)].into_iter().collect(),
        "log:\n{}",
        instance.log()
    );
    // A buyer's repeat is told apart from the sold-out through the pooler too.
    let (status, body) = post(
        &client,
        format!("{base}/api/v1/sales/{sku}/purchases"),
        json!({ "userId": winner }),
    )
    .await;
    assert_eq!((status, &body["code"]), (409, &json!("ALREADY_PURCHASED")));
    // The stream moved long before its own refresh: LISTEN works on the session URL.
    assert_eq!(
        sold_on_stream(&mut stream, 50, Duration::from_secs(10)).await,
        50
    );

    // Queued: joins, admission by the job runner, confirms.
    let queued = format!("pooled-q-{}", Uuid::new_v4().simple());
    create_sale(
        &client,
        &base,
        json!({"sku": queued, "name": "Queued", "stock": 5, "checkout": "queued", "holdSeconds": 60}),
    )
    .await;
    for n in 0..10 {
        let (status, body) = post(
            &client,
            format!("{base}/api/v1/sales/{queued}/queue"),
            json!({"userId": format!("q{n}")}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let mut confirmed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed < 5 {
        assert!(
            Instant::now() < deadline,
            "only {confirmed} confirmed:\n{}",
            instance.log()
        );
        for n in 0..10 {
            let status = get(&client, format!("{base}/api/v1/sales/{queued}/queue/q{n}")).await;
            if status["status"] == "held" {
                let (code, body) = post(
                    &client,
                    format!("{base}/api/v1/sales/{queued}/queue/q{n}/confirm"),
                    json!({}),
                )
                .await;
                assert_eq!(code, 201, "{body}");
                confirmed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for sale in [&sku, &queued] {
        let audit = get(&client, format!("{base}/api/v1/admin/sales/{sale}/audit")).await;
        assert_eq!(audit["passed"], true, "{audit}");
    }

    // The server timeouts hold per transaction (SET LOCAL): a purchase waiting on a row
    // lock held elsewhere is refused at lock_timeout (3 s), long before DB_TIMEOUT_MS.
    let locked = format!("pooled-l-{}", Uuid::new_v4().simple());
    let sale = create_sale(
        &client,
        &base,
        json!({"sku": locked, "name": "Locked", "stock": 5}),
    )
    .await;
    let mut holder = sqlx::PgConnection::connect(&direct).await.expect("connect");
    let mut tx = holder.begin().await.expect("begin");
    let sale_id = Uuid::parse_str(sale["id"].as_str().expect("id")).expect("uuid");
    sqlx::query("SELECT 1 FROM sales WHERE id = $1 FOR UPDATE")
        .bind(sale_id)
        .execute(&mut *tx)
        .await
        .expect("lock");
    let started = Instant::now();
    let (status, body) = post(
        &client,
        format!("{base}/api/v1/sales/{locked}/purchases"),
        json!({"userId": "waits"}),
    )
    .await;
    let waited = started.elapsed();
    tx.rollback().await.expect("rollback");
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("UNAVAILABLE")),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(2_500) && waited < Duration::from_secs(8),
        "refused after {waited:?}, not at the 3 s lock_timeout"
    );

    let log = instance.log();
    assert!(
        !log.contains("prepared statement") && !log.contains("protocol"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pooler_mode_the_service_cannot_start_through_pgbouncer() {
    let Some(binary) = pgbouncer_binary() else {
        eprintln!("SKIPPED: no pgbouncer binary (/usr/sbin/pgbouncer or PGBOUNCER)");
        return;
    };
    let direct = empty_database().await;
    let bouncer = Bouncer::start(&binary, &direct, 3);
    // Pooler mode without a session URL is refused at start, with the reason.
    let mut lacking = Instance::start(&bouncer.url(), &[("DATABASE_POOLER", "transaction")]);
    let status = lacking.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        lacking.log().contains("needs DATABASE_SESSION_URL"),
        "{}",
        lacking.log()
    );
    // The default (direct) mode sends the server timeouts as start-up options, which
    // pgbouncer refuses: the service says so and stops.
    let mut direct_mode = pooled_instance(&bouncer, &direct, "none", "2000");
    let status = direct_mode.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        direct_mode.log().contains("unsupported startup parameter"),
        "{}",
        direct_mode.log()
    );
}
