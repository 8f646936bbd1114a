//! Raffles against real Postgres: 1,000 entries racing on 100 units, the draw replayed from
//! its seed, holds passing on in draw order, withdrawals, and ticks run twice at once. The
//! rules (windows, codes, cancels, multi-unit entries) are in `raffle_rules.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::queue::broken_invariants;
use crate::support::{TestApp, code, counters, spawn_app, status_and_json};

/// A raffle open now for an hour (the tests end its window by moving `ends_at`).
pub(crate) async fn raffle(app: &TestApp, stock: i64, extra: Value) -> (String, Uuid) {
    let sku = format!("raffle-{}", Uuid::new_v4().simple());
    let mut body = json!({"sku": sku, "name": "Draw", "stock": stock, "checkout": "raffle"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let created = app.create_sale(body).await;
    assert_eq!(created["checkout"], "raffle", "{created}");
    let id = created["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("id");
    (sku, id)
}

pub(crate) async fn enter(app: &TestApp, sku: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("/api/v1/sales/{sku}/entries"))
        .body_json(&body)
        .send()
        .await;
    status_and_json(response).await
}

pub(crate) async fn entry(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(
        app.client
            .get(format!("/api/v1/sales/{sku}/entries/{user}"))
            .send()
            .await,
    )
    .await
}

pub(crate) async fn confirm(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(
        app.client
            .post(format!("/api/v1/sales/{sku}/entries/{user}/confirm"))
            .send()
            .await,
    )
    .await
}

pub(crate) async fn withdraw(app: &TestApp, sku: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(
        app.client
            .delete(format!("/api/v1/sales/{sku}/entries/{user}"))
            .send()
            .await,
    )
    .await
}

/// Ends the entry window now (the database clock).
pub(crate) async fn end_window(app: &TestApp, sale: Uuid) {
    sqlx::query("UPDATE sales SET ends_at = now() WHERE id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("end the window");
}

/// Ticks until the raffle reports nothing left to do.
pub(crate) async fn tick_until_finished(app: &TestApp, sale: Uuid) {
    for _ in 0..50 {
        if app
            .store
            .raffle_tick(sale, 500)
            .await
            .expect("tick")
            .finished
        {
            return;
        }
    }
    panic!("the raffle never finished");
}

/// Users by status, straight from the table.
pub(crate) async fn statuses(app: &TestApp, sale: Uuid) -> HashMap<String, String> {
    sqlx::query_as("SELECT user_id, status FROM raffle_entries WHERE sale_id = $1")
        .bind(sale)
        .fetch_all(app.store.pool())
        .await
        .expect("entries")
        .into_iter()
        .collect()
}

/// The draw as anyone replays it from the seed the admin view shows: one ORDER BY.
pub(crate) async fn replay(app: &TestApp, sku: &str, sale: Uuid) -> Vec<String> {
    let (_, admin) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    let seed = admin["raffle"]["drawSeed"]
        .as_str()
        .expect("the seed is shown")
        .to_string();
    sqlx::query_scalar(
        "SELECT user_id FROM raffle_entries WHERE sale_id = $1 AND draw_position IS NOT NULL
          ORDER BY md5($2 || user_id), user_id COLLATE \"C\"",
    )
    .bind(sale)
    .bind(seed)
    .fetch_all(app.store.pool())
    .await
    .expect("replay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_entrants_on_a_hundred_units_buy_exactly_a_hundred_in_draw_order() {
    let app = spawn_app().await;
    let (sku, sale) = raffle(&app, 100, json!({"holdSeconds": 600})).await;
    // 1,000 entries released together.
    let barrier = Arc::new(Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (app_client, barrier, sku) = (app.client.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = app_client
                .post(format!("/api/v1/sales/{sku}/entries"))
                .body_json(&json!({"userId": format!("e-{i:04}")}))
                .send()
                .await;
            status_and_json(response).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.expect("entry");
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "entered");
        assert!(
            body.get("drawSeed").is_none(),
            "the seed is hidden until the draw"
        );
    }
    // Entering again answers the same entry; nothing moved on the sale.
    let (status, again) = enter(&app, &sku, json!({"userId": "e-0007", "quantity": 1})).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("entered"))
    );
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 100, 0, 0));
    let (_, admin) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert!(admin["raffle"].get("drawSeed").is_none(), "{admin}");
    assert_eq!(admin["raffle"]["entered"], 1000);

    end_window(&app, sale).await;
    let (status, late) = enter(&app, &sku, json!({"userId": "late"})).await;
    assert_eq!(
        (status, code(&late)),
        (StatusCode::CONFLICT, "NOT_ACCEPTING_ENTRIES")
    );
    assert_eq!(late["state"], "ended");

    // Two ticks at once (two instances): one ranks, both select; nothing twice.
    let (a, b) = tokio::join!(
        app.store.raffle_tick(sale, 500),
        app.store.raffle_tick(sale, 500)
    );
    let (a, b) = (a.expect("tick"), b.expect("tick"));
    assert_eq!(a.selected + b.selected, 100, "{a:?} {b:?}");
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 0, 100, 0));
    let order = replay(&app, &sku, sale).await;
    assert_eq!(order.len(), 1000);
    let positions: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM raffle_entries WHERE sale_id = $1 ORDER BY draw_position",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("positions");
    assert_eq!(positions, order, "the draw is the replay of its seed");
    let selected: HashSet<String> = statuses(&app, sale)
        .await
        .into_iter()
        .filter(|(_, status)| status == "selected")
        .map(|(user, _)| user)
        .collect();
    let first: HashSet<String> = order[..100].iter().cloned().collect();
    assert_eq!(
        selected, first,
        "the first hundred in draw order hold the units"
    );
    let (_, shown) = entry(&app, &sku, &order[0]).await;
    assert_eq!(shown["status"], "selected");
    assert_eq!(shown["drawPosition"], 1);
    assert!(
        shown["holdExpiresAt"].is_string() && shown["drawSeed"].is_string(),
        "{shown}"
    );

    // An auditor reads the invariants all along the rest.
    let done = Arc::new(AtomicBool::new(false));
    let auditor = {
        let (store, sku, done) = (app.store.clone(), sku.clone(), done.clone());
        tokio::spawn(async move {
            let mut audits = 0;
            while !done.load(Ordering::Acquire) {
                let broken = broken_invariants(&store, &sku).await;
                assert!(broken.is_empty(), "{broken:?}");
                audits += 1;
            }
            audits
        })
    };
    // Of the hundred: 60 confirm, 30 let the hold run out, 10 withdraw.
    let mut confirms = Vec::new();
    for user in &order[..60] {
        let (client, sku, user) = (app.client.clone(), sku.clone(), user.clone());
        confirms.push(tokio::spawn(async move {
            let response = client
                .post(format!("/api/v1/sales/{sku}/entries/{user}/confirm"))
                .send()
                .await;
            status_and_json(response).await
        }));
    }
    for task in confirms {
        let (status, body) = task.await.expect("confirm");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    sqlx::query(
        "UPDATE raffle_entries SET hold_expires_at = now() - interval '1 second'
          WHERE sale_id = $1 AND user_id = ANY($2)",
    )
    .bind(sale)
    .bind(&order[60..90])
    .execute(app.store.pool())
    .await
    .expect("let 30 holds run out");
    let (status, late_confirm) = confirm(&app, &sku, &order[60]).await;
    assert_eq!(
        (status, code(&late_confirm)),
        (StatusCode::GONE, "HOLD_EXPIRED")
    );
    for user in &order[90..100] {
        let (status, body) = withdraw(&app, &sku, user).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("withdrawn"))
        );
    }
    let (status, waiting) = confirm(&app, &sku, &order[100]).await;
    assert_eq!(
        (status, code(&waiting)),
        (StatusCode::CONFLICT, "NOT_SELECTED")
    );
    // The 40 units pass to the next 40 in draw order.
    let report = app.store.raffle_tick(sale, 500).await.expect("tick");
    assert_eq!((report.expired, report.selected), (30, 40), "{report:?}");
    for user in &order[100..140] {
        let (status, body) = confirm(&app, &sku, user).await;
        assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
    }
    tick_until_finished(&app, sale).await;
    done.store(true, Ordering::Release);
    assert!(auditor.await.expect("auditor") > 0);

    assert_eq!(counters(app.store.pool(), &sku).await, (100, 0, 0, 100));
    let finished = statuses(&app, sale).await;
    let count = |status: &str| finished.values().filter(|s| s.as_str() == status).count();
    assert_eq!(
        (
            count("purchased"),
            count("expired"),
            count("withdrawn"),
            count("not_selected")
        ),
        (100, 30, 10, 860)
    );
    let bought: HashSet<String> =
        sqlx::query_scalar("SELECT user_id FROM purchases WHERE sale_id = $1")
            .bind(sale)
            .fetch_all(app.store.pool())
            .await
            .expect("buyers")
            .into_iter()
            .collect();
    let expected: HashSet<String> = order[..60]
        .iter()
        .chain(&order[100..140])
        .cloned()
        .collect();
    assert_eq!(
        bought, expected,
        "exactly the entrants whose turn came, in draw order"
    );
    let (_, loser) = entry(&app, &sku, &order[999]).await;
    assert_eq!(loser["status"], "not_selected");
    assert!(broken_invariants(&app.store, &sku).await.is_empty());

    // Ticking again, twice at once, changes nothing.
    let before = finished.clone();
    let (a, b) = tokio::join!(
        app.store.raffle_tick(sale, 500),
        app.store.raffle_tick(sale, 500)
    );
    assert!(a.expect("tick").finished && b.expect("tick").finished);
    assert_eq!(statuses(&app, sale).await, before);
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 0, 0, 100));
    let drawn: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE sale_id = $1 AND type = 'raffle.drawn'",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("events");
    assert_eq!(drawn, vec![1], "raffle.drawn once");
}
