//! "Outcome unknown" only when it is: a purchase that never reached the database is a
//! plain, retry-safe 503; one that was sent and not answered in time says
//! `outcomeUnknown`, and a retry tells which it was.

use std::time::Duration;

use flashsale::api::EdgeLimits;
use flashsale::api::buyer_auth::BuyerTokens;
use flashsale::store::Store;
use poem::endpoint::BoxEndpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::{ADMIN_KEY, Limits, client_with_edge, code, fresh_database, purchase};

/// A client whose database calls get one second, on `pool`, with the instant sale `sku`
/// created and bought once (which also caches the sku, so the next purchases go straight
/// to the sale's batcher).
async fn one_second_client(
    pool: &PgPool,
    sku: &str,
) -> TestClient<BoxEndpoint<'static, poem::Response>> {
    let edge = EdgeLimits {
        answer_timeout: Duration::from_secs(1),
        ..EdgeLimits::default()
    };
    let client = client_with_edge(
        Store::new(pool.clone()),
        Limits::off(),
        BuyerTokens::disabled(),
        edge,
    );
    let created = client
        .post("/api/v1/admin/sales")
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .body_json(&json!({"sku": sku, "name": "Outcome", "stock": 10}))
        .send()
        .await;
    assert_eq!(created.0.status(), StatusCode::CREATED);
    assert_eq!(purchase(&client, sku, "u0").await.0, StatusCode::CREATED);
    client
}

async fn purchases_of(pool: &PgPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM purchases WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The status, body and whether a `Retry-After` came with it.
async fn buy(
    client: &TestClient<BoxEndpoint<'static, poem::Response>>,
    sku: &str,
    user: &str,
) -> (StatusCode, Value, bool) {
    let response = client
        .post(format!("/api/v1/sales/{sku}/purchases"))
        .body_json(&json!({ "userId": user }))
        .send()
        .await;
    let retry_after = response.0.headers().contains_key("retry-after");
    let (status, body) = crate::support::status_and_json(response).await;
    (status, body, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_that_never_got_a_connection_is_a_plain_503_not_an_unknown_outcome() {
    let pool = fresh_database(1).await;
    let client = one_second_client(&pool, "busy").await;
    // The pool's only connection is taken: the next batch waits for one past its deadline.
    let held = pool.acquire().await.expect("the only connection");
    let (status, body, retry_after) = buy(&client, "busy", "u1").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        "{body}"
    );
    assert_eq!(body.get("outcomeUnknown"), None, "nothing was sent: {body}");
    assert!(retry_after, "503 carries Retry-After");
    drop(held);

    // Nothing was written for them, and the retry buys.
    assert_eq!(purchases_of(&pool, "u1").await, 0);
    assert_eq!(purchase(&client, "busy", "u1").await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_sent_but_not_answered_in_time_is_an_unknown_outcome_a_retry_settles() {
    let pool = fresh_database(2).await;
    let client = one_second_client(&pool, "slow").await;
    // Another transaction holds the sale's row: the purchase is sent and waits for it.
    let mut locker = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sales WHERE sku = 'slow' FOR UPDATE")
        .execute(&mut *locker)
        .await
        .expect("lock the sale");
    let (status, body, retry_after) = buy(&client, "slow", "u1").await;
    assert_eq!(
        (status, code(&body), body["outcomeUnknown"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", Some(true)),
        "{body}"
    );
    assert!(retry_after, "503 carries Retry-After");
    locker.commit().await.expect("release the sale");

    // The statement went on once the lock was free: a retry learns that it bought.
    let mut answer = (StatusCode::OK, Value::Null);
    for _ in 0..20 {
        answer = purchase(&client, "slow", "u1").await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answer.0 == StatusCode::CREATED || code(&answer.1) == "ALREADY_PURCHASED",
        "{answer:?}"
    );
    assert_eq!(purchases_of(&pool, "u1").await, 1);
}
