//! Admin routes: the key, creating, listing, reading, deleting and auditing sales.

use poem::http::StatusCode;
use serde_json::json;

use crate::support::{ADMIN_KEY, code, spawn_app, status_and_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_a_missing_or_wrong_key() {
    let app = spawn_app().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some("Basic abc"),
        Some(ADMIN_KEY),
    ] {
        let mut request = app.client.get("/api/v1/admin/sales");
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let (status, body) = status_and_json(request.send().await).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            "{auth:?}"
        );
    }
    let (status, _) = app.admin_get("/api/v1/admin/sales").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_gets_its_defaults_and_a_second_sale_with_its_sku_is_refused() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"sku": "dflt", "name": "Defaults", "stock": 7}))
        .await;
    assert_eq!(sale["checkout"], "instant");
    assert_eq!(sale["holdSeconds"], 600);
    assert_eq!(
        (sale["available"].as_i64(), sale["sold"].as_i64()),
        (Some(7), Some(0))
    );
    let starts = chrono::DateTime::parse_from_rfc3339(sale["startsAt"].as_str().expect("start"))
        .expect("rfc3339");
    let ends = chrono::DateTime::parse_from_rfc3339(sale["endsAt"].as_str().expect("end"))
        .expect("rfc3339");
    assert_eq!(ends - starts, chrono::Duration::hours(1));
    assert_eq!(sale["state"], "active");

    let response = app
        .client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": "dflt", "name": "Again", "stock": 1}))
        .send()
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SKU_TAKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_lists_sales_with_live_counters_and_the_audit_passes() {
    let app = spawn_app().await;
    let sale = app.active_sale(4).await;
    let sku = sale["sku"].as_str().expect("sku");
    for user in ["a", "b", "c"] {
        assert_eq!(app.purchase(sku, user).await.0, StatusCode::CREATED);
    }
    let (status, list) = app.admin_get("/api/v1/admin/sales?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (list[0]["sold"].as_i64(), list[0]["available"].as_i64()),
        (Some(3), Some(1))
    );

    let (status, audit) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/audit"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(audit["passed"], true, "{audit}");
    let names: Vec<&str> = audit["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|check| check["name"].as_str())
        .collect();
    assert!(names.contains(&"buyers_within_limit") && names.contains(&"counters_balance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reports_a_broken_invariant_with_its_numbers() {
    let app = spawn_app().await;
    let sale = app.active_sale(4).await;
    let sku = sale["sku"].as_str().expect("sku");
    assert_eq!(app.purchase(sku, "a").await.0, StatusCode::CREATED);
    // Break the books behind the service's back: a purchase row with no stock moved.
    sqlx::query(
        "INSERT INTO purchases (id, sale_id, user_id) SELECT gen_random_uuid(), id, 'ghost'
           FROM sales WHERE sku = $1",
    )
    .bind(sku)
    .execute(app.store.pool())
    .await
    .expect("insert");
    let (_, audit) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/audit"))
        .await;
    assert_eq!(audit["passed"], false);
    let failed: Vec<(&str, &str)> = audit["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|check| check["passed"] == false)
        .filter_map(|check| Some((check["name"].as_str()?, check["detail"].as_str()?)))
        .collect();
    assert_eq!(
        failed,
        vec![(
            "sold_matches_purchases",
            "sold=1 units_purchased=2 orders=2"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_with_a_database_and_503_without_one() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(app.client.get("/health").send().await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let dead_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .expect("lazy pool");
    let client = crate::support::client_for(
        flashsale::store::Store::new(dead_pool),
        crate::support::Limits::off(),
    );
    let (status, body) = status_and_json(client.get("/health").send().await).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_purchases_by_outcome_and_responses_by_class() {
    let app = spawn_app().await;
    let sale = app.active_sale(1).await;
    let sku = sale["sku"].as_str().expect("sku");
    assert_eq!(app.purchase(sku, "first").await.0, StatusCode::CREATED);
    assert_eq!(app.purchase(sku, "second").await.0, StatusCode::CONFLICT);
    let response = app.client.get("/metrics").send().await;
    assert_eq!(response.0.status(), StatusCode::OK);
    let text = response.0.into_body().into_string().await.expect("text");
    assert!(
        text.contains("flashsale_purchases_total{outcome=\"purchased\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flashsale_purchases_total{outcome=\"sold_out\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flashsale_http_responses_total{class=\"4xx\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_durations_are_labelled_by_operation_never_by_a_raw_path() {
    let app = spawn_app().await;
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku");
    assert_eq!(
        app.purchase(sku, "metered-user").await.0,
        StatusCode::CREATED
    );
    let missing = app.client.get("/api/v1/sales/no-such-sale").send().await;
    assert_eq!(missing.0.status(), StatusCode::NOT_FOUND);
    let response = app.client.get("/metrics").send().await;
    let text = response.0.into_body().into_string().await.expect("metrics");
    let count = |labels: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("flashsale_http_request_duration_seconds_count{")
                    && line.contains(labels)
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(
        count("class=\"2xx\",operation=\"purchase\""),
        Some(1),
        "{text}"
    );
    assert_eq!(
        count("class=\"4xx\",operation=\"getSale\""),
        Some(1),
        "{text}"
    );
    assert!(
        !text.contains(sku) && !text.contains("metered-user") && !text.contains("no-such-sale")
    );
}
