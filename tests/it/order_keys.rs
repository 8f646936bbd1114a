//! Order keys: with a per-customer limit above 1 every request is a new order, unless it
//! names a key the buyer has ordered under; then it is answered with that order, so a retry
//! after a lost answer never buys twice, on any number of instances.

use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{Order, PurchaseBatcher, PurchaseOutcome};
use poem::http::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::quantities::{limited_sale, order};
use crate::queue::{broken_invariants, queued_sale};
use crate::support::{code, counters, spawn_app, status_and_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_an_order_key_again_is_answered_with_that_order() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 10, 4, 2).await;
    let (first_key, second_key) = (Uuid::new_v4(), Uuid::new_v4());
    let body = json!({"userId": "amy", "quantity": 2, "orderKey": first_key});
    let (status, first) = order(&app, &sku, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = order(&app, &sku, body).await;
    assert_eq!(
        (status, code(&again)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(again["purchase"], first, "the retry learns its order");
    let body = json!({"userId": "amy", "quantity": 2, "orderKey": second_key});
    let (status, _) = order(&app, &sku, body).await;
    assert_eq!(status, StatusCode::CREATED, "a new key is a new order");
    // At the limit, the first key still answers with its order, not LIMIT_REACHED.
    let body = json!({"userId": "amy", "quantity": 1, "orderKey": first_key});
    let (status, again) = order(&app, &sku, body).await;
    assert_eq!(
        (status, code(&again)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(again["purchase"]["id"], first["id"]);
    // Another buyer's key is theirs alone.
    let body = json!({"userId": "ben", "quantity": 2, "orderKey": first_key});
    let (status, _) = order(&app, &sku, body).await;
    assert_eq!(status, StatusCode::CREATED);
    for user in ["cat", "dan"] {
        let (status, _) = order(&app, &sku, json!({"userId": user, "quantity": 2})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    assert_eq!(counters(app.store.pool(), &sku).await, (10, 0, 0, 10));
    // Sold out: the key still answers with its order, a new one hears SOLD_OUT.
    let body = json!({"userId": "amy", "quantity": 2, "orderKey": first_key});
    let (status, again) = order(&app, &sku, body).await;
    assert_eq!(
        (status, code(&again)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(again["purchase"]["id"], first["id"]);
    let body = json!({"userId": "eve", "orderKey": Uuid::new_v4()});
    let (status, refused) = order(&app, &sku, body).await;
    assert_eq!((status, code(&refused)), (StatusCode::CONFLICT, "SOLD_OUT"));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );

    // A queue entry is its own key: a join naming one is refused.
    let (queued, _) = queued_sale(&app, 5, json!({})).await;
    let response = app
        .client
        .post(format!("/api/v1/sales/{queued}/queue"))
        .body_json(&json!({"userId": "amy", "orderKey": first_key}))
        .send()
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_key_sent_at_once_on_three_instances_buys_once() {
    let app = spawn_app().await;
    let sku = limited_sale(&app, 100, 5, 2).await;
    let instances = [
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5)),
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5)),
        PurchaseBatcher::new(app.store.clone(), false, Duration::from_secs(5)),
    ];
    let key = Uuid::new_v4();
    let requests = 30;
    let barrier = Arc::new(Barrier::new(requests));
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (door, barrier, sku) = (instances[i % 3].clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let order = Order {
                quantity: 2,
                key: Some(key),
                variant: None,
            };
            door.purchase_order(&sku, "retrier", order, None).await
        }));
    }
    let (mut bought, mut repeats) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.expect("task").expect("an answer") {
            PurchaseOutcome::Purchased(purchase) => bought.push(purchase.id),
            PurchaseOutcome::AlreadyPurchased(purchase) => repeats.push(purchase.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(bought.len(), 1, "one key, one order: {bought:?}");
    assert!(repeats.iter().all(|id| *id == bought[0]), "{repeats:?}");
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 98, 0, 2));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}
