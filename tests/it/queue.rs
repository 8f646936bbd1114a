//! Queued checkout against real Postgres: the waiting room, holds racing expiry, admission
//! by several workers, monotone positions and the pre-queue shuffle. Worker ticks are run
//! explicitly and time is moved by shifting holds and windows against the database clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flashsale::store::Store;
use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::support::{TestApp, code, counters, id_of, live_sale_id, spawn_app, status_and_json};

pub(crate) async fn queued_sale(app: &TestApp, stock: i64, extra: Value) -> (String, Uuid) {
    let sku = format!("q-{}", Uuid::new_v4().simple());
    let mut body = json!({"sku": sku, "name": "Queued drop", "stock": stock, "checkout": "queued"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let sale = app.create_sale(body).await;
    let id = id_of(&sale);
    (sku, id)
}

async fn join(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    app.join_queue(sku, user).await
}

async fn poll(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(
        app.client
            .get(format!("/api/v1/sales/{sku}/queue/{user}"))
            .send()
            .await,
    )
    .await
}

pub(crate) async fn confirm(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue/{user}/confirm"))
        .send()
        .await;
    status_and_json(response).await
}

pub(crate) async fn leave(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(
        app.client
            .delete(format!("/api/v1/sales/{sku}/queue/{user}"))
            .send()
            .await,
    )
    .await
}

pub(crate) async fn tick(store: &Store, sale: Uuid) -> flashsale::store::TickReport {
    store.queue_tick(sale, 500).await.expect("tick")
}

/// Makes the given users' holds run out now, as if their hold time had passed.
pub(crate) async fn expire_now(store: &Store, sale: Uuid, users: &[String]) {
    sqlx::query(
        "UPDATE queue_entries SET hold_expires_at = now() - interval '1 millisecond'
          WHERE sale_id = $1 AND user_id = ANY($2) AND status = 'held'",
    )
    .bind(sale)
    .bind(users)
    .execute(store.pool())
    .await
    .expect("expire");
}

pub(crate) async fn held_users(store: &Store, sale: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT user_id FROM queue_entries WHERE sale_id = $1 AND status = 'held' ORDER BY ticket",
    )
    .bind(sale)
    .fetch_all(store.pool())
    .await
    .expect("held")
}

/// The audit's failed checks (empty when every invariant holds).
pub(crate) async fn broken_invariants(store: &Store, sku: &str) -> Vec<String> {
    let id = live_sale_id(store, sku).await;
    let report = store.audit_sale(id).await.expect("audit");
    report
        .checks
        .into_iter()
        .filter(|check| !check.passed)
        .map(|check| format!("{}: {}", check.check_name, check.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_goes_from_join_to_a_confirmed_purchase() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 1, json!({"holdSeconds": 60})).await;
    let (status, joined) = join(&app, &sku, "alice").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{joined}");
    assert_eq!(
        (joined["status"].as_str(), joined["position"].as_i64()),
        (Some("queued"), Some(0))
    );
    assert!(joined["pollAfterMs"].as_u64().is_some());
    let (_, bob) = join(&app, &sku, "bob").await;
    assert_eq!(bob["position"], 1);
    let (_, again) = join(&app, &sku, "bob").await;
    assert_eq!(again["position"], 1, "joining again is idempotent");

    let (status, body) = confirm(&app, &sku, "alice").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "NO_HOLD"));

    assert_eq!(tick(&app.store, sale).await.admitted, 1);
    let (_, held) = poll(&app, &sku, "alice").await;
    assert_eq!(held["status"], "held");
    assert!(held["holdExpiresAt"].is_string());
    let (_, view) = app.admin_get(&format!("/api/v1/sales/{sku}")).await;
    assert_eq!(
        (
            view["available"].as_i64(),
            view["held"].as_i64(),
            view["soldOut"].as_bool()
        ),
        (Some(0), Some(1), Some(false))
    );

    let (status, purchase) = confirm(&app, &sku, "alice").await;
    assert_eq!(status, StatusCode::CREATED, "{purchase}");
    assert_eq!(purchase["userId"], "alice");
    let (status, body) = confirm(&app, &sku, "alice").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(poll(&app, &sku, "alice").await.1["status"], "purchased");
    assert_eq!(poll(&app, &sku, "bob").await.1["status"], "sold_out");
    let (status, body) = join(&app, &sku, "carol").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));

    let (status, mine) =
        status_and_json(app.client.get("/api/v1/users/alice/purchases").send().await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine.as_array().map(Vec::len), Some(1));
    let (_, admin) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert_eq!(admin["queue"]["purchased"], 1);
    assert_eq!(admin["queue"]["admitted"], 1);
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_release_return_units_to_the_next_buyer_and_errors_are_exact() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 1, json!({"holdSeconds": 60, "queueCapacity": 3})).await;
    for user in ["u1", "u2", "u3"] {
        assert_eq!(join(&app, &sku, user).await.0, StatusCode::ACCEPTED);
    }
    let response = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue"))
        .body_json(&json!({"userId": "u4"}))
        .send()
        .await;
    assert!(response.0.headers().get("Retry-After").is_some());
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "QUEUE_FULL")
    );

    tick(&app.store, sale).await;
    assert_eq!(held_users(&app.store, sale).await, vec!["u1".to_string()]);
    expire_now(&app.store, sale, &["u1".into()]).await;
    let (status, body) = confirm(&app, &sku, "u1").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::GONE, "HOLD_EXPIRED"),
        "expired even before the worker ran"
    );
    let report = tick(&app.store, sale).await;
    assert_eq!((report.expired, report.admitted), (1, 1));
    assert_eq!(poll(&app, &sku, "u1").await.1["status"], "expired");
    assert_eq!(held_users(&app.store, sale).await, vec!["u2".to_string()]);

    let (status, left) = leave(&app, &sku, "u2").await;
    assert_eq!(
        (status, left["status"].as_str()),
        (StatusCode::OK, Some("left"))
    );
    assert_eq!(
        counters(app.store.pool(), &sku).await,
        (1, 1, 0, 0),
        "the released unit is back"
    );
    tick(&app.store, sale).await;
    assert_eq!(held_users(&app.store, sale).await, vec!["u3".to_string()]);

    let (status, rejoined) = join(&app, &sku, "u1").await;
    assert_eq!(
        (status, rejoined["status"].as_str()),
        (StatusCode::ACCEPTED, Some("queued")),
        "an expired buyer may queue anew"
    );
    let (status, body) = poll(&app, &sku, "nobody").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "NOT_IN_QUEUE")
    );
    let instant = app.active_sale(3).await;
    let (status, body) = join(&app, instant["sku"].as_str().expect("sku"), "u1").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "WRONG_CHECKOUT")
    );
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_buyers_confirm_expire_or_leave_and_the_invariants_hold_throughout() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 100, json!({"holdSeconds": 2})).await;
    let users: Vec<String> = (0..2000).map(|i| format!("buyer-{i}")).collect();
    let mut joins = Vec::new();
    for chunk in users.chunks(100) {
        let (client, sku, chunk) = (app.client.clone(), sku.clone(), chunk.to_vec());
        joins.push(tokio::spawn(async move {
            for user in chunk {
                let response = client
                    .post(format!("/api/v1/sales/{sku}/queue"))
                    .body_json(&json!({ "userId": user }))
                    .send()
                    .await;
                assert_eq!(response.0.status(), StatusCode::ACCEPTED);
            }
        }));
    }
    for task in joins {
        task.await.expect("join task");
    }

    // An auditor checks the invariants continuously while the queue runs.
    let done = Arc::new(AtomicBool::new(false));
    let auditor = {
        let (store, sku, done) = (app.store.clone(), sku.clone(), done.clone());
        tokio::spawn(async move {
            let (mut audits, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                failures.extend(broken_invariants(&store, &sku).await);
                audits += 1;
            }
            (audits, failures)
        })
    };

    let mut actions: HashMap<&str, usize> = HashMap::new();
    for _round in 0..200 {
        tick(&app.store, sale).await;
        let held = held_users(&app.store, sale).await;
        let (stock, available, held_count, sold) = counters(app.store.pool(), &sku).await;
        assert_eq!(sold + held_count + available, stock);
        if held.is_empty() {
            break;
        }
        let mut to_expire = Vec::new();
        for user in held {
            let index: usize = user.trim_start_matches("buyer-").parse().expect("index");
            match index % 3 {
                0 => {
                    assert_eq!(confirm(&app, &sku, &user).await.0, StatusCode::CREATED);
                    *actions.entry("confirmed").or_default() += 1;
                }
                1 => {
                    to_expire.push(user);
                    *actions.entry("expired").or_default() += 1;
                }
                _ => {
                    assert_eq!(leave(&app, &sku, &user).await.0, StatusCode::OK);
                    *actions.entry("left").or_default() += 1;
                }
            }
        }
        expire_now(&app.store, sale, &to_expire).await;
        let failures = broken_invariants(&app.store, &sku).await;
        assert!(failures.is_empty(), "{failures:?}");
    }
    done.store(true, Ordering::Relaxed);
    let (audits, failures) = auditor.await.expect("auditor");
    assert!(
        failures.is_empty(),
        "invariants broke while running: {failures:?}"
    );
    assert!(audits > 10, "the auditor ran throughout ({audits} audits)");

    let (stock, available, held, sold) = counters(app.store.pool(), &sku).await;
    assert_eq!(
        (stock, available, held, sold),
        (100, 0, 0, 100),
        "{actions:?}"
    );
    let (purchases, buyers): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT user_id) FROM purchases WHERE sale_id = $1",
    )
    .bind(sale)
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!((purchases, buyers), (100, 100));
    assert!(actions["expired"] > 0 && actions["left"] > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_racing_expiry_end_purchased_or_returned_never_both_never_neither() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 60, json!({"holdSeconds": 60})).await;
    let users: Vec<String> = (0..60).map(|i| format!("racer-{i}")).collect();
    for user in &users {
        assert_eq!(join(&app, &sku, user).await.0, StatusCode::ACCEPTED);
    }
    assert_eq!(tick(&app.store, sale).await.admitted, 60);
    // Every hold runs out 150 ms from now; confirms are spread from 0 to 300 ms.
    sqlx::query("UPDATE queue_entries SET hold_expires_at = now() + interval '150 milliseconds' WHERE sale_id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("set expiry");
    let expiring = {
        let store = app.store.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                tick(&store, sale).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let mut confirms = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let (client, sku, user) = (app.client.clone(), sku.clone(), user.clone());
        confirms.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis((i as u64 * 5) % 300)).await;
            let response = client
                .post(format!("/api/v1/sales/{sku}/queue/{user}/confirm"))
                .send()
                .await;
            (user, response.0.status())
        }));
    }
    let mut answers = HashMap::new();
    for task in confirms {
        let (user, status) = task.await.expect("confirm");
        assert!(
            matches!(status, StatusCode::CREATED | StatusCode::GONE),
            "{user}: {status}"
        );
        answers.insert(user, status);
    }
    expiring.await.expect("expiry");
    tick(&app.store, sale).await;

    let finals: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT e.user_id, e.status, EXISTS (SELECT 1 FROM purchases p WHERE p.sale_id = e.sale_id AND p.user_id = e.user_id)
           FROM queue_entries e WHERE e.sale_id = $1",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("finals");
    let mut bought = 0;
    for (user, status, has_purchase) in &finals {
        match status.as_str() {
            "purchased" => {
                assert!(has_purchase, "{user}");
                assert_eq!(answers[user], StatusCode::CREATED, "{user}");
                bought += 1;
            }
            "expired" => {
                assert!(!has_purchase, "{user}");
                assert_eq!(answers[user], StatusCode::GONE, "{user}");
            }
            other => panic!("{user} ended {other}"),
        }
    }
    let (_, available, held, sold) = counters(app.store.pool(), &sku).await;
    assert_eq!((sold, held, available), (bought, 0, 60 - bought));
    assert!(
        bought > 0 && bought < 60,
        "the race really happened on both sides: {bought} bought"
    );
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admission_workers_never_admit_one_entry_twice() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 400, json!({"holdSeconds": 600})).await;
    for i in 0..500 {
        assert_eq!(
            join(&app, &sku, &format!("w-{i}")).await.0,
            StatusCode::ACCEPTED
        );
    }
    let barrier = Arc::new(Barrier::new(2));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (store, barrier) = (app.store.clone(), barrier.clone());
        workers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut admitted = 0;
            for _ in 0..20 {
                admitted += store.queue_tick(sale, 25).await.expect("tick").admitted;
            }
            admitted
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    assert_eq!(total, 400, "each unit was granted once");
    let (held, tickets): (i64, Vec<i64>) = sqlx::query_as(
        "SELECT count(*), array_agg(ticket ORDER BY ticket) FROM queue_entries
          WHERE sale_id = $1 AND status = 'held'",
    )
    .bind(sale)
    .fetch_one(app.store.pool())
    .await
    .expect("held");
    assert_eq!(held, 400);
    assert_eq!(
        tickets,
        (1..=400).collect::<Vec<i64>>(),
        "admitted in ticket order, each once"
    );
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_buyers_position_never_goes_up() {
    let app = spawn_app().await;
    let (sku, sale) =
        queued_sale(&app, 300, json!({"holdSeconds": 600, "maxActiveHolds": 15})).await;
    let users: Vec<String> = (0..120).map(|i| format!("p-{i}")).collect();
    for user in &users {
        assert_eq!(join(&app, &sku, user).await.0, StatusCode::ACCEPTED);
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut polls = 0;
    for _ in 0..20 {
        for user in &users {
            let (_, status) = poll(&app, &sku, user).await;
            if let Some(position) = status["position"].as_i64() {
                if let Some(previous) = last.insert(user.clone(), position) {
                    assert!(position <= previous, "{user}: {previous} -> {position}");
                }
                polls += 1;
            }
        }
        tick(&app.store, sale).await;
        // Some holders leave, some confirm: units and slots free up, the front moves.
        for (i, user) in held_users(&app.store, sale).await.into_iter().enumerate() {
            if i % 2 == 0 {
                confirm(&app, &sku, &user).await;
            } else {
                leave(&app, &sku, &user).await;
            }
        }
    }
    assert!(polls > 500, "{polls} positions observed");
    assert!(last.values().any(|&p| p == 0) || last.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prequeue_is_shuffled_once_at_the_opening_by_a_replayable_seed() {
    let app = spawn_app().await;
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    let (sku, sale) = queued_sale(&app, 100, json!({"startsAt": starts, "holdSeconds": 600})).await;
    let early: Vec<String> = (0..40).map(|i| format!("early-{i:02}")).collect();
    for user in &early {
        let (status, body) = join(&app, &sku, user).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(
            (body["prequeue"].as_bool(), body.get("position")),
            (Some(true), None),
            "no position before the draw"
        );
    }
    assert_eq!(
        tick(&app.store, sale).await.admitted,
        0,
        "nobody is admitted before the opening"
    );

    sqlx::query("UPDATE sales SET starts_at = now() - interval '1 second' WHERE id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("open");
    let report = tick(&app.store, sale).await;
    assert_eq!(report.shuffled, Some(40));
    assert_eq!(tick(&app.store, sale).await.shuffled, None, "shuffled once");
    let (status, late) = join(&app, &sku, "late-joiner").await;
    assert_eq!(
        (status, late["prequeue"].as_bool()),
        (StatusCode::ACCEPTED, Some(false))
    );
    tick(&app.store, sale).await;

    let admitted: Vec<String> = held_users(&app.store, sale).await;
    assert_eq!(
        admitted.last().map(String::as_str),
        Some("late-joiner"),
        "first come, first served after the opening"
    );
    let drawn: Vec<String> = admitted[..40].to_vec();
    assert_eq!(
        drawn.iter().collect::<HashSet<_>>(),
        early.iter().collect::<HashSet<_>>(),
        "a permutation of the pre-queue"
    );
    assert_ne!(drawn, early, "the draw is not the arrival order");

    let (_, admin) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    let seed = admin["queue"]["shuffleSeed"]
        .as_str()
        .expect("recorded seed")
        .to_string();
    let replayed: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM unnest($1::text[]) AS u(user_id) ORDER BY md5($2 || user_id), user_id",
    )
    .bind(&early)
    .bind(&seed)
    .fetch_all(app.store.pool())
    .await
    .expect("replay");
    assert_eq!(
        drawn, replayed,
        "replaying the recorded seed gives the admitted order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_joining_many_times_at_once_gets_one_entry_and_one_ticket() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 5, json!({"holdSeconds": 600})).await;
    for round in 0..2 {
        let barrier = Arc::new(Barrier::new(20));
        let mut joins = Vec::new();
        for _ in 0..20 {
            let (client, sku, barrier) = (app.client.clone(), sku.clone(), barrier.clone());
            joins.push(tokio::spawn(async move {
                barrier.wait().await;
                let response = client
                    .post(format!("/api/v1/sales/{sku}/queue"))
                    .body_json(&json!({"userId": "eager"}))
                    .send()
                    .await;
                status_and_json(response).await
            }));
        }
        for join in joins {
            let (status, body) = join.await.expect("join");
            assert_eq!(status, StatusCode::ACCEPTED, "round {round}: {body}");
        }
        let (entries, waiting): (i64, i32) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM queue_entries WHERE sale_id = $1),
                    (SELECT waiting FROM sale_queues WHERE sale_id = $1)",
        )
        .bind(sale)
        .fetch_one(app.store.pool())
        .await
        .expect("count");
        assert_eq!((entries, waiting), (1, 1), "round {round}");
        assert!(broken_invariants(&app.store, &sku).await.is_empty());
        // Round two: the same races on a rejoin after leaving.
        assert_eq!(leave(&app, &sku, "eager").await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_show_each_open_queues_waiting_buyers_and_holds_from_memory() {
    let (app, live) = crate::support::spawn_notified_app(10).await;
    let (sku, sale) = queued_sale(&app, 1, json!({})).await;
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    let (later, _) = queued_sale(&app, 1, json!({"startsAt": starts})).await;
    for user in ["m1", "m2", "m3"] {
        assert_eq!(join(&app, &sku, user).await.0, StatusCode::ACCEPTED);
    }
    assert_eq!(join(&app, &later, "early").await.0, StatusCode::ACCEPTED);
    tick(&app.store, sale).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let gauges = tokio::spawn(flashsale::worker::refresh_gauges(
        app.store.clone(),
        live.metrics().clone(),
        std::time::Duration::from_millis(50),
        stopped,
    ));
    let waiting = format!("flashsale_queue_waiting{{sale=\"{sku}\"}} 2");
    let mut text = String::new();
    for _ in 0..100 {
        let response = app.client.get("/metrics").send().await;
        text = response.0.into_body().into_string().await.expect("metrics");
        if text.contains(&waiting) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(text.contains(&waiting), "{text}");
    assert!(
        text.contains(&format!("flashsale_queue_active_holds{{sale=\"{sku}\"}} 1")),
        "{text}"
    );
    assert!(text.contains("flashsale_db_pool_connections{pool=\"main\",state=\"idle\"}"));
    // A sale not open yet is not named: its sku is not public before its start.
    assert!(!text.contains(&later), "{text}");
    let _ = stop.send(true);
    gauges.await.expect("gauges task").expect("gauges stop");
}
