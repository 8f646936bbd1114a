//! Live streams: a buyer hears `held` pushed by a database notification (the hub's own
//! refresh is a minute apart here, and the buyer never polls), the journey's end closes the
//! stream, many streams of one sale cost one read per change, and the public sale stream
//! follows the counters to the end.

use std::time::Duration;

use poem::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    SseMessage, SseReader, TestApp, code, id_of, metric, spawn_app, spawn_notified_app,
    status_and_json,
};

pub(crate) const WAIT: Duration = Duration::from_secs(5);

async fn queued_sale(app: &TestApp, stock: i64, hold_seconds: i64) -> (String, Uuid) {
    let sku = format!("live-{}", Uuid::new_v4().simple());
    let sale = app
        .create_sale(json!({
            "sku": sku, "name": "Live drop", "stock": stock, "checkout": "queued",
            "holdSeconds": hold_seconds,
        }))
        .await;
    let id = id_of(&sale);
    (sku, id)
}

async fn join(app: &TestApp, sku: &str, user: &str) {
    assert_eq!(app.join_queue(sku, user).await.0, StatusCode::ACCEPTED);
}

pub(crate) async fn open(app: &TestApp, path: &str) -> SseReader {
    let response = app.client.get(path).send().await;
    assert_eq!(response.0.status(), StatusCode::OK, "{path}");
    SseReader::new(response)
}

async fn buyer_stream(app: &TestApp, sku: &str, user: &str) -> SseReader {
    open(app, &format!("/api/v1/sales/{sku}/queue/{user}/events")).await
}

pub(crate) async fn next(stream: &mut SseReader) -> SseMessage {
    stream.next(WAIT).await.expect("the stream is still open")
}

async fn admit(app: &TestApp, sale: Uuid) -> i64 {
    app.store
        .queue_tick(sale, 500)
        .await
        .expect("tick")
        .admitted
}

