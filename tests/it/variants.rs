//! Variants against real Postgres: buyers racing several variants to sell each out one by
//! one (group commit and the lone statement), the per-customer limit across variants from
//! several instances, the views, events and audit per variant, and the input codes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{Order, PurchaseBatcher, PurchaseOutcome};
use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::quantities::order;
use crate::queue::broken_invariants;
use crate::support::{TestApp, code, id_of, spawn_app, status_and_json};

const SIZES: [(&str, i64); 3] = [("S", 5), ("M", 12), ("L", 20)];

async fn variant_sale(app: &TestApp, limit: i64, max_per_order: i64) -> (String, Value) {
    let sku = format!("var-{}", Uuid::new_v4().simple());
    let variants: Vec<Value> = SIZES
        .iter()
        .map(|(code, stock)| json!({"code": code, "stock": stock}))
        .collect();
    let created = app
        .create_sale(
            json!({"sku": sku, "name": "Sneaker drop", "variants": variants,
                            "perCustomerLimit": limit, "maxPerOrder": max_per_order}),
        )
        .await;
    (sku, created)
}

/// Each variant's (stock, available, held, sold) in the public view, by code.
async fn variant_counters(app: &TestApp, sku: &str) -> HashMap<String, (i64, i64, i64, i64)> {
    let (status, view) =
        status_and_json(app.client.get(format!("/api/v1/sales/{sku}")).send().await).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view["variants"]
        .as_array()
        .expect("variants in the view")
        .iter()
        .map(|v| {
            let n = |field: &str| v[field].as_i64().expect("a count");
            let code = v["code"].as_str().expect("code").to_string();
            (code, (n("stock"), n("available"), n("held"), n("sold")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_with_variants_shows_each_and_its_totals_and_stock_defaults_to_their_sum() {
    let app = spawn_app().await;
    let (sku, created) = variant_sale(&app, 1, 1).await;
    assert_eq!(created["stock"], 37);
    assert_eq!(created["available"], 37);
    let codes: Vec<&str> = created["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| v["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["S", "M", "L"], "in the admin's order");
    assert_eq!(created["variants"][0]["soldOut"], false);
    let (status, admin) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["variants"][2]["stock"], 20);
    // A sale without variants shows none.
    let plain = app.active_sale(3).await;
    assert!(plain.get("variants").is_none(), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_are_validated_with_their_own_codes() {
    let app = spawn_app().await;
    let create = |body: Value| app.admin_post_json("/api/v1/admin/sales", body);
    let sku = || format!("bad-{}", Uuid::new_v4().simple());
    let two = json!([{"code": "42", "stock": 1}, {"code": "42", "stock": 2}]);
    let (status, body) = create(json!({"sku": sku(), "name": "x", "variants": two})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "DUPLICATE_VARIANT")
    );
    let one = json!([{"code": "42", "stock": 1}, {"code": "43", "stock": 2}]);
    let (status, body) =
        create(json!({"sku": sku(), "name": "x", "stock": 4, "variants": one})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        "{body}"
    );
    // The sum of the variants past the largest stock.
    let big = json!([{"code": "A", "stock": 6_000_000}, {"code": "B", "stock": 6_000_000}]);
    let (status, body) = create(json!({"sku": sku(), "name": "x", "variants": big})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        "{body}"
    );
    for bad in [
        json!([]),
        json!([{"code": "", "stock": 1}]),
        json!([{"code": "a b", "stock": 1}]),
        json!([{"code": "X", "stock": 0}]),
        json!([{"code": "X"}]),
    ] {
        let (status, body) = create(json!({"sku": sku(), "name": "x", "variants": bad})).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{bad}"
        );
    }
    let (status, body) = create(json!({"sku": sku(), "name": "x"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        "{body}"
    );

    let (sku, _) = variant_sale(&app, 1, 1).await;
    let (status, body) = order(&app, &sku, json!({"userId": "u1", "variant": "XXL"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "UNKNOWN_VARIANT")
    );
    let (status, body) = order(&app, &sku, json!({"userId": "u1"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VARIANT_REQUIRED")
    );
    let plain = app.active_sale(3).await;
    let plain_sku = plain["sku"].as_str().expect("sku");
    let (status, body) = order(&app, plain_sku, json!({"userId": "u1", "variant": "S"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "UNKNOWN_VARIANT")
    );
    // Nothing was sold by any of them.
    assert_eq!(variant_counters(&app, &sku).await["S"], (5, 5, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_racing_three_variants_sell_each_out_exactly_one_by_one() {
    race_three_variants(2).await;
}

/// Orders of one unit each: the group-commit statement's other decision (`UNITS_OF_ONE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_of_one_unit_each_racing_three_variants_sell_each_out_exactly() {
    race_three_variants(1).await;
}

/// 240 buyers, 80 per variant, orders of 1 to `most` units: demand far above every stock.
async fn race_three_variants(most: i64) {
    let app = spawn_app().await;
    let (sku, created) = variant_sale(&app, most, most).await;
    let sale = id_of(&created);
    let buyers = 240;
    let barrier = Arc::new(Barrier::new(buyers));
    let mut tasks = Vec::new();
    for i in 0..buyers {
        let (client, barrier, sku) = (app.client.clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let (variant, quantity) = (SIZES[i % 3].0, 1 + (i / 3) as i64 % most);
            barrier.wait().await;
            let response = client
                .post(format!("/api/v1/sales/{sku}/purchases"))
                .body_json(&json!({"userId": format!("b{i}"), "quantity": quantity,
                                   "variant": variant}))
                .send()
                .await;
            let (status, body) = status_and_json(response).await;
            (variant, quantity, status, body)
        }));
    }
    let mut units: HashMap<&str, i64> = HashMap::new();
    for task in tasks {
        let (variant, quantity, status, body) = task.await.expect("task");
        match status {
            StatusCode::CREATED => {
                assert_eq!(body["variant"], variant, "{body}");
                assert_eq!(body["quantity"], quantity);
                *units.entry(variant).or_default() += quantity;
            }
            StatusCode::CONFLICT => {
                let code = code(&body);
                assert!(matches!(code, "SOLD_OUT" | "INSUFFICIENT_STOCK"), "{body}");
                if code == "INSUFFICIENT_STOCK" {
                    assert!(body["available"].as_i64() < Some(quantity), "{body}");
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let counters = variant_counters(&app, &sku).await;
    for (variant, stock) in SIZES {
        assert_eq!(
            units.get(variant).copied(),
            Some(stock),
            "{variant}: the 201s"
        );
        assert_eq!(
            counters[variant],
            (stock, 0, 0, stock),
            "{variant}: the view"
        );
    }
    let (_, view) =
        status_and_json(app.client.get(format!("/api/v1/sales/{sku}")).send().await).await;
    assert_eq!(
        (view["soldOut"].as_bool(), view["state"].as_str()),
        (Some(true), Some("ended"))
    );
    assert!(
        view["variants"]
            .as_array()
            .expect("variants")
            .iter()
            .all(|v| v["soldOut"] == true)
    );
    let per_variant: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT data->>'variant', sum((data->>'quantity')::bigint)::bigint FROM events
          WHERE sale_id = $1 AND type = 'purchase.created' GROUP BY 1 ORDER BY 1",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("events");
    assert_eq!(
        per_variant,
        [
            ("L".to_string(), 20),
            ("M".to_string(), 12),
            ("S".to_string(), 5)
        ]
        .map(|(v, n)| (Some(v), n))
    );
    // The export names each order's variant.
    let (status, csv) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/purchases?format=csv"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let csv = csv.as_str().expect("csv text").to_string();
    let mut exported: HashMap<String, i64> = HashMap::new();
    for line in csv.lines().skip(1) {
        let mut fields = line.rsplit(',');
        let variant = fields.next().unwrap_or_default().to_string();
        let quantity: i64 = fields.next().and_then(|q| q.parse().ok()).unwrap_or(0);
        *exported.entry(variant).or_default() += quantity;
    }
    let expected: HashMap<String, i64> = SIZES.iter().map(|(v, n)| (v.to_string(), *n)).collect();
    assert_eq!(exported, expected);
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_variant_refuses_while_the_others_sell_on_both_paths() {
    let app = spawn_app().await;
    let (sku, _) = variant_sale(&app, 3, 3).await;
    for (path, batching) in [("lone", false), ("batched", true)] {
        let door = PurchaseBatcher::new(app.store.clone(), batching, Duration::from_secs(4));
        let buy = |user: String, quantity: i32, variant: &'static str| {
            let door = door.clone();
            let sku = sku.clone();
            async move {
                let order = Order {
                    quantity,
                    key: None,
                    variant: None,
                };
                door.purchase_order(&sku, &user, order, Some(variant))
                    .await
                    .expect("answer")
            }
        };
        if batching {
            // The lone path sold S's 5 units: S is sold out, M and L are not.
            let outcome = buy(format!("{path}-x"), 1, "S").await;
            assert!(
                matches!(outcome, PurchaseOutcome::VariantSoldOut),
                "{outcome:?}"
            );
            let outcome = buy(format!("{path}-y"), 3, "M").await;
            assert!(
                matches!(outcome, PurchaseOutcome::Purchased(_)),
                "{outcome:?}"
            );
            continue;
        }
        for i in 0..2 {
            let outcome = buy(format!("{path}-{i}"), 2, "S").await;
            assert!(
                matches!(outcome, PurchaseOutcome::Purchased(ref p) if p.variant.as_deref() == Some("S")),
                "{outcome:?}"
            );
        }
        let outcome = buy(format!("{path}-2"), 3, "S").await;
        assert!(
            matches!(outcome, PurchaseOutcome::InsufficientStock { available: 1 }),
            "{outcome:?}"
        );
        let outcome = buy(format!("{path}-3"), 1, "S").await;
        assert!(
            matches!(outcome, PurchaseOutcome::Purchased(_)),
            "{outcome:?}"
        );
    }
    let counters = variant_counters(&app, &sku).await;
    assert_eq!(counters["S"], (5, 0, 0, 5));
    assert_eq!(counters["M"], (12, 9, 0, 3));
    assert_eq!(counters["L"], (20, 20, 0, 0));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_counts_across_variants_for_one_buyer_racing_on_several_instances() {
    let app = spawn_app().await;
    let (sku, _) = variant_sale(&app, 3, 2).await;
    // Three instances (doors), one buyer ordering two units of each variant at once, twice
    // over: at most 3 units may be theirs, so exactly one order of two succeeds.
    let doors: Vec<PurchaseBatcher> = (0..3)
        .map(|_| PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(4)))
        .collect();
    let barrier = Arc::new(Barrier::new(6));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (door, barrier, sku) = (doors[i % 3].clone(), barrier.clone(), sku.clone());
        tasks.push(tokio::spawn(async move {
            let order = Order {
                quantity: 2,
                key: None,
                variant: None,
            };
            barrier.wait().await;
            door.purchase_order(&sku, "greedy", order, Some(SIZES[i % 3].0))
                .await
                .expect("answer")
        }));
    }
    let (mut bought, mut limited) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            PurchaseOutcome::Purchased(_) => bought += 1,
            PurchaseOutcome::LimitReached { remaining } => {
                assert_eq!(remaining, 1);
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((bought, limited), (1, 5));
    // The unit left of the limit can still be bought, of any variant, and no more.
    let (status, body) = order(&app, &sku, json!({"userId": "greedy", "variant": "L"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = order(&app, &sku, json!({"userId": "greedy", "variant": "M"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "LIMIT_REACHED")
    );
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}
