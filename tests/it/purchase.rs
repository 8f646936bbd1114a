//! Instant checkout under real concurrency: exact stock, one unit per user, exact refusals.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use poem::http::StatusCode;
use tokio::sync::Barrier;

use crate::support::{code, counters, purchase, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_buyers_at_once_buy_exactly_the_stock_and_the_rest_are_told_sold_out() {
    let app = spawn_app().await;
    let sale = app.active_sale(100).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let buyers = 1000;
    let barrier = Arc::new(Barrier::new(buyers));
    let mut tasks = Vec::new();
    for i in 0..buyers {
        let (client, barrier, sku) = (app.client.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let user = format!("buyer-{i}");
            let (status, body) = purchase(&client, &sku, &user).await;
            (user, status, body)
        }));
    }
    let mut winners = HashSet::new();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (user, status, body) = task.await.expect("task");
        if status == StatusCode::CREATED {
            assert_eq!(body["userId"], user.as_str());
            winners.insert(user);
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            *refusals.entry(code(&body).to_string()).or_default() += 1;
        }
    }
    assert_eq!(winners.len(), 100);
    assert_eq!(refusals, HashMap::from([("SOLD_OUT".to_string(), 900)]));
    assert_eq!(counters(app.store.pool(), &sku).await, (100, 0, 0, 100));
    let buyers_in_table: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT user_id) FROM purchases p JOIN sales s ON s.id = p.sale_id WHERE s.sku = $1",
    )
    .bind(&sku)
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!(buyers_in_table, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_racing_themselves_fifty_times_buys_once_and_loses_no_stock() {
    let app = spawn_app().await;
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, barrier, sku) = (app.client.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            purchase(&client, &sku, "same-user").await
        }));
    }
    let mut created = Vec::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        let (status, body) = task.await.expect("task");
        match status {
            StatusCode::CREATED => created.push(body),
            StatusCode::CONFLICT => {
                assert_eq!(code(&body), "ALREADY_PURCHASED", "{body}");
                duplicates.push(body);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(duplicates.len(), 49);
    for duplicate in &duplicates {
        assert_eq!(
            duplicate["purchase"]["id"], created[0]["id"],
            "the refusal carries the purchase the user owns"
        );
    }
    assert_eq!(counters(app.store.pool(), &sku).await, (10, 9, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_after_sell_out_is_told_already_purchased_not_sold_out() {
    let app = spawn_app().await;
    let sale = app.active_sale(1).await;
    let sku = sale["sku"].as_str().expect("sku");
    let (status, bought) = app.purchase(sku, "winner").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.purchase(sku, "winner").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(body["purchase"], bought);
    let (status, body) = app.purchase(sku, "latecomer").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_can_be_read_back_by_sale_id_or_sku() {
    let app = spawn_app().await;
    let sale = app.active_sale(5).await;
    let (sku, id) = (
        sale["sku"].as_str().expect("sku"),
        sale["id"].as_str().expect("id"),
    );
    let (status, bought) = app.purchase(id, "reader").await;
    assert_eq!(status, StatusCode::CREATED);
    for sale_ref in [sku, id] {
        let response = app
            .client
            .get(format!("/api/v1/sales/{sale_ref}/purchases/reader"))
            .send()
            .await;
        let (status, body) = crate::support::status_and_json(response).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, bought);
    }
    let response = app
        .client
        .get(format!("/api/v1/sales/{sku}/purchases/nobody"))
        .send()
        .await;
    let (status, body) = crate::support::status_and_json(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "NOT_PURCHASED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_sale_refuses_instant_purchases_with_wrong_checkout() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(
            serde_json::json!({"sku": "queued-1", "name": "Q", "stock": 5, "checkout": "queued"}),
        )
        .await;
    assert_eq!(sale["checkout"], "queued");
    let (status, body) = app.purchase("queued-1", "someone").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "WRONG_CHECKOUT")
    );
    assert_eq!(counters(app.store.pool(), "queued-1").await, (5, 5, 0, 0));
}
