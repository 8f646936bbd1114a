//! A raffle's rules against real Postgres: entries outside the window and bad input refused
//! with their codes, a withdrawn entrant kept out, a cancelled raffle's entrants told, and
//! multi-unit entries served whole in draw order.

use poem::http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::allowlist::{remove, upload};
use crate::queue::broken_invariants;
use crate::raffle::{
    confirm, end_window, enter, entry, raffle, replay, tick_until_finished, withdraw,
};
use crate::support::{code, counters, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_outside_the_window_and_bad_input_are_refused_with_codes() {
    let app = spawn_app().await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (scheduled, _) = raffle(&app, 10, json!({"startsAt": later})).await;
    let (status, body) = enter(&app, &scheduled, json!({"userId": "early"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "NOT_ACCEPTING_ENTRIES")
    );
    assert_eq!(body["state"], "scheduled");

    let (sku, _) = raffle(&app, 10, json!({"perCustomerLimit": 3, "maxPerOrder": 2})).await;
    let (status, body) = enter(&app, &sku, json!({"userId": "u", "quantity": 0})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let (status, body) = enter(&app, &sku, json!({"userId": "u", "quantity": 3})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "QUANTITY_TOO_LARGE")
    );
    assert_eq!(body["maxPerOrder"], 2);
    let (status, body) = enter(
        &app,
        &sku,
        json!({"userId": "u", "orderKey": Uuid::new_v4()}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    // A raffle sells nothing outside its draw.
    let (status, body) = app.purchase(&sku, "u").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "WRONG_CHECKOUT")
    );
    let (status, body) = app.join_queue(&sku, "u").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "WRONG_CHECKOUT")
    );
    let instant = app.active_sale(5).await;
    let instant = instant["sku"].as_str().expect("sku");
    let (status, body) = enter(&app, instant, json!({"userId": "u"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "WRONG_CHECKOUT")
    );

    let (status, body) = entry(&app, &sku, "nobody").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "NOT_ENTERED")
    );
    let (status, body) = enter(&app, &sku, json!({"userId": "quitter", "quantity": 2})).await;
    assert_eq!(
        (status, body["quantity"].as_i64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    let (status, body) = withdraw(&app, &sku, "quitter").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("withdrawn"))
    );
    let (status, body) = withdraw(&app, &sku, "quitter").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("withdrawn"))
    );
    let (status, body) = enter(&app, &sku, json!({"userId": "quitter"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "ENTRY_WITHDRAWN")
    );
    let (status, body) = confirm(&app, &sku, "quitter").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "NOT_SELECTED")
    );

    // A cancelled raffle takes no entries, and its entrants learn they were not selected.
    let (status, _) = enter(&app, &sku, json!({"userId": "hopeful"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = app
        .admin_post(&format!("/api/v1/admin/sales/{sku}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = enter(&app, &sku, json!({"userId": "after-cancel"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "NOT_ACCEPTING_ENTRIES")
    );
    assert_eq!(body["state"], "cancelled");
    let id = crate::support::live_sale_id(&app.store, &sku).await;
    tick_until_finished(&app, id).await;
    let (_, hopeful) = entry(&app, &sku, "hopeful").await;
    assert_eq!(hopeful["status"], "not_selected");
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_unit_entries_are_served_whole_in_draw_order_and_hopeless_ones_are_told() {
    let app = spawn_app().await;
    let (sku, sale) = raffle(&app, 5, json!({"perCustomerLimit": 3, "holdSeconds": 600})).await;
    for user in ["m-1", "m-2", "m-3", "m-4"] {
        let (status, body) = enter(&app, &sku, json!({"userId": user, "quantity": 2})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    end_window(&app, sale).await;
    let report = app.store.raffle_tick(sale, 500).await.expect("tick");
    assert_eq!((report.selected, report.not_selected), (2, 0), "{report:?}");
    let order = replay(&app, &sku, sale).await;
    // Two holds of 2 units: 1 unit is left, too few for the third entrant, who waits
    // (a hold may come back) rather than being passed over.
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 1, 4, 0));
    assert_eq!(entry(&app, &sku, &order[2]).await.1["status"], "entered");
    for user in &order[..2] {
        let (status, body) = confirm(&app, &sku, user).await;
        assert_eq!(
            (status, body["quantity"].as_i64()),
            (StatusCode::CREATED, Some(2))
        );
    }
    // Sold 4: the last unit can never cover an entry of 2.
    tick_until_finished(&app, sale).await;
    for user in &order[2..] {
        assert_eq!(entry(&app, &sku, user).await.1["status"], "not_selected");
    }
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 1, 0, 4));
    let types: Vec<String> =
        sqlx::query_scalar("SELECT type FROM events WHERE sale_id = $1 ORDER BY sequence")
            .bind(sale)
            .fetch_all(app.store.pool())
            .await
            .expect("events");
    let count = |kind: &str| types.iter().filter(|t| t.as_str() == kind).count();
    assert_eq!(
        (
            count("raffle.entered"),
            count("raffle.drawn"),
            count("raffle.selected"),
            count("purchase.created"),
            count("raffle.not_selected")
        ),
        (4, 1, 2, 2, 2),
        "{types:?}"
    );
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_raffle_takes_entries_only_from_its_list() {
    let app = spawn_app().await;
    let (sku, _) = raffle(&app, 10, json!({"allowlist": true})).await;
    let (status, _) = upload(&app, "PUT", &sku, "text/csv", "alice\nbob\n").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = enter(&app, &sku, json!({"userId": "alice"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = enter(&app, &sku, json!({"userId": "mallory"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "NOT_ELIGIBLE"),
        "{body}"
    );
    // Removed after entering: the entry stays, and entering again answers with it.
    assert_eq!(remove(&app, &sku, "alice").await, StatusCode::NO_CONTENT);
    let (status, body) = enter(&app, &sku, json!({"userId": "alice"})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("entered")),
        "{body}"
    );
    // Removed before entering: refused.
    assert_eq!(remove(&app, &sku, "bob").await, StatusCode::NO_CONTENT);
    let (status, body) = enter(&app, &sku, json!({"userId": "bob"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "NOT_ELIGIBLE"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrants_who_can_never_be_served_do_not_hold_back_one_behind_them() {
    let app = spawn_app().await;
    let (sku, sale) = raffle(&app, 3, json!({"perCustomerLimit": 2, "holdSeconds": 600})).await;
    // The draw's order of the candidates, computed from the seed as the draw will.
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT u FROM unnest($2::text[]) u, sale_raffles r WHERE r.sale_id = $1
          ORDER BY md5(r.draw_seed::text || u), u COLLATE \"C\"",
    )
    .bind(sale)
    .bind((0..5).map(|n| format!("e-{n}")).collect::<Vec<_>>())
    .fetch_all(app.store.pool())
    .await
    .expect("order");
    // The first four ask for two units each, the last for one.
    for (place, user) in order.iter().enumerate() {
        let quantity = if place == 4 { 1 } else { 2 };
        let (status, body) = enter(&app, &sku, json!({"userId": user, "quantity": quantity})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    end_window(&app, sale).await;
    let report = app.store.raffle_tick(sale, 500).await.expect("tick");
    assert_eq!(report.selected, 1, "{report:?}");
    assert_eq!(replay(&app, &sku, sale).await, order);
    assert_eq!(confirm(&app, &sku, &order[0]).await.0, StatusCode::CREATED);
    // One unit unsold: the three orders of two can never be served; the one behind them is
    // selected in the same tick (a head of one row used to hold only the first of them).
    let report = app.store.raffle_tick(sale, 500).await.expect("tick");
    assert_eq!(report.selected, 1, "{report:?}");
    assert_eq!(entry(&app, &sku, &order[4]).await.1["status"], "selected");
    assert!(broken_invariants(&app.store, &sku).await.is_empty());
}
