//! Webhooks against real Postgres and a real HTTP receiver that verifies every signature:
//! at-least-once through failures and downtime, two instances never sending one delivery
//! twice at once, failed deliveries listed and replayed, secret rotation, the admin API.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use flashsale::store::Store;
use flashsale::worker::WebhookConfig;
use poem::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::{Receiver, fast_config, start_sender};
use crate::support::{ADMIN_KEY, TestApp, id_of, spawn_app, status_and_json};

async fn register(app: &TestApp, receiver: &Receiver, extra: Value) -> (Uuid, String) {
    let mut body = json!({ "url": receiver.url });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, hook) = app.admin_post_json("/api/v1/admin/webhooks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"));
    *receiver.state.secret.lock().expect("lock") = Some(secret.clone());
    let id = id_of(&hook);
    (id, secret)
}

/// Buys one unit for each user, all at once; returns the purchase ids.
async fn buy_all(app: &TestApp, sku: &str, users: impl Iterator<Item = String>) -> Vec<String> {
    let buyers: Vec<_> = users
        .map(|user| {
            let client = app.client.clone();
            let sku = sku.to_string();
            tokio::spawn(async move { crate::support::purchase(&client, &sku, &user).await })
        })
        .collect();
    let mut ids = Vec::new();
    for buyer in buyers {
        let (status, body) = buyer.await.expect("buyer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().expect("purchase id").to_string());
    }
    ids
}

fn purchases_delivered(receiver: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for delivery in receiver.delivered() {
        if delivery.body["type"] == "purchase.created"
            && let Some(id) = delivery.body["data"]["id"].as_str()
        {
            *seen.entry(id.to_string()).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_purchase_is_delivered_signed_through_random_failures_and_downtime() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.state.fail_percent.store(30, Ordering::SeqCst);
    register(&app, &receiver, json!({})).await;
    let _sender = start_sender(app.store.clone(), fast_config());
    let sale = app.active_sale(200).await;
    let sku = sale["sku"].as_str().expect("sku");
    let first = buy_all(&app, sku, (0..100).map(|n| format!("a{n}"))).await;
    receiver.state.down.store(true, Ordering::SeqCst);
    let second = buy_all(&app, sku, (0..100).map(|n| format!("b{n}"))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiver.state.down.store(false, Ordering::SeqCst);

    let purchases: HashSet<String> = first.into_iter().chain(second).collect();
    let all_in = receiver
        .wait_for(Duration::from_secs(60), |_| {
            purchases_delivered(&receiver).len() == purchases.len()
        })
        .await;
    assert!(
        all_in,
        "delivered {} of 200",
        purchases_delivered(&receiver).len()
    );
    let delivered: HashSet<String> = purchases_delivered(&receiver).into_keys().collect();
    assert_eq!(delivered, purchases);
    assert!(receiver.state.refused.load(Ordering::SeqCst) > 0);
    assert_eq!(receiver.state.unverified.load(Ordering::SeqCst), 0);
    for delivery in receiver.delivered() {
        assert_eq!(
            delivery.body["id"].as_str(),
            Some(delivery.webhook_id.as_str()),
            "webhook-id is the event's id, the same on every redelivery"
        );
    }
    let (status, deliveries) = app
        .admin_get("/api/v1/admin/webhooks/deliveries?status=delivered&limit=1000")
        .await;
    assert_eq!(status, StatusCode::OK);
    let retried = deliveries
        .as_array()
        .expect("list")
        .iter()
        .filter(|d| d["attempts"].as_i64().unwrap_or(0) > 1)
        .count();
    assert!(retried > 0, "some deliveries needed retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_deliveries_and_never_send_one_twice_at_once() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.state.delay_ms.store(5, Ordering::SeqCst);
    register(&app, &receiver, json!({"events": ["purchase.created"]})).await;
    let options = app.store.pool().connect_options().as_ref().clone();
    let other = Store::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect_with(options)
            .await
            .expect("second instance's pool"),
    );
    let config = WebhookConfig {
        concurrency: 4,
        ..fast_config()
    };
    let _one = start_sender(app.store.clone(), config.clone());
    let _two = start_sender(other, config);
    let sale = app.active_sale(300).await;
    let sku = sale["sku"].as_str().expect("sku");
    let purchases = buy_all(&app, sku, (0..300).map(|n| format!("t{n}"))).await;
    let all_in = receiver
        .wait_for(Duration::from_secs(60), |_| {
            purchases_delivered(&receiver).len() == purchases.len()
        })
        .await;
    assert!(
        all_in,
        "delivered {} of 300",
        purchases_delivered(&receiver).len()
    );
    assert_eq!(receiver.state.overlaps.load(Ordering::SeqCst), 0);
    let twice: Vec<_> = purchases_delivered(&receiver)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "with no failure nothing is sent twice: {twice:?}"
    );
    assert_eq!(receiver.delivered().len(), 300, "only the type asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failing_past_its_window_is_listed_and_a_replay_signed_with_the_old_secret_lands()
 {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.state.down.store(true, Ordering::SeqCst);
    let (hook, old_secret) =
        register(&app, &receiver, json!({"events": ["purchase.created"]})).await;
    let config = WebhookConfig {
        retry_for: Duration::from_millis(500),
        ..fast_config()
    };
    let _sender = start_sender(app.store.clone(), config);
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku");
    buy_all(&app, sku, std::iter::once("f1".to_string())).await;

    let mut failed = Value::Null;
    for _ in 0..200 {
        let (status, list) = app
            .admin_get(&format!(
                "/api/v1/admin/webhooks/deliveries?status=failed&webhook={hook}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        if let Some(first) = list.as_array().and_then(|l| l.first()) {
            failed = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["attempts"].as_i64().unwrap_or(0) >= 2, "{failed}");
    assert!(failed["lastStatus"] == 500, "{failed}");
    let delivery = failed["id"].as_i64().expect("id");

    // Rotate: the receiver still holds the old secret, which keeps signing for 24 h.
    let (status, rotated) = app
        .admin_post(&format!("/api/v1/admin/webhooks/{hook}/rotate-secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(rotated["secret"].as_str(), Some(old_secret.as_str()));
    assert!(rotated["previousSecretValidUntil"].is_string());
    receiver.state.down.store(false, Ordering::SeqCst);
    let (status, _) = app
        .admin_post(&format!(
            "/api/v1/admin/webhooks/deliveries/{delivery}/replay"
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let landed = receiver
        .wait_for(Duration::from_secs(10), |delivered| delivered.len() == 1)
        .await;
    assert!(
        landed,
        "the replay was delivered and verified with the old secret"
    );
    assert_eq!(
        receiver.delivered()[0].webhook_id,
        failed["eventId"].as_str().unwrap_or_default()
    );
    assert_eq!(receiver.state.unverified.load(Ordering::SeqCst), 0);

    let (status, body) = app
        .admin_post("/api/v1/admin/webhooks/deliveries/999999/replay")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("DELIVERY_NOT_FOUND"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_validated_listed_without_secrets_and_deleted() {
    let app = spawn_app().await;
    for (body, code) in [
        (json!({"url": "ftp://shop.example/"}), "INVALID_REQUEST"),
        (
            json!({"url": "https://u:p@shop.example/"}),
            "INVALID_REQUEST",
        ),
        (json!({"url": "not a url"}), "INVALID_REQUEST"),
        (json!({"url": 42}), "INVALID_REQUEST"),
        (
            json!({"url": "https://shop.example/", "events": ["purchase.deleted"]}),
            "INVALID_REQUEST",
        ),
        (
            json!({"url": "https://shop.example/", "events": []}),
            "INVALID_REQUEST",
        ),
        (
            json!({"url": "https://shop.example/", "events": null}),
            "INVALID_REQUEST",
        ),
        (
            json!({"url": "https://shop.example/", "extra": 1}),
            "INVALID_REQUEST",
        ),
        (
            json!({"url": "https://shop.example/", "sale": "no-such-sale"}),
            "SALE_NOT_FOUND",
        ),
    ] {
        let (status, answer) = app
            .admin_post_json("/api/v1/admin/webhooks", body.clone())
            .await;
        assert!(status.is_client_error(), "{body} -> {status}");
        assert_eq!(answer["code"].as_str(), Some(code), "{body} -> {answer}");
    }
    let sale = app.active_sale(1).await;
    let (status, created) = app
        .admin_post_json(
            "/api/v1/admin/webhooks",
            json!({"url": "https://shop.example/hooks", "sale": sale["sku"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["saleId"], sale["id"]);
    assert_eq!(created["events"].as_array().map(Vec::len), Some(16));
    let (status, list) = app.admin_get("/api/v1/admin/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(
        list[0].get("secret").is_none(),
        "the secret is shown only once"
    );
    let id = created["id"].as_str().expect("id");
    let delete = |path: String| {
        let client = app.client.clone();
        async move {
            status_and_json(
                client
                    .delete(path)
                    .header("Authorization", format!("Bearer {ADMIN_KEY}"))
                    .send()
                    .await,
            )
            .await
        }
    };
    assert_eq!(
        delete(format!("/api/v1/admin/webhooks/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, body) = delete(format!("/api/v1/admin/webhooks/{id}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("WEBHOOK_NOT_FOUND"))
    );
    let (status, _) = app.admin_get("/api/v1/admin/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    let unauthorized = app.client.get("/api/v1/admin/webhooks").send().await;
    assert_eq!(unauthorized.0.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_what_a_round_can_send_in_time_and_the_rest_comes_next_round() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.state.delay_ms.store(600, Ordering::SeqCst);
    register(&app, &receiver, json!({"events": ["purchase.created"]})).await;
    // One request at a time, and a round may start requests for 2 s only: of the 8 it
    // claims, about 4 are sent and the rest go back unsent, uncounted.
    let config = WebhookConfig {
        concurrency: 1,
        connect_timeout: Duration::from_secs(1),
        answer_timeout: Duration::from_secs(1),
        ..fast_config()
    };
    let _sender = start_sender(app.store.clone(), config);
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku");
    buy_all(&app, sku, (0..10).map(|n| format!("slow{n}"))).await;
    let all_in = receiver
        .wait_for(Duration::from_secs(30), |delivered| delivered.len() == 10)
        .await;
    assert!(all_in, "delivered {} of 10", receiver.delivered().len());
    assert_eq!(receiver.state.overlaps.load(Ordering::SeqCst), 0);
    // The receiver answers before the round records its results: wait for the record.
    let mut attempts = Vec::new();
    for _ in 0..100 {
        let (status, deliveries) = app
            .admin_get("/api/v1/admin/webhooks/deliveries?status=delivered")
            .await;
        assert_eq!(status, StatusCode::OK);
        attempts = deliveries
            .as_array()
            .expect("list")
            .iter()
            .map(|d| d["attempts"].as_i64().unwrap_or(-1))
            .collect();
        if attempts.len() == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts, vec![1; 10], "an unsent claim is not an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_hold_up_a_fast_one() {
    let app = spawn_app().await;
    let slow = Receiver::start().await;
    slow.state.delay_ms.store(3000, Ordering::SeqCst);
    let fast = Receiver::start().await;
    register(&app, &slow, json!({"events": ["purchase.created"]})).await;
    register(&app, &fast, json!({"events": ["purchase.created"]})).await;
    let config = WebhookConfig {
        concurrency: 2,
        ..fast_config()
    };
    let _sender = start_sender(app.store.clone(), config);
    let sale = app.active_sale(50).await;
    let sku = sale["sku"].as_str().expect("sku");
    buy_all(&app, sku, (0..50).map(|n| format!("f{n}"))).await;
    // The slow receiver takes 3 s per request, 2 at a time: 75 s for all 50. The fast one
    // has them all within a few seconds.
    let fast_done = fast
        .wait_for(Duration::from_secs(10), |delivered| delivered.len() == 50)
        .await;
    assert!(
        fast_done,
        "the fast endpoint got {} of 50",
        fast.delivered().len()
    );
    assert!(slow.delivered().len() < 10, "the slow one is still slow");
}

/// The last error recorded for the endpoint's deliveries (any of them), once one has one.
async fn first_error(app: &TestApp, endpoint: Uuid) -> Option<String> {
    for _ in 0..200 {
        let error: Option<String> = sqlx::query_scalar(
            "SELECT last_error FROM webhook_deliveries
              WHERE endpoint_id = $1 AND last_error IS NOT NULL LIMIT 1",
        )
        .bind(endpoint)
        .fetch_optional(app.store.pool())
        .await
        .expect("deliveries");
        if error.is_some() {
            return error;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_never_reaches_an_internal_address_unless_its_network_is_allowed() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    // By address (127.0.0.1) and by a name that resolves to it (localhost): both refused by
    // default, without a word about the port.
    let by_name = Receiver {
        url: receiver.url.replace("127.0.0.1", "localhost"),
        state: receiver.state.clone(),
    };
    let (by_address, _) = register(&app, &receiver, json!({})).await;
    let (named, _) = register(&app, &by_name, json!({})).await;
    let locked_down = WebhookConfig {
        allowed_networks: Vec::new(),
        ..fast_config()
    };
    let sender = start_sender(app.store.clone(), locked_down);
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku");
    buy_all(&app, sku, (0..2).map(|n| format!("ssrf{n}"))).await;
    for endpoint in [by_address, named] {
        assert_eq!(
            first_error(&app, endpoint).await.as_deref(),
            Some("the receiver's address is not allowed (internal network)")
        );
    }
    assert!(
        receiver.delivered().is_empty(),
        "nothing reached the receiver"
    );
    drop(sender);
    // WEBHOOK_ALLOWED_NETWORKS lets a chosen range in.
    let _sender = start_sender(app.store.clone(), fast_config());
    let arrived = receiver
        .wait_for(Duration::from_secs(30), |delivered| !delivered.is_empty())
        .await;
    assert!(arrived, "delivered once 127.0.0.0/8 is allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_at_rest_and_still_sign_and_a_key_rotation_reseals_them() {
    const KEY: &str = "4f1c2a9be0d3746581a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f701";
    const NEXT: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
    let plain = spawn_app().await;
    // A legacy endpoint, registered before any key was set: its secret is plain.
    let receiver = Receiver::start().await;
    let (legacy, legacy_secret) = register(&plain, &receiver, json!({})).await;
    let boxed = |current: &str, previous: Option<&str>| {
        let secrets = flashsale::store::SecretBox::new(current, previous).expect("key");
        Store::new(plain.store.pool().clone()).with_secret_box(std::sync::Arc::new(secrets))
    };
    let stored = |id: Uuid| {
        let pool = plain.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT secret FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("secret")
        }
    };
    assert_eq!(stored(legacy).await, legacy_secret);

    // With a key: start-up seals the legacy secret; a new endpoint's is sealed from the start.
    let store = boxed(KEY, None);
    assert_eq!(store.reseal_webhook_secrets().await.expect("reseal"), 1);
    assert!(stored(legacy).await.starts_with("sealed:v1:"));
    let app = TestApp {
        client: std::sync::Arc::new(crate::support::client_for(
            store.clone(),
            crate::support::Limits::off(),
        )),
        store: store.clone(),
    };
    let other = Receiver::start().await;
    let (fresh, fresh_secret) = register(&app, &other, json!({})).await;
    let at_rest = stored(fresh).await;
    assert!(at_rest.starts_with("sealed:v1:") && !at_rest.contains(&fresh_secret[6..]));

    // Deliveries are still signed with the real secrets (the receivers verify them).
    let _sender = start_sender(store.clone(), fast_config());
    let sale = app.active_sale(3).await;
    buy_all(
        &app,
        sale["sku"].as_str().expect("sku"),
        (0..2).map(|n| format!("seal{n}")),
    )
    .await;
    for target in [&receiver, &other] {
        let arrived = target
            .wait_for(Duration::from_secs(30), |delivered| delivered.len() >= 2)
            .await;
        assert!(arrived && target.state.unverified.load(Ordering::SeqCst) == 0);
    }
    // Without the key the secrets cannot be used: deliveries wait, nothing signs with junk.
    assert!(matches!(
        plain.store.webhook_target(fresh).await,
        Err(flashsale::store::StoreError::Sealed(_))
    ));
    // A rotation of the key: the new key with the old one as previous reseals everything.
    let rotated = boxed(NEXT, Some(KEY));
    assert_eq!(rotated.reseal_webhook_secrets().await.expect("reseal"), 2);
    let target = boxed(NEXT, None)
        .webhook_target(fresh)
        .await
        .expect("opens with the new key alone")
        .expect("endpoint");
    assert_eq!(target.secret, fresh_secret);
}
