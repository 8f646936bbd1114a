//! Deleting a sale never destroys a purchase: a sale with purchases or holds is archived
//! (hidden, sku freed, readable by id), one with nothing sold or held is removed with every
//! row; and every purchase answer is about the sku's current sale, on every instance, at
//! once after the DELETE was answered.

use poem::http::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    ADMIN_KEY, Limits, TestApp, client_for, code, purchase, spawn_app, status_and_json,
};

async fn delete_sale(app: &TestApp, sale: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .delete(format!("/api/v1/admin/sales/{sale}"))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await;
    status_and_json(response).await
}

async fn purchases_of(app: &TestApp, sale_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM purchases WHERE sale_id = $1::uuid")
        .bind(sale_id)
        .fetch_one(app.store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_sale_with_purchases_archives_it_and_the_new_sale_with_its_sku_starts_clean() {
    let app = spawn_app().await;
    let old = app
        .create_sale(json!({"sku": "drop", "name": "First", "stock": 1}))
        .await;
    let old_id = old["id"].as_str().expect("id").to_string();
    let (status, bought) = app.purchase("drop", "u1").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.purchase("drop", "u2").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));

    let (status, removed) = delete_sale(&app, "drop").await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["outcome"], "archived");
    assert_eq!(removed["sale"]["state"], "archived");
    assert_eq!(purchases_of(&app, &old_id).await, 1, "the purchase is kept");

    let new = app
        .create_sale(json!({"sku": "drop", "name": "Second", "stock": 5}))
        .await;
    let new_id = new["id"].as_str().expect("id");
    assert_ne!(new_id, old_id);
    for user in ["u3", "u1"] {
        let (status, body) = app.purchase("drop", user).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{user} buys in the new sale: {body}"
        );
        assert_eq!(
            body["saleId"], new_id,
            "{user}: the answer is about the new sale"
        );
    }

    // The archived sale stays readable by its id: the buyer's purchase, the admin view, the
    // audit; by sku only the new sale answers, and listings show only live sales.
    let response = app
        .client
        .get(format!("/api/v1/sales/{old_id}/purchases/u1"))
        .send()
        .await;
    let (status, kept) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["id"], bought["id"]);
    let (status, view) = app
        .admin_get(&format!("/api/v1/admin/sales/{old_id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "archived");
    assert!(view["archivedAt"].is_string(), "{view}");
    assert_eq!(
        view["events"]
            .as_array()
            .map(|e| e.iter().any(|e| e["state"] == "archived")),
        Some(true)
    );
    let (status, audit) = app
        .admin_get(&format!("/api/v1/admin/sales/{old_id}/audit"))
        .await;
    assert_eq!(
        (status, audit["passed"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{audit}"
    );
    let (_, view) = app.admin_get("/api/v1/admin/sales/drop").await;
    assert_eq!(view["id"], new_id);
    let (_, listed) = app.admin_get("/api/v1/admin/sales").await;
    let ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|sale| sale["id"].as_str())
        .collect();
    assert_eq!(ids, vec![new_id]);

    // By its id the archived sale sells nothing (it sold out, which it says whatever else
    // its state is), and a repeat buyer still hears the truth.
    let (status, body) = app.purchase(&old_id, "u9").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));
    let (status, body) = app.purchase(&old_id, "u1").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "ALREADY_PURCHASED")
    );
    assert_eq!(body["purchase"]["saleId"], old_id.as_str());
    // Deleting it again changes nothing, and the database refuses to drop a purchase.
    assert_eq!(delete_sale(&app, &old_id).await.1["outcome"], "archived");
    let dropped = sqlx::query("DELETE FROM sales WHERE id = $1::uuid")
        .bind(&old_id)
        .execute(app.store.pool())
        .await;
    assert!(dropped.is_err(), "ON DELETE RESTRICT keeps the purchase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_with_nothing_sold_or_held_is_removed_with_every_row() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(
            json!({"sku": "empty", "name": "Nothing sold", "stock": 3, "checkout": "queued"}),
        )
        .await;
    let (status, removed) = delete_sale(&app, "empty").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(removed["outcome"], "deleted");
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM sales) + (SELECT count(*) FROM jobs)
              + (SELECT count(*) FROM sale_events) + (SELECT count(*) FROM sale_queues)
              + (SELECT count(*) FROM queue_entries)",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!(leftovers, 0, "no child rows of a removed sale linger");
    let (status, body) = delete_sale(&app, sale["id"].as_str().expect("id")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "SALE_NOT_FOUND")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_answers_about_the_new_sale_at_once_after_a_delete_and_recreate() {
    let app = spawn_app().await;
    // B is a second instance on the same database: its own caches and batchers.
    let other = client_for(app.store.clone(), Limits::off());
    app.create_sale(json!({"sku": "shared", "name": "First", "stock": 1}))
        .await;
    // Warm B: its sku cache and its sold-out memory now name the first sale.
    assert_eq!(
        purchase(&other, "shared", "u1").await.0,
        StatusCode::CREATED
    );
    let (status, body) = purchase(&other, "shared", "u2").await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "SOLD_OUT"));

    // Delete and re-create on A, then buy on B at once (well inside B's cache lifetime).
    assert_eq!(delete_sale(&app, "shared").await.1["outcome"], "archived");
    let new = app
        .create_sale(json!({"sku": "shared", "name": "Second", "stock": 5}))
        .await;
    for user in ["u3", "u1", "u2"] {
        let (status, body) = purchase(&other, "shared", user).await;
        assert_eq!(status, StatusCode::CREATED, "{user} on B: {body}");
        assert_eq!(
            body["saleId"], new["id"],
            "{user} on B hears about the new sale"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_a_queued_sale_voids_its_live_holds_and_records_it() {
    let app = spawn_app().await;
    let sale = app
        .create_sale(json!({"sku": "q-arch", "name": "Queued", "stock": 2, "checkout": "queued"}))
        .await;
    let sale_id: uuid::Uuid = sale["id"].as_str().expect("id").parse().expect("uuid");
    let join = app
        .client
        .post("/api/v1/sales/q-arch/queue")
        .body_json(&json!({"userId": "h1"}))
        .send()
        .await;
    assert_eq!(join.0.status(), StatusCode::ACCEPTED);
    app.store.queue_tick(sale_id, 10).await.expect("tick");
    let (_, view) = app.admin_get("/api/v1/admin/sales/q-arch").await;
    assert_eq!(view["held"], 1, "{view}");

    let (status, removed) = delete_sale(&app, "q-arch").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (removed["outcome"].as_str(), removed["voidedHolds"].as_i64()),
        (Some("archived"), Some(1))
    );
    assert_eq!(removed["sale"]["held"], 0);
    assert_eq!(removed["sale"]["available"], 2);
    let confirm = app
        .client
        .post(format!("/api/v1/sales/{sale_id}/queue/h1/confirm"))
        .send()
        .await;
    let (status, body) = status_and_json(confirm).await;
    assert!(
        status.is_client_error(),
        "a voided hold cannot be confirmed: {status} {body}"
    );
    let (_, view) = app
        .admin_get(&format!("/api/v1/admin/sales/{sale_id}"))
        .await;
    let archived = view["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["state"] == "archived").cloned())
        .expect("an archived event");
    assert_eq!(archived["voidedHolds"], 1);
    let (_, audit) = app
        .admin_get(&format!("/api/v1/admin/sales/{sale_id}/audit"))
        .await;
    assert_eq!(audit["passed"], true, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_a_cached_sku_hears_about_the_new_queued_sale_after_a_delete_and_recreate() {
    let app = spawn_app().await;
    // B is a second instance: its door caches `shared-q` for a second.
    let other = client_for(app.store.clone(), Limits::off());
    let join_on_b = |user: &'static str| {
        let response = other
            .post("/api/v1/sales/shared-q/queue")
            .body_json(&json!({ "userId": user }))
            .send();
        async move { status_and_json(response.await).await }
    };
    app.create_sale(json!({"sku": "shared-q", "name": "First", "stock": 1,
                           "checkout": "queued", "queueCapacity": 1}))
        .await;
    assert_eq!(join_on_b("u1").await.0, StatusCode::ACCEPTED);
    let (status, body) = join_on_b("u2").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "QUEUE_FULL")
    );

    // Nothing sold or held: the delete removes the first sale; the sku names a new one.
    assert!(delete_sale(&app, "shared-q").await.0.is_success());
    app.create_sale(json!({"sku": "shared-q", "name": "Second", "stock": 5,
                           "checkout": "queued"}))
        .await;
    // u2 was refused by the old queue, u1 waited in it: both now join the new one.
    for (place, user) in ["u2", "u1"].into_iter().enumerate() {
        let (status, body) = join_on_b(user).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{user} on B: {body}");
        assert_eq!(
            body["position"], place,
            "{user} joined the new sale's queue: {body}"
        );
    }
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM queue_entries e JOIN sales s ON s.id = e.sale_id
          WHERE s.sku = 'shared-q' AND s.name = 'Second'",
    )
    .fetch_one(app.store.pool())
    .await
    .expect("entries");
    assert_eq!(waiting, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_public_view_of_a_sku_is_the_sale_it_names_now() {
    let plain = spawn_app().await;
    let mut state = flashsale::api::ApiState::unlimited(
        plain.store.clone(),
        flashsale::api::auth::AdminKey::new(ADMIN_KEY.into()),
    )
    .expect("state");
    // A cache far longer than the cap: views may still be at most 1 s old.
    state.views = std::sync::Arc::new(flashsale::api::view_cache::SaleViewCache::new(
        std::time::Duration::from_secs(3600),
    ));
    use poem::EndpointExt;
    let app = TestApp {
        client: std::sync::Arc::new(poem::test::TestClient::new(
            flashsale::api::app(state).boxed(),
        )),
        store: plain.store.clone(),
    };
    let sku = format!("again-{}", uuid::Uuid::new_v4().simple());
    let first = app
        .create_sale(json!({"sku": sku, "name": "First", "stock": 2}))
        .await;
    assert_eq!(
        purchase(&app.client, &sku, "buyer").await.0,
        StatusCode::CREATED
    );
    let view = |app: &TestApp| {
        let client = app.client.clone();
        let sku = sku.clone();
        async move { status_and_json(client.get(format!("/api/v1/sales/{sku}")).send().await).await }
    };
    assert_eq!(view(&app).await.1["id"], first["id"]);
    assert_eq!(delete_sale(&app, &sku).await.0, StatusCode::OK);
    let second = app
        .create_sale(json!({"sku": sku, "name": "Second", "stock": 5}))
        .await;
    let (status, now) = view(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        now["id"], second["id"],
        "the sku names the new sale at once"
    );
    // A cached view ages out within the cap: by id, the archived sale is shown as archived.
    assert_eq!(
        purchase(&app.client, &sku, "other").await.0,
        StatusCode::CREATED
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(view(&app).await.1["sold"], 1);
    let first_id = first["id"].as_str().expect("id");
    let (_, old) = status_and_json(
        app.client
            .get(format!("/api/v1/sales/{first_id}"))
            .send()
            .await,
    )
    .await;
    assert_eq!(old["state"], "archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_sale_whose_only_rows_are_waiting_buyers_archives_it_and_keeps_them() {
    let app = spawn_app().await;
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    let (sku, sale) = crate::queue::queued_sale(&app, 5, json!({"startsAt": starts})).await;
    for user in ["w1", "w2"] {
        assert_eq!(app.join_queue(&sku, user).await.0, StatusCode::ACCEPTED);
    }
    let (status, removed) = delete_sale(&app, &sku).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["outcome"], "archived", "{removed}");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_entries WHERE sale_id = $1")
        .bind(sale)
        .fetch_one(app.store.pool())
        .await
        .expect("entries");
    assert_eq!(kept, 2, "the waiting buyers' entries stay");
    // A sale nobody touched is still removed outright.
    let (empty, _) = crate::queue::queued_sale(&app, 5, json!({"startsAt": starts})).await;
    assert_eq!(delete_sale(&app, &empty).await.1["outcome"], "deleted");
}
