//! Group commit across instances: two purchase queues (two service instances) on one
//! database, racing the same users and the last units, sell exactly the stock, once per user.

use std::collections::HashMap;
use std::sync::Arc;

use flashsale::store::{PurchaseOutcome, PurchaseQueue};
use tokio::sync::Barrier;

use std::time::Duration;

use crate::support::{counters, live_sale_id, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_batching_the_same_users_sell_the_stock_exactly_once_each() {
    let app = spawn_app().await;
    let sale = app.active_sale(150).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let instances = [
        PurchaseQueue::new(app.store.clone(), true, Duration::from_secs(4)),
        PurchaseQueue::new(app.store.clone(), true, Duration::from_secs(4)),
    ];
    // 300 users, each sending two requests, one through each instance, all at once.
    let barrier = Arc::new(Barrier::new(600));
    let mut tasks = Vec::new();
    for user in 0..300 {
        for queue in &instances {
            let (queue, barrier, sku) = (queue.clone(), barrier.clone(), sku.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let user_id = format!("racer-{user}");
                let outcome = queue.purchase(&sku, &user_id).await.expect("purchase");
                (user_id, outcome)
            }));
        }
    }
    let mut per_user: HashMap<String, Vec<&'static str>> = HashMap::new();
    for task in tasks {
        let (user, outcome) = task.await.expect("task");
        let name = match outcome {
            PurchaseOutcome::Purchased(_) => "purchased",
            PurchaseOutcome::AlreadyPurchased(_) => "already",
            PurchaseOutcome::SoldOut => "sold_out",
            other => panic!("{user}: unexpected {other:?}"),
        };
        per_user.entry(user).or_default().push(name);
    }
    let mut winners = 0;
    for (user, outcomes) in &per_user {
        let bought = outcomes.iter().filter(|o| **o == "purchased").count();
        assert!(bought <= 1, "{user} bought twice: {outcomes:?}");
        if bought == 1 {
            winners += 1;
            assert!(
                !outcomes.contains(&"sold_out"),
                "{user}: a buyer's repeat is never SOLD_OUT: {outcomes:?}"
            );
        }
    }
    assert_eq!(winners, 150);
    assert_eq!(counters(app.store.pool(), &sku).await, (150, 0, 0, 150));
    let id = live_sale_id(&app.store, &sku).await;
    let report = app.store.audit_sale(id).await.expect("audit");
    assert!(report.passed(), "{:?}", report.checks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_commit_off_the_same_burst_sells_the_same_way() {
    let app = spawn_app().await;
    let sale = app.active_sale(20).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let queue = PurchaseQueue::new(app.store.clone(), false, Duration::from_secs(4));
    let barrier = Arc::new(Barrier::new(100));
    let mut tasks = Vec::new();
    for user in 0..100 {
        let (queue, barrier, sku) = (queue.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            queue
                .purchase(&sku, &format!("u{user}"))
                .await
                .expect("purchase")
        }));
    }
    let mut bought = 0;
    for task in tasks {
        match task.await.expect("task") {
            PurchaseOutcome::Purchased(_) => bought += 1,
            PurchaseOutcome::SoldOut => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(bought, 20);
    assert_eq!(counters(app.store.pool(), &sku).await, (20, 0, 0, 20));
}
