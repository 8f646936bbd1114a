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