pub(crate) fn status(message: &SseMessage) -> (&str, &str) {
    (
        message.event.as_str(),
        message.data["status"].as_str().unwrap_or(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_hears_held_by_notification_and_the_journey_ends_the_stream() {
    let (app, _live) = spawn_notified_app(100).await;
    let (sku, sale) = queued_sale(&app, 1, 120).await;
    join(&app, &sku, "first").await;
    join(&app, &sku, "second").await;
    let mut first = buyer_stream(&app, &sku, "first").await;
    let mut second = buyer_stream(&app, &sku, "second").await;
    let hello = next(&mut first).await;
    assert_eq!(status(&hello), ("status", "queued"));
    assert_eq!(hello.data["position"], 0);
    let hello = next(&mut second).await;
    assert_eq!(hello.data["position"], 1);

    assert_eq!(admit(&app, sale).await, 1);
    let held = next(&mut first).await;
    assert_eq!(status(&held), ("held", "held"), "pushed, never polled");
    assert!(held.data["holdExpiresAt"].is_string());
    assert!(held.id.parse::<i64>().expect("numeric id") >= 1);
    let moved = next(&mut second).await;
    assert_eq!(status(&moved), ("position", "queued"));
    assert_eq!(moved.data["position"], 0);

    let confirmed = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue/first/confirm"))
        .send()
        .await;
    assert_eq!(confirmed.0.status(), StatusCode::CREATED);
    assert_eq!(status(&next(&mut first).await), ("purchased", "purchased"));
    assert!(
        first.next(WAIT).await.is_none(),
        "the journey's end ends it"
    );
    assert_eq!(status(&next(&mut second).await), ("sold_out", "sold_out"));
    assert!(second.next(WAIT).await.is_none());

    // A stream opened after the end tells the end at once and closes.
    let mut late = buyer_stream(&app, &sku, "first").await;
    assert_eq!(status(&next(&mut late).await), ("status", "purchased"));
    assert!(late.next(WAIT).await.is_none());
    assert_eq!(metric(&app, "flashsale_event_streams_open").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_told_and_the_next_buyer_is_held() {
    let (app, _live) = spawn_notified_app(100).await;
    let (sku, sale) = queued_sale(&app, 1, 1).await;
    join(&app, &sku, "slow").await;
    join(&app, &sku, "next").await;
    admit(&app, sale).await;
    let mut slow = buyer_stream(&app, &sku, "slow").await;
    let mut waiting = buyer_stream(&app, &sku, "next").await;
    let mut until_held = open(
        &app,
        &format!("/api/v1/sales/{sku}/queue/next/events?until=held"),
    )
    .await;
    assert_eq!(status(&next(&mut slow).await), ("status", "held"));
    assert_eq!(status(&next(&mut waiting).await), ("status", "queued"));
    assert_eq!(status(&next(&mut until_held).await), ("status", "queued"));

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // One tick expires the hold and admits the next buyer.
    app.store.queue_tick(sale, 500).await.expect("tick");
    assert_eq!(status(&next(&mut slow).await), ("expired", "expired"));
    assert!(slow.next(WAIT).await.is_none());
    assert_eq!(status(&next(&mut waiting).await), ("held", "held"));
    assert_eq!(status(&next(&mut until_held).await), ("held", "held"));
    assert!(
        until_held.next(WAIT).await.is_none(),
        "until=held ends at held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_streams_of_one_sale_cost_a_handful_of_reads() {
    let (app, _live) = spawn_notified_app(1_000).await;
    let (sku, sale) = queued_sale(&app, 300, 120).await;
    let mut streams = Vec::new();
    for n in 0..300 {
        let user = format!("b{n}");
        join(&app, &sku, &user).await;
        let mut stream = buyer_stream(&app, &sku, &user).await;
        assert_eq!(status(&next(&mut stream).await).1, "queued");
        streams.push(stream);
    }
    assert_eq!(metric(&app, "flashsale_event_streams_open").await, 300.0);
    let reads_before = metric(&app, "flashsale_live_refreshes_total").await;
    assert_eq!(admit(&app, sale).await, 300);
    for stream in &mut streams {
        assert_eq!(status(&next(stream).await), ("held", "held"));
    }
    let reads = metric(&app, "flashsale_live_refreshes_total").await - reads_before;
    assert!(
        (1.0..=5.0).contains(&reads),
        "one admission of 300 buyers fanned out from {reads} reads, not one per stream"
    );
    assert!(metric(&app, "flashsale_live_notifications_total").await >= 1.0);
    assert!(metric(&app, "flashsale_hold_push_seconds_count").await >= 300.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_stream_follows_the_counters_until_the_sale_is_cancelled() {
    let app = spawn_app().await;
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let mut stream = open(&app, &format!("/api/v1/sales/{sku}/events")).await;
    let first = next(&mut stream).await;
    assert_eq!(
        (first.event.as_str(), &first.data["sold"]),
        ("sale", &json!(0))
    );
    let mut sold = 0;
    for user in ["p1", "p2"] {
        assert_eq!(app.purchase(&sku, user).await.0, StatusCode::CREATED);
        while sold < 1 || (user == "p2" && sold < 2) {
            sold = next(&mut stream).await.data["sold"].as_i64().expect("sold");
        }
    }
    assert_eq!(sold, 2);
    let (answer, _) = app
        .admin_post(&format!("/api/v1/admin/sales/{sku}/cancel"))
        .await;
    assert_eq!(answer, StatusCode::OK);
    let mut last: Value = Value::Null;
    while let Some(message) = stream.next(WAIT).await {
        last = message.data;
    }
    assert_eq!(last["state"], "cancelled", "the last view shows the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refuse_what_they_cannot_follow_with_codes() {
    let (app, _live) = spawn_notified_app(1).await;
    let (sku, _) = queued_sale(&app, 3, 120).await;
    let instant = app.active_sale(3).await;
    let instant_sku = instant["sku"].as_str().expect("sku");
    let cases = [
        (
            format!("/api/v1/sales/{sku}/queue/nobody/events"),
            StatusCode::NOT_FOUND,
            "NOT_IN_QUEUE",
        ),
        (
            format!("/api/v1/sales/{instant_sku}/queue/u/events"),
            StatusCode::CONFLICT,
            "WRONG_CHECKOUT",
        ),
        (
            "/api/v1/sales/no-such-sale/queue/u/events".to_string(),
            StatusCode::NOT_FOUND,
            "SALE_NOT_FOUND",
        ),
        (
            "/api/v1/sales/no-such-sale/events".to_string(),
            StatusCode::NOT_FOUND,
            "SALE_NOT_FOUND",
        ),
    ];
    for (path, expected, expected_code) in cases {
        let (answer, body) = status_and_json(app.client.get(&path).send().await).await;
        assert_eq!((answer, code(&body)), (expected, expected_code), "{path}");
    }
    join(&app, &sku, "u").await;
    let (answer, body) = status_and_json(
        app.client
            .get(format!("/api/v1/sales/{sku}/queue/u/events"))
            .header("Last-Event-ID", "not-a-number")
            .send()
            .await,
    )
    .await;
    assert_eq!(
        (answer, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );

    // This instance serves one stream: a second is refused until the first goes.
    let first = buyer_stream(&app, &sku, "u").await;
    let refused = app
        .client
        .get(format!("/api/v1/sales/{sku}/events"))
        .send()
        .await;
    assert_eq!(refused.0.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.0.headers().get("Retry-After").is_some());
    let (_, body) = status_and_json(refused).await;
    assert_eq!(code(&body), "TOO_MANY_STREAMS");
    drop(first);
    let mut again = buyer_stream(&app, &sku, "u").await;
    assert_eq!(status(&next(&mut again).await), ("status", "queued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_stream_and_an_ipv6_64_is_one_client() {
    let store = flashsale::store::Store::new(crate::support::fresh_database(4).await);
    let live = flashsale::live::LiveHub::new(
        store.clone(),
        flashsale::metrics::Metrics::new().expect("metrics"),
        flashsale::live::LiveConfig {
            max_streams: 100,
            max_streams_per_client: 2,
            refresh_every: Duration::from_secs(60),
        },
    );
    let limits = crate::support::Limits {
        trust_forwarded_for: true,
        ..crate::support::Limits::off()
    };
    let client = crate::support::client_with_hub(
        store.clone(),
        limits,
        flashsale::api::buyer_auth::BuyerTokens::disabled(),
        flashsale::api::EdgeLimits::default(),
        live,
    );
    let app = TestApp {
        client: std::sync::Arc::new(client),
        store,
    };
    let sale = app.active_sale(5).await;
    let path = format!(
        "/api/v1/sales/{}/events",
        sale["sku"].as_str().expect("sku")
    );
    let stream_from = |ip: &'static str| app.client.get(&path).header("X-Forwarded-For", ip).send();
    let mut open = Vec::new();
    for ip in [
        "198.51.100.7",
        "198.51.100.7",
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
    ] {
        let response = stream_from(ip).await;
        assert_eq!(response.0.status(), StatusCode::OK, "{ip}");
        open.push(response);
    }
    for ip in ["198.51.100.7", "2001:db8:1:2:ffff::9"] {
        let (status, body) = status_and_json(stream_from(ip).await).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_STREAMS"),
            "{ip}"
        );
    }
    // Other clients are served; a closed stream gives its client's seat back.
    let other = stream_from("2001:db8:1:3::1").await;
    assert_eq!(other.0.status(), StatusCode::OK);
    drop(open.remove(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stream_from("198.51.100.7").await.0.status(), StatusCode::OK);
}
