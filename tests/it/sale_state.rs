//! Sale state: derived exactly from the database clock on every read, refused outside the
//! window, and recorded by the job runner. Time is moved by shifting the sale's window
//! against the database clock, not by sleeping.

use flashsale::store::Store;
use flashsale::worker::{Runner, RunnerConfig, ServiceJobs};
use poem::http::StatusCode;
use serde_json::json;

use crate::support::{code, spawn_app};

/// Moves a sale's window against the database clock, as if time had passed.
async fn shift_window(store: &Store, sku: &str, starts: &str, ends: &str) {
    sqlx::query(
        "UPDATE sales SET starts_at = now() + $2::interval, ends_at = now() + $3::interval
          WHERE sku = $1",
    )
    .bind(sku)
    .bind(starts)
    .bind(ends)
    .execute(store.pool())
    .await
    .expect("shift window");
}

/// Makes every queued job due now and runs them once.
async fn run_jobs_now(store: &Store) -> usize {
    sqlx::query("UPDATE jobs SET run_at = now() WHERE run_at > now()")
        .execute(store.pool())
        .await
        .expect("make jobs due");
    let runner = Runner::new(
        store.clone(),
        ServiceJobs::new(store.clone(), std::time::Duration::from_secs(7 * 24 * 3600)),
        RunnerConfig::default(),
    );
    runner.run_due_jobs().await.expect("run jobs")
}

async fn events(store: &Store, sku: &str) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT e.state, e.reason FROM sale_events e JOIN sales s ON s.id = e.sale_id
          WHERE s.sku = $1 ORDER BY e.occurred_at, e.id",
    )
    .bind(sku)
    .fetch_all(store.pool())
    .await
    .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_refuses_before_its_start_sells_inside_its_window_and_refuses_after_its_end() {
    let app = spawn_app().await;
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    let sale = app
        .create_sale(json!({"sku": "window", "name": "W", "stock": 5, "startsAt": starts}))
        .await;
    assert_eq!(sale["state"], "scheduled");
    let (status, body) = app.purchase("window", "early").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "SALE_NOT_ACTIVE")
    );
    assert_eq!(body["state"], "scheduled");

    shift_window(&app.store, "window", "-1 second", "1 hour").await;
    let (status, _) = app.purchase("window", "on-time").await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, view) = app.admin_get("/api/v1/sales/window").await;
    assert_eq!(view["state"], "active");

    shift_window(&app.store, "window", "-2 hours", "-1 millisecond").await;
    let (status, body) = app.purchase("window", "late").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "SALE_NOT_ACTIVE")
    );
    assert_eq!(body["state"], "ended");
    let (_, view) = app.admin_get("/api/v1/admin/sales/window").await;
    assert_eq!(
        (view["state"].as_str(), view["endReason"].as_str()),
        (Some("ended"), Some("time"))
    );

    assert!(run_jobs_now(&app.store).await >= 2);
    assert_eq!(
        events(&app.store, "window").await,
        vec![
            ("active".into(), None),
            ("ended".into(), Some("time".into()))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sale_refuses_purchases_and_the_cancel_is_recorded() {
    let app = spawn_app().await;
    app.active_sale(5).await;
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku");
    let (status, _) = app.purchase(sku, "before-cancel").await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, cancelled) = app
        .admin_post(&format!("/api/v1/admin/sales/{sku}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, body) = app.purchase(sku, "after-cancel").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "SALE_NOT_ACTIVE")
    );
    assert_eq!(body["state"], "cancelled");

    let (status, body) = app
        .admin_post(&format!("/api/v1/admin/sales/{sku}/cancel"))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "SALE_ALREADY_ENDED")
    );

    run_jobs_now(&app.store).await;
    assert_eq!(
        events(&app.store, sku).await,
        vec![
            ("active".into(), None),
            ("ended".into(), Some("cancelled".into()))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_sale_is_ended_at_once_refuses_with_sold_out_and_records_why() {
    let app = spawn_app().await;
    let sale = app.active_sale(2).await;
    let sku = sale["sku"].as_str().expect("sku");
    for user in ["a", "b"] {
        assert_eq!(app.purchase(sku, user).await.0, StatusCode::CREATED);
    }
    let (_, view) = app.admin_get(&format!("/api/v1/sales/{sku}")).await;
    assert_eq!(
        (view["state"].as_str(), view["soldOut"].as_bool()),
        (Some("ended"), Some(true))
    );

    // Even once its end time has passed, a sold-out sale says SOLD_OUT.
    shift_window(&app.store, sku, "-2 hours", "-1 hour").await;
    let (status, body) = app.purchase(sku, "c").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));

    run_jobs_now(&app.store).await;
    assert_eq!(
        events(&app.store, sku).await,
        vec![
            ("active".into(), None),
            ("ended".into(), Some("sold_out".into()))
        ]
    );
}
