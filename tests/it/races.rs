//! The races of the waiting room, made deterministic: a test transaction parks on the row
//! the other side needs, the other side runs up to its lock wait (seen in
//! `pg_stat_activity`, not guessed with a sleep), then the parked transaction lets go.

use std::time::Duration;

use flashsale::store::Store;
use flashsale::worker::{Runner, RunnerConfig, ServiceJobs};
use poem::http::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

use crate::support::{TestApp, spawn_app, status_and_json};

/// Waits until some backend of this database waits on a lock, or `done` turns true.
async fn until_lock_wait(store: &Store, done: impl Fn() -> bool) -> bool {
    for _ in 0..2_000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return true;
        }
        if done() {
            return false;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("nobody ever waited on the parked lock");
}

async fn queue_call(app: &TestApp, method: &str, path: String, user: &str) -> (StatusCode, Value) {
    let request = match method {
        "POST" => app.client.post(path).body_json(&json!({ "userId": user })),
        "DELETE" => app.client.delete(path),
        _ => app.client.get(path),
    };
    status_and_json(request.send().await).await
}

fn runner(store: &Store) -> Runner<ServiceJobs> {
    Runner::new(
        store.clone(),
        ServiceJobs::new(store.clone(), std::time::Duration::from_secs(7 * 24 * 3600)),
        RunnerConfig::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_racing_the_last_release_and_its_tick_is_still_admitted() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"sku": "race-join", "name": "Race", "stock": 1, "checkout": "queued"}))
        .await;
    let sale_id: Uuid = sale["id"].as_str().expect("id").parse().expect("uuid");
    let runner = runner(&app.store);
    let base = "/api/v1/sales/race-join/queue".to_string();
    assert_eq!(
        queue_call(&app, "POST", base.clone(), "u1").await.0,
        StatusCode::ACCEPTED
    );
    runner.run_due_jobs().await.expect("jobs");
    let (_, status) = queue_call(&app, "GET", format!("{base}/u1"), "u1").await;
    assert_eq!(status["status"], "held", "{status}");
    // From a clean slate: no tick pending, the one unit held by u1.
    sqlx::query("DELETE FROM jobs")
        .execute(app.store.pool())
        .await
        .expect("clear");

    // Park on the queue row: u2's join reads the sale (nothing available) and then waits
    // for that row to take its ticket.
    let mut parked = app.store.pool().acquire().await.expect("conn");
    let mut parked = parked.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sale_queues WHERE sale_id = $1 FOR UPDATE")
        .bind(sale_id)
        .execute(&mut *parked)
        .await
        .expect("park");
    let joiner = {
        let client = app.client.clone();
        let path = base.clone();
        tokio::spawn(async move {
            client
                .post(path)
                .body_json(&json!({"userId": "u2"}))
                .send()
                .await
                .0
                .status()
        })
    };
    assert!(until_lock_wait(&app.store, || joiner.is_finished()).await);

    // Meanwhile u1 releases the unit and its tick runs to the end before u2's join commits.
    assert_eq!(
        queue_call(&app, "DELETE", format!("{base}/u1"), "u1")
            .await
            .0,
        StatusCode::OK
    );
    runner.run_due_jobs().await.expect("the release's tick");
    parked.commit().await.expect("let go");
    assert_eq!(joiner.await.expect("join"), StatusCode::ACCEPTED);

    // A tick is due for u2 at once: the join made it due in its own transaction.
    runner.run_due_jobs().await.expect("jobs");
    let (_, status) = queue_call(&app, "GET", format!("{base}/u2"), "u2").await;
    assert_eq!(
        status["status"], "held",
        "u2 must not wait while a unit is free: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_opening_draw_waits_for_a_locked_entry_and_draws_every_buyer() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"sku": "race-shuffle", "name": "Race", "stock": 50,
                             "checkout": "queued", "startsAt": "2999-01-01T00:00:00Z",
                             "endsAt": "2999-01-02T00:00:00Z"}))
        .await;
    let sale_id: Uuid = sale["id"].as_str().expect("id").parse().expect("uuid");
    let users: Vec<String> = (0..12).map(|i| format!("pre-{i:02}")).collect();
    for user in &users {
        let (status, _) = queue_call(
            &app,
            "POST",
            "/api/v1/sales/race-shuffle/queue".into(),
            user,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    sqlx::query("UPDATE sales SET starts_at = now() - interval '1 second' WHERE id = $1")
        .bind(sale_id)
        .execute(app.store.pool())
        .await
        .expect("open the sale");
    // The draw anyone can replay: users by md5(seed || user), dealt tickets 1, 2, 3...
    let expected: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT e.user_id,
                row_number() OVER (ORDER BY md5(q.shuffle_seed::text || e.user_id), e.user_id)
           FROM queue_entries e JOIN sale_queues q USING (sale_id) WHERE e.sale_id = $1
          ORDER BY 1",
    )
    .bind(sale_id)
    .fetch_all(app.store.pool())
    .await
    .expect("replay");
    let undealt: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM queue_entries WHERE sale_id = $1 AND ticket IS NULL",
    )
    .bind(sale_id)
    .fetch_one(app.store.pool())
    .await
    .expect("undealt");
    assert_eq!(
        undealt, 12,
        "pre-queued buyers wait for the draw without a ticket"
    );
    // Park on the buyer drawn first (as a leave in flight would): skipping them would deal
    // their ticket to the next buyer and leave them out of the draw.
    let parked_user = expected
        .iter()
        .find(|(_, ticket)| *ticket == Some(1))
        .map(|(user, _)| user.clone())
        .expect("somebody is drawn first");
    let mut conn = app.store.pool().acquire().await.expect("conn");
    let mut parked = conn.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM queue_entries WHERE sale_id = $1 AND user_id = $2 FOR UPDATE")
        .bind(sale_id)
        .bind(&parked_user)
        .execute(&mut *parked)
        .await
        .expect("park");
    let tick = {
        let store = app.store.clone();
        tokio::spawn(async move { store.queue_tick(sale_id, 0).await.expect("tick") })
    };
    let waited = until_lock_wait(&app.store, || tick.is_finished()).await;
    parked.commit().await.expect("let go");
    let report = tick.await.expect("tick");
    assert!(
        waited,
        "the draw waits for the locked entry instead of skipping it"
    );
    assert_eq!(report.shuffled, Some(12), "every pre-queued buyer is drawn");
    let dealt: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT user_id, ticket FROM queue_entries WHERE sale_id = $1 ORDER BY 1")
            .bind(sale_id)
            .fetch_all(app.store.pool())
            .await
            .expect("dealt");
    assert_eq!(
        dealt, expected,
        "{parked_user} was drawn like everyone else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_waits_for_a_join_holding_the_queue_row_so_no_join_commits_after_it() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(
            json!({"sku": "race-cancel", "name": "Race", "stock": 5, "checkout": "queued"}),
        )
        .await;
    let sale_id: Uuid = sale["id"].as_str().expect("id").parse().expect("uuid");
    // A join batch in flight, parked holding the queue row.
    let mut parked = app.store.pool().acquire().await.expect("conn");
    let mut parked = parked.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sale_queues WHERE sale_id = $1 FOR UPDATE")
        .bind(sale_id)
        .execute(&mut *parked)
        .await
        .expect("park");
    let cancel = {
        let client = app.client.clone();
        tokio::spawn(async move {
            status_and_json(
                client
                    .post("/api/v1/admin/sales/race-cancel/cancel")
                    .header(
                        "Authorization",
                        format!("Bearer {}", crate::support::ADMIN_KEY),
                    )
                    .send()
                    .await,
            )
            .await
        })
    };
    // Before, the cancel committed at once, and a join that had read the sale before it
    // could still commit its entry afterwards: "queued" in a sale already cancelled.
    assert!(
        until_lock_wait(&app.store, || cancel.is_finished()).await,
        "the cancel waits for the queue row"
    );
    parked.rollback().await.expect("release");
    let (status, body) = cancel.await.expect("cancel");
    assert_eq!(status, StatusCode::OK, "{body}");
    // From its commit on, a join reads the cancelled sale under the lock and is refused.
    let (status, body) = queue_call(
        &app,
        "POST",
        "/api/v1/sales/race-cancel/queue".to_string(),
        "late",
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}
