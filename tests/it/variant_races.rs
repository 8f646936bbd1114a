//! Variants in the races around them, against real Postgres: allow-list removals racing a
//! variant's lone purchases (the lock order: list row, sale row, variant row), and one buyer
//! of a limit-one sale asking for two variants in one batch.

use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{Order, PurchaseBatcher, PurchaseOutcome};
use poem::http::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;

use crate::allowlist::{listed_sale, put_json, remove, users};
use crate::queue::broken_invariants;
use crate::support::spawn_app;

fn one(variant: Option<i16>) -> Order {
    Order {
        quantity: 1,
        key: None,
        variant,
    }
}

/// Fails on the statement before the fix: its sale-row lock came before the buyer's list
/// row, and a removal (list row, then sale row) deadlocked with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_racing_lone_purchases_of_a_variant_never_deadlock() {
    let app = spawn_app().await;
    let variants = json!([{"code": "S", "stock": 500}, {"code": "M", "stock": 500}]);
    let (sku, _) = listed_sale(&app, 1_000, json!({"variants": variants})).await;
    let buyers = users("v", 0..200);
    put_json(&app, &sku, &buyers).await;
    let lone = PurchaseBatcher::new(app.store.clone(), false, Duration::from_secs(4));
    let barrier = Arc::new(Barrier::new(buyers.len() * 2));
    let mut tasks = Vec::new();
    for (i, user) in buyers.into_iter().enumerate() {
        let (client_app, barrier1, sku1, user1) = (
            crate::allowlist::share(&app),
            barrier.clone(),
            sku.clone(),
            user.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier1.wait().await;
            let status = remove(&client_app, &sku1, &user1).await;
            assert!(status.is_success(), "removal of {user1}: {status}");
            None
        }));
        let (lone, barrier2, sku2) = (lone.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            barrier2.wait().await;
            let variant = if i % 2 == 0 { "S" } else { "M" };
            Some(
                lone.purchase_order(&sku2, &user, one(None), Some(variant))
                    .await,
            )
        }));
    }
    for task in tasks {
        if let Some(outcome) = task.await.expect("task") {
            match outcome {
                Ok(PurchaseOutcome::Purchased(_) | PurchaseOutcome::NotEligible) => {}
                other => panic!("a purchase racing its removal: {other:?}"),
            }
        }
    }
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_one_buyer_asking_two_variants_at_once_is_sold_the_one_that_has_units() {
    let app = spawn_app().await;
    let sku = format!("two-{}", uuid::Uuid::new_v4().simple());
    let variants = json!([{"code": "S", "stock": 1}, {"code": "M", "stock": 5}]);
    app.create_sale(json!({"sku": sku, "name": "Two sizes", "variants": variants}))
        .await;
    let door = PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(4));
    let bought = door
        .purchase_order(&sku, "first", one(None), Some("S"))
        .await
        .expect("answer");
    assert!(
        matches!(bought, PurchaseOutcome::Purchased(_)),
        "{bought:?}"
    );
    // S is sold out now. Both requests of one buyer in flight at once: S is refused, M sells.
    for round in 0..5 {
        let user = format!("both-{round}");
        let (s, m) = tokio::join!(
            door.purchase_order(&sku, &user, one(None), Some("S")),
            door.purchase_order(&sku, &user, one(None), Some("M")),
        );
        let (s, m) = (s.expect("S"), m.expect("M"));
        assert!(matches!(s, PurchaseOutcome::VariantSoldOut), "{s:?}");
        assert!(
            matches!(m, PurchaseOutcome::Purchased(ref p) if p.variant.as_deref() == Some("M")),
            "{m:?}"
        );
    }
    // A buyer who bought M asking for M and S at once: one purchase, the limit is 1.
    let (again_m, again_s) = tokio::join!(
        door.purchase_order(&sku, "both-0", one(None), Some("M")),
        door.purchase_order(&sku, "both-0", one(None), Some("S")),
    );
    assert!(
        matches!(again_m, Ok(PurchaseOutcome::AlreadyPurchased(_))),
        "{again_m:?}"
    );
    assert!(
        matches!(
            again_s,
            Ok(PurchaseOutcome::AlreadyPurchased(_)
                | PurchaseOutcome::SoldOut
                | PurchaseOutcome::VariantSoldOut)
        ),
        "{again_s:?}"
    );
    let (status, view) = crate::support::status_and_json(
        app.client.get(format!("/api/v1/sales/{sku}")).send().await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["sold"], 6, "{view}");
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}
