//! The job runner: several runners on one database never run one job twice, failures are
//! retried with backoff, a NOTIFY wakes a sleeping runner, and a slow job neither holds up
//! a queue tick claimed with it nor loses its lease while it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashsale::store::{Job, JobKind, Store};
use flashsale::worker::{JobHandler, Runner, RunnerConfig, RunnerHealth};
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

/// Sleeps through one job (`slow`) and runs every other at once; records each job's runs
/// and the order in which they finished.
#[derive(Clone, Default)]
struct SlowHandler {
    slow: Arc<AtomicI64>,
    runs: Arc<Mutex<HashMap<i64, usize>>>,
    finished: Arc<Mutex<Vec<i64>>>,
}

impl SlowHandler {
    const SLOW_FOR: Duration = Duration::from_secs(3);

    fn runs_of(&self, job: i64) -> usize {
        self.runs
            .lock()
            .map(|runs| runs.get(&job).copied())
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    fn finished(&self) -> Vec<i64> {
        self.finished
            .lock()
            .map(|done| done.clone())
            .unwrap_or_default()
    }
}

impl JobHandler for SlowHandler {
    async fn run(&self, job: &Job) -> anyhow::Result<()> {
        if let Ok(mut runs) = self.runs.lock() {
            *runs.entry(job.id).or_default() += 1;
        }
        if job.id == self.slow.load(Ordering::Relaxed) {
            tokio::time::sleep(Self::SLOW_FOR).await;
        }
        if let Ok(mut done) = self.finished.lock() {
            done.push(job.id);
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
        tick_slots: 4,
        other_slots: 4,
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

// Real time, not a paused clock: the leases are the database's `now()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_tick_claimed_with_a_slow_job_is_done_first_and_the_slow_job_keeps_its_lease() {
    let (app, sale_id) = app_with_empty_queue().await;
    // The slow job is the older, so one claim takes both and a queue of them runs it first.
    let slow: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, run_at) VALUES ('prune_events', now() - interval '1 second')
         RETURNING id",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("the slow job");
    let tick: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, sale_id) VALUES ('queue_tick', $1) RETURNING id",
    )
    .bind(sale_id)
    .fetch_one(app.store.pool())
    .await
    .expect("a tick");
    let handler = SlowHandler::default();
    handler.slow.store(slow, Ordering::Relaxed);
    // A lease a third of the slow job's run: without its heartbeat the lease runs out twice.
    let config = RunnerConfig {
        lease: Duration::from_secs(1),
        tick_slots: 1,
        other_slots: 1,
        ..fast_config()
    };
    let health = RunnerHealth::default();
    let first =
        Runner::new(app.store.clone(), handler.clone(), config.clone()).with_health(health.clone());
    let (stop_first, first_stopped) = watch::channel(false);
    let started = Instant::now();
    let first = tokio::spawn(first.run(first_stopped));

    while !handler.finished().contains(&tick) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let finished = handler.finished();
    assert!(finished.contains(&tick), "the tick ran: {finished:?}");
    assert!(
        !finished.contains(&slow),
        "the tick was done while the slow job still ran, not after it: {finished:?}"
    );

    let token: uuid::Uuid = sqlx::query_scalar("SELECT lock_token FROM jobs WHERE id = $1")
        .bind(slow)
        .fetch_one(app.store.pool())
        .await
        .expect("the first runner's claim");

    // A second runner polls all through the slow job's run, long past its first lease.
    let second = Runner::new(app.store.clone(), handler.clone(), config);
    let (stop_second, second_stopped) = watch::channel(false);
    let second = tokio::spawn(second.run(second_stopped));
    tokio::time::sleep(
        (started + Duration::from_secs(2)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert!(!handler.finished().contains(&slow), "still running");
    let leased: Option<bool> = sqlx::query_scalar(
        "SELECT locked_until > now() AND lock_token = $2 FROM jobs WHERE id = $1",
    )
    .bind(slow)
    .bind(token)
    .fetch_optional(app.store.pool())
    .await
    .expect("read the lease");
    assert_eq!(
        leased,
        Some(true),
        "the heartbeat kept the first claim's lease past its first second"
    );
    assert!(
        health.since_last_beat() < Duration::from_secs(1),
        "the runner's loop beat while the slow job ran: {:?}",
        health.since_last_beat()
    );

    // Shutdown waits for the job in hand.
    stop_first.send(true).expect("stop");
    first.await.expect("task").expect("runner");
    assert!(
        handler.finished().contains(&slow),
        "run returned after the slow job ended"
    );
    stop_second.send(true).expect("stop");
    second.await.expect("task").expect("runner");
    assert_eq!(
        handler.runs_of(slow),
        1,
        "no runner took the slow job while it ran"
    );
    assert_eq!(handler.runs_of(tick), 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1)")
        .bind(vec![slow, tick])
        .fetch_one(app.store.pool())
        .await
        .expect("count");
    assert_eq!(
        left, 0,
        "both completed by the runner that held their leases"
    );
}
