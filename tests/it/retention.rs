//! Retention as a job: it works in slices of a bounded size, each run a job of its own, so a
//! backlog never holds a runner for long. (What it keeps and the audit: `outbox.rs`.)

use std::time::Duration;

use flashsale::store::{Job, JobKind};
use flashsale::worker::{JobHandler, Runner, RunnerConfig, ServiceJobs};

use crate::support::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_one_slice_per_run_and_queues_the_next_slice_due_at_once() {
    let app = spawn_app().await;
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    for n in 0..5 {
        app.purchase(&sku, &format!("buyer-{n}")).await;
    }
    sqlx::query("DELETE FROM jobs")
        .execute(app.store.pool())
        .await
        .expect("clear");
    sqlx::query("UPDATE events SET occurred_at = now() - interval '8 days'")
        .execute(app.store.pool())
        .await
        .expect("age the events");
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(app.store.pool())
            .await
            .expect("count")
    };
    let before = events().await;
    assert!(before >= 5, "a purchase.created each: {before}");
    let jobs =
        ServiceJobs::new(app.store.clone(), Duration::from_secs(7 * 24 * 3600)).with_prune_slice(2);

    let run = Job {
        id: 0,
        kind: JobKind::PruneEvents.as_str().into(),
        sale_id: None,
        attempts: 1,
        lock_token: uuid::Uuid::nil(),
        lag_seconds: 0.0,
    };
    jobs.run(&run).await.expect("one run");
    assert_eq!(events().await, before - 2, "one run removes one slice");
    let (pending, due_now): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(run_at <= now()) FROM jobs WHERE kind = 'prune_events'",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("read");
    assert_eq!(
        (pending, due_now),
        (1, Some(true)),
        "the next slice is due at once"
    );

    let runner = Runner::new(app.store.clone(), jobs, RunnerConfig::default());
    while runner.run_due_jobs().await.expect("run") > 0 {}
    assert_eq!(
        events().await,
        0,
        "the slices went on until nothing was left"
    );
    let next_in_an_hour: bool = sqlx::query_scalar(
        "SELECT bool_and(run_at > now() + interval '50 minutes') AND count(*) = 1
           FROM jobs WHERE kind = 'prune_events'",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("read");
    assert!(next_in_an_hour, "the last run queued the hourly one");
}

/// Ages every event past a day's retention and prunes with it.
async fn age_and_prune(app: &crate::support::TestApp) -> flashsale::store::Pruned {
    sqlx::query("UPDATE events SET occurred_at = now() - interval '8 days'")
        .execute(app.store.pool())
        .await
        .expect("age the events");
    app.store
        .prune_events(Duration::from_secs(24 * 3600), 100_000)
        .await
        .expect("prune")
}

async fn count(app: &crate::support::TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(app.store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_an_endpoint_has_not_fanned_out_and_every_delivery_row() {
    let app = spawn_app().await;
    let receiver = crate::receiver::Receiver::start().await;
    let (status, hook) = app
        .admin_post_json(
            "/api/v1/admin/webhooks",
            serde_json::json!({"url": receiver.url}),
        )
        .await;
    assert_eq!(status, poem::http::StatusCode::CREATED, "{hook}");
    *receiver.state.secret.lock().expect("lock") = hook["secret"].as_str().map(String::from);
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    for n in 0..3 {
        app.purchase(&sku, &format!("lagging-{n}")).await;
    }
    // The endpoint's fan-out has not run: none of these events has a delivery yet.
    let before = count(&app, "SELECT count(*) FROM events").await;
    age_and_prune(&app).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM events").await,
        before,
        "nothing the endpoint has not fanned out is pruned"
    );
    // Fanned out and delivered: the (recently finished) delivery rows stay, with their events.
    let sender = crate::receiver::start_sender(app.store.clone(), crate::receiver::fast_config());
    let delivered = receiver
        .wait_for(Duration::from_secs(30), |delivered| delivered.len() >= 3)
        .await;
    assert!(delivered);
    drop(sender);
    let deliveries = count(&app, "SELECT count(*) FROM webhook_deliveries").await;
    assert!(deliveries >= 3);
    age_and_prune(&app).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        deliveries,
        "a prune never removes a delivery row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_cursor_older_than_retention_is_gone_and_the_answer_names_the_oldest_cursor() {
    let app = spawn_app().await;
    let (_, first_page) = app.admin_get("/api/v1/admin/events?limit=1").await;
    let start = first_page["nextCursor"].as_str().map(String::from);
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    for n in 0..3 {
        app.purchase(&sku, &format!("old-{n}")).await;
    }
    let (_, page) = app.admin_get("/api/v1/admin/events?limit=1").await;
    let early = page["nextCursor"].as_str().expect("cursor").to_string();
    assert!(age_and_prune(&app).await.events > 0);
    for cursor in std::iter::once(early).chain(start) {
        let (status, body) = app
            .admin_get(&format!("/api/v1/admin/events?after={cursor}"))
            .await;
        assert_eq!(status, poem::http::StatusCode::GONE, "{body}");
        assert_eq!(body["code"], "CURSOR_EXPIRED");
        let message = body["message"].as_str().expect("message");
        let oldest = message.rsplit(' ').next().expect("cursor");
        let (status, _) = app
            .admin_get(&format!("/api/v1/admin/events?after={oldest}"))
            .await;
        assert_eq!(
            status,
            poem::http::StatusCode::OK,
            "the oldest cursor named works"
        );
    }
}
