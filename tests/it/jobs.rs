//! The job runner: several runners on one database never run one job twice, failures are
//! retried with backoff, and a NOTIFY wakes a sleeping runner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashsale::store::{Job, JobKind, Store};
use flashsale::worker::{JobHandler, Runner, RunnerConfig};
use tokio::sync::{Barrier, watch};

use crate::support::{TestApp, id_of, spawn_app};

/// Records every run and fails a job's first attempt when asked.
#[derive(Clone, Default)]
struct RecordingHandler {
    runs: Arc<Mutex<HashMap<i64, usize>>>,
    fail_first_attempt: bool,
}

impl JobHandler for RecordingHandler {
    async fn run(&self, job: &Job) -> anyhow::Result<()> {
        if let Ok(mut runs) = self.runs.lock() {
            *runs.entry(job.id).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if self.fail_first_attempt && job.attempts == 1 {
            anyhow::bail!("first attempt fails on purpose");
        }
        Ok(())
    }
}

async fn enqueue_jobs(store: &Store, sale_id: uuid::Uuid, count: usize) {
    for _ in 0..count {
        store
            .enqueue_job(JobKind::SyncSaleState, sale_id, None)
            .await
            .expect("enqueue");
    }
}

/// A test app with one sale and no jobs queued (the sale's own state jobs are removed).
async fn app_with_empty_queue() -> (TestApp, uuid::Uuid) {
    let app = spawn_app().await;
    let sale = app.active_sale(1).await;
    let sale_id = id_of(&sale);
    sqlx::query("DELETE FROM jobs")
        .execute(app.store.pool())
        .await
        .expect("clear");
    (app, sale_id)
}

fn fast_config() -> RunnerConfig {
    RunnerConfig {
        poll_interval: Duration::from_millis(20),
        batch_size: 4,
        base_backoff: Duration::from_millis(10),
        ..RunnerConfig::default()
    }
}

async fn remaining_jobs(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runners_on_one_database_run_every_job_exactly_once() {
    let (app, sale_id) = app_with_empty_queue().await;
    enqueue_jobs(&app.store, sale_id, 200).await;

    let handler = RecordingHandler::default();
    let barrier = Arc::new(Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let runner = Runner::new(app.store.clone(), handler.clone(), fast_config());
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut ran = 0;
            loop {
                let batch = runner.run_due_jobs().await.expect("run");
                if batch == 0 {
                    break ran;
                }
                ran += batch;
            }
        }));
    }
    let mut per_runner = Vec::new();
    for task in tasks {
        per_runner.push(task.await.expect("task"));
    }
    let runs = handler.runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 200, "every job ran");
    assert!(runs.values().all(|&n| n == 1), "no job ran twice: {runs:?}");
    assert_eq!(per_runner.iter().sum::<usize>(), 200);
    assert!(
        per_runner.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {per_runner:?}"
    );
    assert_eq!(remaining_jobs(&app.store).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried_with_backoff_and_then_completed() {
    let (app, sale_id) = app_with_empty_queue().await;
    enqueue_jobs(&app.store, sale_id, 3).await;
    let handler = RecordingHandler {
        fail_first_attempt: true,
        ..RecordingHandler::default()
    };
    // A backoff far longer than the few statements between the failure and the re-check, so
    // "not due yet" holds on a loaded machine too.
    let config = RunnerConfig {
        base_backoff: Duration::from_millis(500),
        ..fast_config()
    };
    let runner = Runner::new(app.store.clone(), handler.clone(), config);
    assert_eq!(runner.run_due_jobs().await.expect("run"), 3);
    let (errors, delayed): (i64, bool) =
        sqlx::query_as("SELECT count(last_error), bool_and(run_at > now()) FROM jobs")
            .fetch_one(app.store.pool())
            .await
            .expect("read");
    assert_eq!(errors, 3, "the failure is recorded");
    assert!(delayed, "the retry waits for its backoff");
    assert_eq!(runner.run_due_jobs().await.expect("run"), 0, "not due yet");
    sqlx::query("UPDATE jobs SET run_at = now()")
        .execute(app.store.pool())
        .await
        .expect("let the backoff pass");
    assert_eq!(runner.run_due_jobs().await.expect("run"), 3);
    assert_eq!(remaining_jobs(&app.store).await, 0);
    assert!(handler.runs.lock().expect("lock").values().all(|&n| n == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_a_sleeping_runner_long_before_its_poll_interval() {
    let (app, sale_id) = app_with_empty_queue().await;
    let handler = RecordingHandler::default();
    let config = RunnerConfig {
        poll_interval: Duration::from_secs(60),
        ..fast_config()
    };
    let runner = Runner::new(app.store.clone(), handler.clone(), config);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    tokio::time::sleep(Duration::from_millis(300)).await;
    enqueue_jobs(&app.store, sale_id, 1).await;
    let mut waited = Duration::ZERO;
    while remaining_jobs(&app.store).await > 0 && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    assert_eq!(
        remaining_jobs(&app.store).await,
        0,
        "woken by NOTIFY, not by the 60 s poll"
    );
    stop.send(true).expect("stop");
    task.await.expect("task").expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_late_shows_its_lag_in_the_metrics() {
    let (app, sale) = app_with_empty_queue().await;
    sqlx::query(
        "INSERT INTO jobs (kind, sale_id, run_at) VALUES ('sync_sale_state', $1, now() - interval '3 seconds')",
    )
    .bind(sale)
    .execute(app.store.pool())
    .await
    .expect("a late job");
    let metrics = flashsale::metrics::Metrics::new().expect("metrics");
    let runner = Runner::new(
        app.store.clone(),
        RecordingHandler::default(),
        RunnerConfig::default(),
    )
    .with_metrics(metrics.clone());
    assert_eq!(runner.run_due_jobs().await.expect("run"), 1);
    let text = metrics.render();
    let sum = text
        .lines()
        .find(|line| line.starts_with("flashsale_job_lag_seconds_sum{kind=\"sync_sale_state\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert!(sum.is_some_and(|lag| (3.0..30.0).contains(&lag)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_records_its_lag_and_statements_their_pool_wait() {
    let app = spawn_app().await;
    let sku = format!("lag-{}", uuid::Uuid::new_v4().simple());
    let sale = app
        .create_sale(serde_json::json!({
            "sku": sku, "name": "Lag", "stock": 5, "checkout": "queued"
        }))
        .await;
    let sale: uuid::Uuid = id_of(&sale);
    assert_eq!(
        app.join_queue(&sku, "waiting-buyer").await.0,
        poem::http::StatusCode::ACCEPTED
    );
    // The join's own tick, made due 2 s ago: the buyer has waited that long for the unit.
    sqlx::query("UPDATE jobs SET run_at = now() - interval '2 seconds' WHERE sale_id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("backdate");
    let metrics = flashsale::metrics::Metrics::new().expect("metrics");
    let store = Store::new(app.store.pool().clone())
        .with_pool_wait(metrics.pool_wait.with_label_values(&["main"]));
    let runner = Runner::new(
        store.clone(),
        flashsale::worker::ServiceJobs::new(store, Duration::from_secs(3600))
            .with_metrics(metrics.clone()),
        RunnerConfig::default(),
    );
    assert!(runner.run_due_jobs().await.expect("run") >= 1);
    let text = metrics.render();
    let value = |prefix: &str| {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    assert_eq!(
        value("flashsale_admission_lag_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        value("flashsale_admission_lag_seconds_sum").is_some_and(|lag| (2.0..30.0).contains(&lag)),
        "{text}"
    );
    assert!(
        value("flashsale_db_pool_wait_seconds_count{pool=\"main\"}").is_some_and(|n| n >= 2.0),
        "every statement of the claim and the tick took a timed connection: {text}"
    );
}
