//! Buyer identity with `BUYER_TOKEN_SECRET` set: only the token's user may buy, confirm,
//! release or read; bad tokens are 401, another user's name is 403.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashsale::api::buyer_auth::{BuyerTokens, TokenSettings, mint_token};
use flashsale::store::Store;
use poem::Response;
use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};

use crate::support::{Limits, TestApp, client_with_tokens, code, spawn_app, status_and_json};

const SECRET: &str = "shop-signing-secret";

fn settings() -> TokenSettings {
    TokenSettings {
        secret: Some(SECRET.into()),
        ..TokenSettings::default()
    }
}

fn token(user: &str) -> String {
    mint_token(&settings(), user, 600).expect("mint")
}

fn secured(store: Store, limits: Limits) -> TestClient<BoxEndpoint<'static, Response>> {
    client_with_tokens(store, limits, BuyerTokens::new(&settings()))
}

async fn send(
    client: &TestClient<BoxEndpoint<'static, Response>>,
    method: Method,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, path.to_string());
    if let Some(bearer) = bearer {
        request = request.header("Authorization", format!("Bearer {bearer}"));
    }
    if let Some(body) = body {
        request = request.body_json(&body);
    }
    status_and_json(request.send().await).await
}

/// The token with its header replaced (the signature no longer matters: the algorithm is
/// refused first).
fn with_header(token: &str, header: &Value) -> String {
    let mut parts = token.splitn(2, '.');
    let (_, rest) = (parts.next(), parts.next().unwrap_or_default());
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

async fn sales(app: &TestApp) -> (String, String) {
    let instant = app.active_sale(10).await;
    let queued = app
        .create_sale(json!({"sku": "id-queued", "name": "Q", "stock": 5, "checkout": "queued"}))
        .await;
    (
        instant["sku"].as_str().expect("sku").to_string(),
        queued["sku"].as_str().expect("sku").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_buys_and_the_user_comes_from_the_token() {
    let app = spawn_app().await;
    let client = secured(app.store.clone(), Limits::off());
    let (instant, queued) = sales(&app).await;
    let alice = token("alice");
    let (status, bought) = send(
        &client,
        Method::POST,
        &format!("/api/v1/sales/{instant}/purchases"),
        Some(json!({})),
        Some(&alice),
    )
    .await;
    assert_eq!(
        (status, bought["userId"].as_str()),
        (StatusCode::CREATED, Some("alice")),
        "{bought}"
    );
    let (status, _) = send(
        &client,
        Method::GET,
        &format!("/api/v1/sales/{instant}/purchases/alice"),
        None,
        Some(&alice),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &client,
        Method::POST,
        &format!("/api/v1/sales/{queued}/queue"),
        Some(json!({"userId": "alice"})),
        Some(&alice),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, mine) = send(
        &client,
        Method::GET,
        "/api/v1/users/alice/purchases",
        None,
        Some(&alice),
    )
    .await;
    assert_eq!(
        (status, mine.as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (status, _) = send(
        &client,
        Method::GET,
        &format!("/api/v1/sales/{instant}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the public sale view stays public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_user_cannot_act_or_read_for_another() {
    let app = spawn_app().await;
    let client = secured(app.store.clone(), Limits::off());
    let (instant, queued) = sales(&app).await;
    let alice = token("alice");
    let cases = [
        (
            Method::POST,
            format!("/api/v1/sales/{instant}/purchases"),
            Some(json!({"userId": "bob"})),
        ),
        (
            Method::GET,
            format!("/api/v1/sales/{instant}/purchases/bob"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/sales/{queued}/queue"),
            Some(json!({"userId": "bob"})),
        ),
        (
            Method::GET,
            format!("/api/v1/sales/{queued}/queue/bob"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/sales/{queued}/queue/bob/confirm"),
            None,
        ),
        (
            Method::DELETE,
            format!("/api/v1/sales/{queued}/queue/bob"),
            None,
        ),
        (Method::GET, "/api/v1/users/bob/purchases".to_string(), None),
    ];
    for (method, path, body) in cases {
        let (status, body) = send(&client, method.clone(), &path, body, Some(&alice)).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "FORBIDDEN"),
            "{method} {path}"
        );
    }
    let (_, _, _, sold) = crate::support::counters(app.store.pool(), &instant).await;
    assert_eq!(sold, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tampered_expired_or_foreign_algorithm_tokens_are_401() {
    let app = spawn_app().await;
    let client = secured(app.store.clone(), Limits::off());
    let (instant, _) = sales(&app).await;
    let good = token("alice");
    let mut tampered = good.clone();
    let last = tampered
        .pop()
        .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
    tampered.push(last);
    let wrong_secret = mint_token(
        &TokenSettings {
            secret: Some("other".into()),
            ..settings()
        },
        "alice",
        600,
    )
    .expect("mint");
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() - 120}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let alg_none = {
        let payload = URL_SAFE_NO_PAD.encode(
            json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 600}).to_string(),
        );
        format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string())
        )
    };
    let alg_rs256 = with_header(&good, &json!({"alg": "RS256", "typ": "JWT"}));
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let cases = [
        ("missing header", None),
        ("not a JWT", Some("garbage".to_string())),
        ("tampered signature", Some(tampered)),
        ("wrong secret", Some(wrong_secret)),
        ("expired", Some(expired)),
        ("alg none", Some(alg_none)),
        ("alg RS256", Some(alg_rs256)),
        ("no exp", Some(no_exp)),
    ];
    for (name, bearer) in cases {
        let (status, body) = send(
            &client,
            Method::POST,
            &format!("/api/v1/sales/{instant}/purchases"),
            Some(json!({"userId": "alice"})),
            bearer.as_deref(),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            "{name}: {body}"
        );
    }
    let (_, _, _, sold) = crate::support::counters(app.store.pool(), &instant).await;
    assert_eq!(sold, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_keys_on_the_verified_identity() {
    let app = spawn_app().await;
    let client = secured(
        app.store.clone(),
        Limits {
            per_user: (1, 1),
            ..Limits::off()
        },
    );
    let (instant, _) = sales(&app).await;
    let alice = token("alice");
    let path = format!("/api/v1/sales/{instant}/purchases");
    let (first, _) = send(&client, Method::POST, &path, Some(json!({})), Some(&alice)).await;
    assert_eq!(first, StatusCode::CREATED);
    let (second, body) = send(&client, Method::POST, &path, Some(json!({})), Some(&alice)).await;
    assert_eq!(
        (second, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    );
    let (other, _) = send(
        &client,
        Method::POST,
        &path,
        Some(json!({})),
        Some(&token("bob")),
    )
    .await;
    assert_eq!(other, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_a_purchase_needs_a_user_id_and_ignores_tokens() {
    let app = spawn_app().await;
    let (instant, _) = sales(&app).await;
    let (status, body) = send(
        &app.client,
        Method::POST,
        &format!("/api/v1/sales/{instant}/purchases"),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );
    let (status, _) = send(
        &app.client,
        Method::POST,
        &format!("/api/v1/sales/{instant}/purchases"),
        Some(json!({"userId": "carol"})),
        Some("not-checked"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_not_valid_yet_or_without_the_audience_is_401_without_the_decoders_words() {
    let app = spawn_app().await;
    let (instant, _) = sales(&app).await;
    let client = secured(app.store.clone(), Limits::off());
    let now = jsonwebtoken::get_current_timestamp();
    let sign = |claims: Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let path = format!("/api/v1/sales/{instant}/purchases");
    let early = sign(
        json!({"sub": "n1", "exp": now + 600, "nbf": now + 300}),
        SECRET,
    );
    let (status, body) = send(&client, Method::POST, &path, Some(json!({})), Some(&early)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    let message = body["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        !message.contains("immature") && !message.contains("nbf"),
        "{body}"
    );

    let with_audience = client_with_tokens(
        app.store.clone(),
        Limits::off(),
        BuyerTokens::new(&TokenSettings {
            audience: Some("flashsale".into()),
            ..settings()
        }),
    );
    let no_aud = sign(json!({"sub": "n2", "exp": now + 600}), SECRET);
    let (status, _) = send(
        &with_audience,
        Method::POST,
        &path,
        Some(json!({})),
        Some(&no_aud),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "aud is required when configured"
    );
    let with_aud = sign(
        json!({"sub": "n3", "exp": now + 600, "aud": "flashsale"}),
        SECRET,
    );
    let (status, body) = send(
        &with_audience,
        Method::POST,
        &path,
        Some(json!({})),
        Some(&with_aud),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
