//! Quantities and per-customer limits against real Postgres: orders of several units racing
//! the last units (all or nothing), one buyer's concurrent orders against their limit on
//! several instances. The validation codes are in `quantity_input.rs`, queued holds of several units are in
//! `quantity_holds.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{PurchaseBatcher, PurchaseOutcome};
use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::queue::broken_invariants;
use crate::support::{TestApp, code, counters, spawn_app, status_and_json};

async fn post(app: &TestApp, path: String, body: Value) -> (StatusCode, Value) {
    status_and_json(app.client.post(path).body_json(&body).send().await).await
}

pub(crate) async fn order(app: &TestApp, sale: &str, body: Value) -> (StatusCode, Value) {
    post(app, format!("/api/v1/sales/{sale}/purchases"), body).await
}

/// The `userId` and `quantity` of the sale's events of `kind`, in sequence order (read from
/// the outbox table: the feed may wait for other tests' transactions on the server).
pub(crate) async fn event_quantities(app: &TestApp, sale: Uuid, kind: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT data->>'userId', (data->>'quantity')::bigint FROM events
          WHERE sale_id = $1 AND type = $2 ORDER BY sequence",
    )
    .bind(sale)
    .bind(kind)
    .fetch_all(app.store.pool())
    .await
    .expect("events")
}

