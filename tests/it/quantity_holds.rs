//! Queued holds that reserve a quantity: admission in ticket order by units, expiry,
//! release and confirm moving whole holds, and a hold larger than all that is left.

use poem::http::StatusCode;
use serde_json::{Value, json};

use crate::quantities::{event_quantities, join_units};
use crate::queue::{broken_invariants, queued_sale, tick};
use crate::support::{TestApp, counters, spawn_app, status_and_json};

async fn queue_call(app: &TestApp, method: &str, path: String) -> (StatusCode, Value) {
    let request = match method {
        "POST" => app.client.post(path),
        "DELETE" => app.client.delete(path),
        _ => app.client.get(path),
    };
    status_and_json(request.send().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_holds_reserve_their_quantity_through_admission_expiry_release_and_confirm() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 5, json!({"perCustomerLimit": 3})).await;
    for (user, quantity) in [("alice", 3), ("bob", 3), ("carol", 2)] {
        let (status, body) = join_units(&app, &sku, user, quantity).await;
        assert_eq!(
            (status, body["quantity"].as_i64()),
            (StatusCode::ACCEPTED, Some(quantity)),
            "{body}"
        );
    }
    // Alice's three units; bob's three do not fit in the two left, and carol stays behind him.
    assert_eq!(tick(&app.store, sale).await.admitted, 1);
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 2, 3, 0));
    let (_, alice) = queue_call(&app, "GET", format!("/api/v1/sales/{sku}/queue/alice")).await;
    assert_eq!(
        (alice["status"].as_str(), alice["quantity"].as_i64()),
        (Some("held"), Some(3))
    );

    // Her hold runs out: its three units come back, and bob and carol fill the five.
    sqlx::query(
        "UPDATE queue_entries SET hold_expires_at = now() - interval '1 millisecond'
          WHERE sale_id = $1 AND user_id = 'alice'",
    )
    .bind(sale)
    .execute(app.store.pool())
    .await
    .expect("expire");
    let report = tick(&app.store, sale).await;
    assert_eq!((report.expired, report.admitted), (1, 2));
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 0, 5, 0));

    let (status, bought) = queue_call(
        &app,
        "POST",
        format!("/api/v1/sales/{sku}/queue/bob/confirm"),
    )
    .await;
    assert_eq!(
        (status, bought["quantity"].as_i64()),
        (StatusCode::CREATED, Some(3)),
        "{bought}"
    );
    let (status, _) = queue_call(&app, "DELETE", format!("/api/v1/sales/{sku}/queue/carol")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 2, 0, 3));

    // Alice joins again for two: held, confirmed; the sale is sold out in units.
    let (status, _) = join_units(&app, &sku, "alice", 2).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(tick(&app.store, sale).await.admitted, 1);
    let (status, bought) = queue_call(
        &app,
        "POST",
        format!("/api/v1/sales/{sku}/queue/alice/confirm"),
    )
    .await;
    assert_eq!(
        (status, bought["quantity"].as_i64()),
        (StatusCode::CREATED, Some(2))
    );
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 0, 0, 5));

    let granted = event_quantities(&app, sale, "hold.granted").await;
    assert_eq!(
        granted,
        vec![
            ("alice".into(), 3),
            ("bob".into(), 3),
            ("carol".into(), 2),
            ("alice".into(), 2)
        ]
    );
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

/// A first buyer joins for two units and is admitted; `confirm_first` buys them.
async fn first_holds_two(app: &TestApp, sku: &str, sale: uuid::Uuid) {
    let _ = join_units(app, sku, "first", 2).await;
    assert_eq!(tick(&app.store, sale).await.admitted, 1);
}

async fn confirm_first(app: &TestApp, sku: &str) {
    let (status, _) = queue_call(
        app,
        "POST",
        format!("/api/v1/sales/{sku}/queue/first/confirm"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_larger_than_all_that_is_left_is_refused_at_the_door_or_passed_over() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 4, json!({"perCustomerLimit": 3})).await;
    first_holds_two(&app, &sku, sale).await;
    // Four units unsold (two held): an order of three may yet be served, and is queued.
    let (status, _) = join_units(&app, &sku, "big", 3).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let _ = join_units(&app, &sku, "small", 2).await;
    confirm_first(&app, &sku).await;
    // Two units unsold now: big's order can never be served. It is passed over, and a new
    // order of three is refused at the door with what is unsold.
    let (status, refused) = join_units(&app, &sku, "bigger", 3).await;
    assert_eq!(
        (
            status,
            refused["code"].as_str(),
            refused["available"].as_i64()
        ),
        (StatusCode::CONFLICT, Some("INSUFFICIENT_STOCK"), Some(2)),
        "{refused}"
    );
    assert_eq!(tick(&app.store, sale).await.admitted, 1);
    let (_, big) = queue_call(&app, "GET", format!("/api/v1/sales/{sku}/queue/big")).await;
    assert_eq!(big["status"], "sold_out", "{big}");
    let (_, small) = queue_call(&app, "GET", format!("/api/v1/sales/{sku}/queue/small")).await;
    assert_eq!(small["status"], "held");
    assert_eq!(counters(app.store.pool(), &sku).await, (4, 0, 2, 2));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_that_can_never_be_served_do_not_hold_back_a_buyer_behind_them() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 3, json!({"perCustomerLimit": 2})).await;
    first_holds_two(&app, &sku, sale).await;
    for user in ["big-1", "big-2", "big-3"] {
        let (status, _) = join_units(&app, &sku, user, 2).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let _ = join_units(&app, &sku, "small", 1).await;
    confirm_first(&app, &sku).await;
    // One unit left, none held: the room is one unit, so the head is one entry long. The
    // three orders of two at the front can never be served; the order of one behind them can.
    assert_eq!(tick(&app.store, sale).await.admitted, 1);
    let (_, small) = queue_call(&app, "GET", format!("/api/v1/sales/{sku}/queue/small")).await;
    assert_eq!(small["status"], "held", "{small}");
    assert_eq!(counters(app.store.pool(), &sku).await, (3, 0, 1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_bounded_by_its_batch_of_units_asks_to_be_run_again_at_once() {
    let app = spawn_app().await;
    let (sku, sale) = queued_sale(&app, 100, json!({"perCustomerLimit": 2})).await;
    for n in 0..5 {
        let _ = join_units(&app, &sku, &format!("pair-{n}"), 2).await;
    }
    // A batch of four units admits two entries of two: fewer entries than the batch, yet the
    // batch bounded it, and three more wait with units free.
    let report = app.store.queue_tick(sale, 4).await.expect("tick");
    assert_eq!((report.admitted, report.admitting), (2, true));
    // The stock bounds the next one (96 units, a batch of 500): nothing more to admit.
    let report = tick(&app.store, sale).await;
    assert_eq!((report.admitted, report.admitting), (3, false));
}
