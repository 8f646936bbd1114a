//! Per-user and per-IP rate limits: 429 `RATE_LIMITED` with a whole-second `Retry-After`.

use poem::http::StatusCode;

use crate::support::{Limits, code, purchase, spawn_app_with, status_and_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_limit_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = spawn_app_with(Limits {
        per_user: (1, 2),
        ..Limits::off()
    })
    .await;
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku");
    assert_eq!(
        purchase(&app.client, sku, "eager").await.0,
        StatusCode::CREATED
    );
    let (status, body) = purchase(&app.client, sku, "eager").await;
    assert_eq!(code(&body), "ALREADY_PURCHASED", "{status}");

    let response = app
        .client
        .post(format!("/api/v1/sales/{sku}/purchases"))
        .body_json(&serde_json::json!({"userId": "eager"}))
        .send()
        .await;
    let retry_after: u64 = response
        .0
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a whole-second Retry-After");
    assert!(retry_after >= 1);
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );

    assert_eq!(
        purchase(&app.client, sku, "patient").await.0,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_honours_x_forwarded_for_only_when_trusted() {
    for trusted in [true, false] {
        let app = spawn_app_with(Limits {
            per_ip: (1, 3),
            trust_forwarded_for: trusted,
            ..Limits::off()
        })
        .await;
        let sale = app.active_sale(10).await;
        let sku = sale["sku"].as_str().expect("sku").to_string();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let response = app
                .client
                .get(format!("/api/v1/sales/{sku}"))
                .header("X-Forwarded-For", "198.51.100.7, 203.0.113.9")
                .send()
                .await;
            statuses.push(response.0.status());
        }
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        if trusted {
            assert_eq!(limited, 2, "burst of 3, then refused: {statuses:?}");
        } else {
            // The in-process client has no socket peer, so an untrusted header is ignored
            // and there is no IP to limit on.
            assert_eq!(limited, 0, "{statuses:?}");
        }
        let health = app
            .client
            .get("/health")
            .header("X-Forwarded-For", "203.0.113.9")
            .send()
            .await;
        assert_eq!(health.0.status(), StatusCode::OK, "only /api/ is limited");
    }
}