pub(crate) async fn limited_sale(
    app: &TestApp,
    stock: i64,
    limit: i64,
    max_per_order: i64,
) -> String {
    let sku = format!("qty-{}", Uuid::new_v4().simple());
    app.create_sale(
        json!({"sku": sku, "name": "Multi-unit drop", "stock": stock,
                           "perCustomerLimit": limit, "maxPerOrder": max_per_order}),
    )
    .await;
    sku
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_racing_the_last_units_with_several_each_get_whole_orders_and_the_stock_exactly() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 50, 5, 5).await;
    let buyers = 120;
    let barrier = Arc::new(Barrier::new(buyers));
    let mut tasks = Vec::new();
    for i in 0..buyers {
        let (client, barrier, sku) = (app.client.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let quantity = 1 + (i % 5) as i64;
            let user = format!("buyer-{i}");
            barrier.wait().await;
            let response = client
                .post(format!("/api/v1/sales/{sku}/purchases"))
                .body_json(&json!({"userId": user, "quantity": quantity}))
                .send()
                .await;
            let (status, body) = status_and_json(response).await;
            (user, quantity, status, body)
        }));
    }
    let (mut sold, mut insufficient, mut sold_out) = (0, Vec::new(), 0);
    for task in tasks {
        let (user, quantity, status, body) = task.await.expect("task");
        match (status, code(&body)) {
            (StatusCode::CREATED, _) => {
                assert_eq!(
                    (body["userId"].as_str(), body["quantity"].as_i64()),
                    (Some(user.as_str()), Some(quantity)),
                    "a whole order: {body}"
                );
                sold += quantity;
            }
            (StatusCode::CONFLICT, "INSUFFICIENT_STOCK") => {
                let available = body["available"].as_i64().expect("available");
                assert!(
                    (1..quantity).contains(&available),
                    "{quantity} asked: {body}"
                );
                insufficient.push(quantity);
            }
            (StatusCode::CONFLICT, "SOLD_OUT") => sold_out += 1,
            other => panic!("{user}: unexpected {other:?}: {body}"),
        }
    }
    let (stock, available, held, sold_counter) = counters(app.store.pool(), &sku).await;
    assert_eq!((stock, held), (50, 0));
    assert_eq!(
        i64::from(sold_counter),
        sold,
        "sold counts units of the 201s"
    );
    assert_eq!(i64::from(available), 50 - sold);
    // Stock only goes down: every order refused for too few units asked for more than what
    // is left now, and SOLD_OUT was said only once nothing was left.
    for quantity in &insufficient {
        assert!(
            i64::from(available) < *quantity,
            "{quantity} would fit in {available}"
        );
    }
    if sold_out > 0 {
        assert_eq!(available, 0);
    }
    // What is left (fewer units than any refused order asked) goes to single-unit buyers.
    for i in 0..available {
        let (status, body) = order(&app, &sku, json!({"userId": format!("late-{i}")})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = order(&app, &sku, json!({"userId": "too-late"})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));
    assert_eq!(counters(app.store.pool(), &sku).await, (50, 0, 0, 50));
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM purchases p JOIN sales s ON s.id = p.sale_id
          WHERE s.sku = $1 AND p.user_id LIKE 'buyer-%'",
    )
    .bind(&sku)
    .fetch_one(app.store.pool())
    .await
    .expect("orders");
    assert!(rows as usize + insufficient.len() + sold_out <= buyers);
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_buyer_ordering_at_once_on_three_instances_never_passes_the_limit() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 100, 5, 3).await;
    let instances = [
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5)),
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5)),
        // Group commit off: the single-statement path races the batches.
        PurchaseBatcher::new(app.store.clone(), false, Duration::from_secs(5)),
    ];
    let orders = 60;
    let barrier = Arc::new(Barrier::new(orders));
    let mut tasks = Vec::new();
    for i in 0..orders {
        let (door, barrier, sku) = (instances[i % 3].clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let quantity = 1 + (i % 3) as i32;
            barrier.wait().await;
            let outcome = door.purchase_units(&sku, "greedy", quantity).await;
            (quantity, outcome.expect("an answer"))
        }));
    }
    let (mut bought, mut refused) = (0, Vec::new());
    for task in tasks {
        match task.await.expect("task") {
            (quantity, PurchaseOutcome::Purchased(purchase)) => {
                assert_eq!(purchase.quantity, quantity);
                bought += quantity;
            }
            (quantity, PurchaseOutcome::LimitReached { remaining }) => {
                assert!(
                    (0..quantity).contains(&remaining),
                    "{quantity}: {remaining}"
                );
                refused.push(remaining);
            }
            (quantity, other) => panic!("{quantity}: unexpected {other:?}"),
        }
    }
    assert!(
        bought <= 5,
        "the buyer owns {bought} units, over the limit of 5"
    );
    // Units only grow, so every refusal's `remaining` is at least what remains now.
    for remaining in &refused {
        assert!(
            *remaining >= 5 - bought,
            "remaining {remaining}, owned {bought}"
        );
    }
    // Orders of 1 were among them: the buyer got to the limit.
    assert_eq!(bought, 5);
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 95, 0, 5));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_below_the_limit_buys_again_until_the_limit_and_hears_what_remains() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 6, 4, 3).await;
    let (status, first) = order(&app, &sku, json!({"userId": "amy", "quantity": 3})).await;
    assert_eq!(
        (status, first["quantity"].as_i64()),
        (StatusCode::CREATED, Some(3)),
        "{first}"
    );
    let (status, body) = order(&app, &sku, json!({"userId": "amy", "quantity": 2})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "LIMIT_REACHED")
    );
    assert_eq!(body["remaining"], 1);
    let (status, second) = order(&app, &sku, json!({"userId": "amy"})).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a buyer below the limit may buy again"
    );
    assert_ne!(second["id"], first["id"]);
    let (status, body) = order(&app, &sku, json!({"userId": "amy"})).await;
    assert_eq!(
        (status, code(&body), body["remaining"].as_i64()),
        (StatusCode::CONFLICT, "LIMIT_REACHED", Some(0))
    );
    // Two units left: an order of three is refused whole, with what is left.
    let (status, body) = order(&app, &sku, json!({"userId": "ben", "quantity": 3})).await;
    assert_eq!(
        (status, code(&body), body["available"].as_i64()),
        (StatusCode::CONFLICT, "INSUFFICIENT_STOCK", Some(2))
    );
    let (status, _) = order(&app, &sku, json!({"userId": "ben", "quantity": 2})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(counters(app.store.pool(), &sku).await, (6, 0, 0, 6));
    // At the limit and sold out: the limit is what the buyer hears.
    let (status, body) = order(&app, &sku, json!({"userId": "amy"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "LIMIT_REACHED")
    );

    // Events, the export and the buyer's list carry the quantities.
    let sale = crate::support::live_sale_id(&app.store, &sku).await;
    let quantities = event_quantities(&app, sale, "purchase.created").await;
    let quantities: Vec<i64> = quantities.into_iter().map(|(_, q)| q).collect();
    assert_eq!(quantities, vec![3, 1, 2]);
    let (status, csv) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/purchases?format=csv"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let csv = csv.as_str().expect("csv text");
    assert!(
        csv.starts_with("purchase_id,sale_id,user_id,created_at,quantity,variant\n"),
        "{csv}"
    );
    let last_columns: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|line| line.rsplit(',').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        last_columns,
        vec!["3", "1", "2"],
        "amy's two orders, then ben's"
    );
    let (_, page) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/purchases?limit=1"))
        .await;
    assert_eq!(
        page["purchases"].as_array().map(Vec::len),
        Some(2),
        "{page}"
    );
    assert_eq!(page["nextCursor"], "amy");
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

pub(crate) async fn join_units(
    app: &TestApp,
    sku: &str,
    user: &str,
    quantity: i64,
) -> (StatusCode, Value) {
    let body = json!({"userId": user, "quantity": quantity});
    post(app, format!("/api/v1/sales/{sku}/queue"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_one_batch_a_buyers_orders_are_decided_one_after_another() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 10, 4, 2).await;
    let door = PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5));
    let barrier = Arc::new(Barrier::new(5));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (door, barrier, sku) = (door.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            door.purchase_units(&sku, "repeat", 2)
                .await
                .expect("answer")
        }));
    }
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    for task in tasks {
        let name = match task.await.expect("task") {
            PurchaseOutcome::Purchased(_) => "purchased",
            PurchaseOutcome::LimitReached { remaining: 0 } => "limit",
            other => panic!("unexpected {other:?}"),
        };
        *outcomes.entry(name).or_default() += 1;
    }
    assert_eq!(outcomes, HashMap::from([("purchased", 2), ("limit", 3)]));
    assert_eq!(counters(app.store.pool(), &sku).await, (10, 6, 0, 4));
}
