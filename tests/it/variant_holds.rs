//! Variants in the queued checkout against real Postgres: each variant's line is admitted
//! in ticket order against its own units, a full variant holds back nobody in another's
//! line, and expiry, release and confirm move the variant's counters with the sale's.

use poem::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::queue::{broken_invariants, confirm, expire_now, held_users, leave, queued_sale, tick};
use crate::support::{TestApp, code, counters, spawn_app, status_and_json};

async fn call(
    app: &TestApp,
    method: &str,
    path: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = match method {
        "POST" => app.client.post(path),
        "DELETE" => app.client.delete(path),
        _ => app.client.get(path),
    };
    let request = match body {
        Some(body) => request.body_json(&body),
        None => request,
    };
    status_and_json(request.send().await).await
}

/// Each variant's (available, held, sold), in position order, from the table.
pub(crate) async fn variant_rows(app: &TestApp, sale: Uuid) -> Vec<(String, i32, i32, i32)> {
    sqlx::query_as(
        "SELECT code, available, held, sold FROM sale_variants WHERE sale_id = $1 ORDER BY position",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("variants")
}

async fn status_of(app: &TestApp, sku: &str, user: &str) -> String {
    let (_, body) = call(
        app,
        "GET",
        format!("/api/v1/sales/{sku}/queue/{user}"),
        None,
    )
    .await;
    body["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variants_line_is_admitted_against_its_own_units_and_holds_move_them() {
    let app = spawn_app().await;
    let variants = json!([{"code": "S", "stock": 2}, {"code": "M", "stock": 3}]);
    let (sku, sale) = queued_sale(
        &app,
        5,
        json!({"variants": variants, "perCustomerLimit": 2, "holdSeconds": 60}),
    )
    .await;
    let join = |user: &'static str, variant: Option<&'static str>, quantity: i64| {
        let mut body = json!({"userId": user, "quantity": quantity});
        if let Some(variant) = variant {
            body["variant"] = json!(variant);
        }
        call(
            &app,
            "POST",
            format!("/api/v1/sales/{sku}/queue"),
            Some(body),
        )
    };
    // The door's codes.
    let (status, body) = join("nobody", None, 1).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VARIANT_REQUIRED")
    );
    let (status, body) = join("nobody", Some("XL"), 1).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "UNKNOWN_VARIANT")
    );
    let (status, body) = join("nobody", Some("S"), 2).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _) = call(
        &app,
        "DELETE",
        format!("/api/v1/sales/{sku}/queue/nobody"),
        None,
    )
    .await;
    assert!(status.is_success());

    // Tickets in this order: S wants 1+1+1 of its 2, M wants 2+1+1 of its 3.
    for (user, variant, quantity) in [
        ("s1", "S", 1),
        ("m1", "M", 2),
        ("s2", "S", 1),
        ("s3", "S", 1),
        ("m2", "M", 1),
        ("m3", "M", 1),
    ] {
        let (status, body) = join(user, Some(variant), quantity).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["variant"], variant);
    }
    let report = tick(&app.store, sale).await;
    assert_eq!(report.admitted, 4, "s1 s2 of S, m1 m2 of M");
    for (user, status) in [
        ("s1", "held"),
        ("s2", "held"),
        ("s3", "queued"),
        ("m1", "held"),
        ("m2", "held"),
        ("m3", "queued"),
    ] {
        assert_eq!(status_of(&app, &sku, user).await, status, "{user}");
    }
    assert_eq!(
        variant_rows(&app, sale).await,
        [("S".into(), 0, 2, 0), ("M".into(), 0, 3, 0)]
    );
    assert_eq!(counters(app.store.pool(), &sku).await, (5, 0, 5, 0));

    // s1 confirms (S sold), s2 releases (its unit goes to s3, not to M's line), m1's hold
    // runs out (its two units go to m3, the next of M, and one stays free).
    let (status, bought) = call(
        &app,
        "POST",
        format!("/api/v1/sales/{sku}/queue/s1/confirm"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    assert_eq!(bought["variant"], "S");
    let (status, _) = call(
        &app,
        "DELETE",
        format!("/api/v1/sales/{sku}/queue/s2"),
        None,
    )
    .await;
    assert!(status.is_success());
    sqlx::query(
        "UPDATE queue_entries SET hold_expires_at = now() - interval '1 millisecond'
          WHERE sale_id = $1 AND user_id = 'm1'",
    )
    .bind(sale)
    .execute(app.store.pool())
    .await
    .expect("expire");
    let report = tick(&app.store, sale).await;
    assert_eq!((report.expired, report.admitted), (1, 2), "s3 and m3");
    assert_eq!(
        variant_rows(&app, sale).await,
        [("S".into(), 0, 1, 1), ("M".into(), 1, 2, 0)]
    );
    // S's one unit is held: it may come back, so a join for S still waits.
    let (status, body) = join("late", Some("S"), 1).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for user in ["s3", "m2", "m3"] {
        let (status, body) = call(
            &app,
            "POST",
            format!("/api/v1/sales/{sku}/queue/{user}/confirm"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
    }
    assert_eq!(
        variant_rows(&app, sale).await,
        [("S".into(), 0, 0, 2), ("M".into(), 1, 0, 2)]
    );
    assert_eq!(
        status_of(&app, &sku, "late").await,
        "sold_out",
        "S can never come back"
    );
    let (status, body) = join("later", Some("S"), 1).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));
    let (status, body) = join("later", Some("M"), 2).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "INSUFFICIENT_STOCK")
    );
    assert_eq!(body["available"], 1);
    let purchases: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT user_id, variant FROM purchases WHERE sale_id = $1 ORDER BY user_id",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("purchases");
    let named = |user: &str, variant: &str| (user.to_string(), Some(variant.to_string()));
    assert_eq!(
        purchases,
        [
            named("m2", "M"),
            named("m3", "M"),
            named("s1", "S"),
            named("s3", "S")
        ]
    );
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_buyers_of_three_variants_with_racing_ticks_confirms_leaves_and_expiry() {
    let app = spawn_app().await;
    let sizes = [("S", 10), ("M", 20), ("L", 30)];
    let variants: Vec<Value> = sizes
        .iter()
        .map(|(code, stock)| json!({"code": code, "stock": stock}))
        .collect();
    let (sku, sale) = queued_sale(&app, 60, json!({"variants": variants, "holdSeconds": 30})).await;
    let mut joins = Vec::new();
    for chunk in 0..20 {
        let (client, sku) = (app.client.clone(), sku.clone());
        joins.push(tokio::spawn(async move {
            for i in (chunk * 30)..(chunk * 30 + 30) {
                let body = json!({"userId": format!("buyer-{i}"), "variant": sizes[i % 3].0});
                let response = client
                    .post(format!("/api/v1/sales/{sku}/queue"))
                    .body_json(&body)
                    .send()
                    .await;
                assert_eq!(response.0.status(), StatusCode::ACCEPTED);
            }
        }));
    }
    for task in joins {
        task.await.expect("join task");
    }
    for _round in 0..300 {
        // Two ticks at once (two instances), then every holder acts at once.
        let (a, b) = tokio::join!(tick(&app.store, sale), tick(&app.store, sale));
        let held = held_users(&app.store, sale).await;
        if held.is_empty() && a.admitted + b.admitted == 0 {
            break;
        }
        let mut acting = Vec::new();
        let mut to_expire = Vec::new();
        for user in held {
            let index: usize = user.trim_start_matches("buyer-").parse().expect("index");
            // Every variant's line sees all three fates (index / 3 cycles within a variant):
            // confirm, expire, leave.
            let fate = index / 3 % 3;
            if fate == 1 {
                to_expire.push(user);
                continue;
            }
            let (app, sku) = (&app, sku.clone());
            acting.push(async move {
                if fate == 0 {
                    assert_eq!(confirm(app, &sku, &user).await.0, StatusCode::CREATED);
                } else {
                    assert_eq!(leave(app, &sku, &user).await.0, StatusCode::OK);
                }
            });
        }
        futures_util::future::join_all(acting).await;
        expire_now(&app.store, sale, &to_expire).await;
        let failures = broken_invariants(&app.store, &sku).await;
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert_eq!(
        variant_rows(&app, sale).await,
        [
            ("S".into(), 0, 0, 10),
            ("M".into(), 0, 0, 20),
            ("L".into(), 0, 0, 30)
        ]
    );
    assert_eq!(counters(app.store.pool(), &sku).await, (60, 0, 0, 60));
    let per_variant: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT variant, sum(quantity)::bigint FROM purchases WHERE sale_id = $1
          GROUP BY variant ORDER BY variant",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("purchases");
    let units = |v: &str, n: i64| (Some(v.to_string()), n);
    assert_eq!(
        per_variant,
        [units("L", 30), units("M", 20), units("S", 10)]
    );
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

/// Rejoins (expired -> queued) take the queue row, then change entries of a variant: they
/// must not take the sale row after it, as admission takes the sale row and then the queue
/// row (the trigger once did, and the two deadlocked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoins_of_expired_variant_holds_racing_ticks_never_deadlock() {
    let app = spawn_app().await;
    let variants = json!([{"code": "S", "stock": 150}, {"code": "M", "stock": 150}]);
    let (sku, sale) =
        queued_sale(&app, 300, json!({"variants": variants, "holdSeconds": 30})).await;
    let users: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
    let join_all = |round: usize| {
        let mut joins = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let (client, sku, user) = (app.client.clone(), sku.clone(), user.clone());
            joins.push(tokio::spawn(async move {
                let variant = if i % 2 == 0 { "S" } else { "M" };
                let response = client
                    .post(format!("/api/v1/sales/{sku}/queue"))
                    .body_json(&json!({"userId": user, "variant": variant}))
                    .send()
                    .await;
                let (status, body) = status_and_json(response).await;
                assert_eq!(
                    status,
                    StatusCode::ACCEPTED,
                    "round {round}, {user}: {body}"
                );
            }));
        }
        joins
    };
    for round in 0..3 {
        // Everyone (re)joins while two ticks keep admitting.
        let joins = join_all(round);
        let ticking = {
            let (store, done) = (app.store.clone(), joins.len());
            tokio::spawn(async move {
                for _ in 0..40 {
                    let (a, b) =
                        tokio::join!(store.queue_tick(sale, 500), store.queue_tick(sale, 500));
                    a.expect("tick");
                    b.expect("tick");
                }
                done
            })
        };
        for join in joins {
            join.await.expect("join");
        }
        ticking.await.expect("ticks");
        tick(&app.store, sale).await;
        // Every hold runs out, for the next round's rejoins.
        let held = held_users(&app.store, sale).await;
        expire_now(&app.store, sale, &held).await;
        tick(&app.store, sale).await;
        let failures = broken_invariants(&app.store, &sku).await;
        assert!(failures.is_empty(), "{failures:?}");
    }
}
