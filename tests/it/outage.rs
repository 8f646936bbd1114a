//! A database known to be down (issue 18, item 4): buyers are refused at once with a
//! longer, jittered `Retry-After`, one probe (not every request) reaches for the database,
//! and the service serves again soon after it is back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flashsale::store::{self, Store};
use poem::http::StatusCode;
use serde_json::json;

use crate::route::{Route, dead_port};
use crate::support::{fresh_database, impatient_client_with_sale, purchase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_one_probe_looks_and_buyers_hear_a_jittered_retry_after() {
    let direct = fresh_database(2).await;
    let options = direct.connect_options();
    let route = Route::to(options.get_port()).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        options.get_username(),
        route.port,
        options.get_database().unwrap_or("postgres")
    );
    let store = Store::new(store::connect(&url, 4).await.expect("connect"));
    let client = impatient_client_with_sale(store, "down", 100).await;
    assert_eq!(purchase(&client, "down", "u0").await.0, StatusCode::CREATED);

    // The database goes away. Each answer: its status, Retry-After and how long it took.
    route.switch(dead_port(), true);
    let buy = |user: String| {
        let client = &client;
        async move {
            let started = Instant::now();
            let response = client
                .post("/api/v1/sales/down/purchases")
                .body_json(&json!({ "userId": user }))
                .send()
                .await;
            let retry_after: u64 = response
                .0
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            (response.0.status(), retry_after, started.elapsed())
        }
    };
    // The first buyers find out the hard way; then the probe marks the database down.
    let cut = Instant::now();
    loop {
        let (status, retry_after, _) = buy("first".into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        if retry_after >= 2 {
            break;
        }
        assert!(cut.elapsed() < Duration::from_secs(10), "never marked down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reached_before = route.accepted();
    let mut waits = HashSet::new();
    for i in 0..20 {
        let (status, retry_after, took) = buy(format!("down-{i}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!((2..=10).contains(&retry_after), "Retry-After {retry_after}");
        assert!(
            took < Duration::from_millis(500),
            "refused at once, not {took:?}"
        );
        waits.insert(retry_after);
    }
    assert!(waits.len() >= 2, "jittered: {waits:?}");
    // Twenty refusals, and only the probe's few looks reached for the database.
    let reached = route.accepted() - reached_before;
    assert!(reached <= 3, "{reached} connection attempts");
    let health = client.get("/health").send().await;
    assert_eq!(health.0.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Back: the probe notices within a couple of seconds, and buyers buy again.
    route.switch(options.get_port(), false);
    let back = Instant::now();
    loop {
        let (status, body) = purchase(&client, "down", "after").await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(back.elapsed() < Duration::from_secs(5), "still {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = client.get("/health").send().await;
    assert_eq!(health.0.status(), StatusCode::OK);
}
