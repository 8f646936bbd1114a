//! Allow-lists (presales) against real Postgres: who may buy and join, the uploads (JSON and
//! CSV, replace and add, all or nothing, idempotent, streamed), removals that keep
//! purchases. List changes racing purchases are in `allowlist_races.rs`.

use std::sync::Arc;
use std::time::Duration;

use flashsale::store::{Order, PurchaseOutcome};
use poem::Body;
use poem::http::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::queue::{broken_invariants, queued_sale};
use crate::support::{ADMIN_KEY, TestApp, code, id_of, spawn_app, status_and_json};

/// An active instant sale with an allow-list (and `extra` fields); its sku and id.
pub(crate) async fn listed_sale(app: &TestApp, stock: i64, extra: Value) -> (String, Uuid) {
    let sku = format!("pre-{}", Uuid::new_v4().simple());
    let mut body = json!({"sku": sku, "name": "Presale", "stock": stock, "allowlist": true});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let sale = app.create_sale(body).await;
    (sku, id_of(&sale))
}

/// Uploads `body` with `content_type` to the sale's list (`PUT` replaces, `POST` adds).
pub(crate) async fn upload(
    app: &TestApp,
    method: &str,
    sku: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let path = format!("/api/v1/admin/sales/{sku}/allowlist");
    let request = match method {
        "PUT" => app.client.put(path),
        _ => app.client.post(path),
    };
    status_and_json(
        request
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .content_type(content_type)
            .body(body)
            .send()
            .await,
    )
    .await
}

/// Asserts a refusal's status and code.
pub(crate) fn refused(status: StatusCode, body: &Value, want: StatusCode, want_code: &str) {
    assert_eq!((status, code(body)), (want, want_code), "{body}");
}

/// Another handle on the same app (for tasks).
pub(crate) fn share(app: &TestApp) -> TestApp {
    TestApp {
        store: app.store.clone(),
        client: app.client.clone(),
    }
}

/// One purchase of one unit: through HTTP (group commit) or the single statement; whether
/// it bought (any refusal other than `NOT_ELIGIBLE` fails the test).
pub(crate) async fn buy(app: &TestApp, sku: &str, sale: Uuid, user: &str, single: bool) -> bool {
    if single {
        let outcome = app
            .store
            .purchase(
                sale,
                user,
                Order::ONE,
                Instant::now() + Duration::from_secs(4),
            )
            .await
            .expect("purchase");
        assert!(
            matches!(
                outcome,
                PurchaseOutcome::Purchased(_) | PurchaseOutcome::NotEligible
            ),
            "{outcome:?}"
        );
        matches!(outcome, PurchaseOutcome::Purchased(_))
    } else {
        let (status, body) = app.purchase(sku, user).await;
        if status != StatusCode::CREATED {
            refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
        }
        status == StatusCode::CREATED
    }
}

pub(crate) async fn put_json(app: &TestApp, sku: &str, users: &[String]) -> (StatusCode, Value) {
    upload(
        app,
        "PUT",
        sku,
        "application/json",
        json!(users).to_string(),
    )
    .await
}

pub(crate) async fn remove(app: &TestApp, sku: &str, user: &str) -> StatusCode {
    app.client
        .delete(format!("/api/v1/admin/sales/{sku}/allowlist/{user}"))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .0
        .status()
}

pub(crate) async fn on_list(app: &TestApp, sku: &str, user: &str) -> bool {
    let (status, body) = app
        .admin_get(&format!(
            "/api/v1/admin/sales/{sku}/allowlist?userId={user}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["onAllowlist"].as_bool().expect("onAllowlist")
}

pub(crate) async fn list_size(app: &TestApp, sku: &str) -> i64 {
    let (status, body) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/allowlist"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["size"].as_i64().expect("size")
}

pub(crate) fn users(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

pub(crate) async fn purchase_rows(app: &TestApp, sale: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM purchases WHERE sale_id = $1")
        .bind(sale)
        .fetch_one(app.store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_buyers_buy_or_join_and_others_hear_not_eligible() {
    let app = spawn_app().await;
    let (sku, sale) = listed_sale(&app, 10, json!({})).await;
    let (status, view) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (view["allowlist"].clone(), view["allowlistSize"].clone()),
        (json!(true), json!(0))
    );
    let (_, public) =
        status_and_json(app.client.get(format!("/api/v1/sales/{sku}")).send().await).await;
    assert_eq!(public["allowlist"], json!(true));

    let (status, body) = app.purchase(&sku, "alice").await;
    refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
    let (status, body) = put_json(&app, &sku, &["alice".into(), "bob".into()]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["size"].as_i64(), body["added"].as_i64()),
        (Some(2), Some(2))
    );
    let (status, body) = app.purchase(&sku, "alice").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.purchase(&sku, "mallory").await;
    refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
    // The single statement refuses too, and says why.
    assert!(!buy(&app, &sku, sale, "mallory", true).await);
    assert!(buy(&app, &sku, sale, "bob", true).await);
    let (_, view) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert_eq!(view["allowlistSize"], json!(2));

    // The queue: only listed buyers join.
    let (qsku, _) = queued_sale(&app, 5, json!({"allowlist": true})).await;
    let (status, body) = app.join_queue(&qsku, "carol").await;
    refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
    let (status, _) = upload(&app, "POST", &qsku, "text/csv", "carol\n").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.join_queue(&qsku, "carol").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = app.join_queue(&qsku, "dave").await;
    refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_without_a_list_sells_to_anyone_and_has_no_list_to_change() {
    let app = spawn_app().await;
    let sale = app.active_sale(5).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    assert_eq!(sale["allowlist"], json!(false));
    assert!(sale.get("allowlistSize").is_none());
    let (status, body) = app.purchase(&sku, "anyone").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put_json(&app, &sku, &["anyone".into()]).await;
    refused(status, &body, StatusCode::CONFLICT, "NO_ALLOWLIST");
    let (status, body) = app
        .admin_get(&format!("/api/v1/admin/sales/{sku}/allowlist"))
        .await;
    refused(status, &body, StatusCode::CONFLICT, "NO_ALLOWLIST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_replaces_post_adds_uploads_are_idempotent_and_a_bad_line_changes_nothing() {
    let app = spawn_app().await;
    let (sku, sale) = listed_sale(&app, 10, json!({})).await;
    let (status, body) = upload(&app, "PUT", &sku, "text/csv", "a\r\nb\n\nc\n").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"received": 3, "added": 3, "removed": 0, "size": 3})
    );
    // The same upload again: the same list.
    let (_, body) = upload(&app, "PUT", &sku, "text/csv", "a\r\nb\n\nc\n").await;
    assert_eq!(
        body,
        json!({"received": 3, "added": 0, "removed": 0, "size": 3})
    );
    // Replace: b and c leave, d comes.
    let (_, body) = put_json(&app, &sku, &["a".into(), "d".into(), "d".into()]).await;
    assert_eq!(
        body,
        json!({"received": 3, "added": 1, "removed": 2, "size": 2})
    );
    assert!(on_list(&app, &sku, "d").await && !on_list(&app, &sku, "b").await);
    // Add: text/plain, repeats counted once.
    let (_, body) = upload(&app, "POST", &sku, "text/plain; charset=utf-8", "a\ne\ne\n").await;
    assert_eq!(
        body,
        json!({"received": 3, "added": 1, "removed": 0, "size": 3})
    );
    let (_, body) = upload(&app, "POST", &sku, "text/plain", "a\ne\n").await;
    assert_eq!(body["added"], json!(0));

    // An invalid id anywhere: 400 naming it, and nothing changed (the valid lines before
    // it included).
    let bad = format!("x1\nx2\n{}\nx3\n", "u".repeat(129));
    let (status, body) = upload(&app, "PUT", &sku, "text/csv", bad).await;
    refused(status, &body, StatusCode::BAD_REQUEST, "INVALID_ALLOWLIST");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 3")),
        "{body}"
    );
    let (status, body) = upload(
        &app,
        "POST",
        &sku,
        "application/json",
        r#"["y1", 42, "y2"]"#,
    )
    .await;
    refused(status, &body, StatusCode::BAD_REQUEST, "INVALID_ALLOWLIST");
    let (status, body) = upload(&app, "POST", &sku, "application/json", r#"["y1", ""]"#).await;
    refused(status, &body, StatusCode::BAD_REQUEST, "INVALID_ALLOWLIST");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("item 2")),
        "{body}"
    );
    let (status, body) = upload(&app, "POST", &sku, "application/json", r#"{"a": 1}"#).await;
    refused(status, &body, StatusCode::BAD_REQUEST, "INVALID_ALLOWLIST");
    let (status, _) = upload(&app, "POST", &sku, "application/xml", "<a/>").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(list_size(&app, &sku).await, 3);
    for user in ["x1", "x2", "y1"] {
        assert!(!on_list(&app, &sku, user).await, "{user}");
    }

    // One event per change that was made (5 uploads and a removal), none for the refused.
    assert_eq!(remove(&app, &sku, "a").await, StatusCode::NO_CONTENT);
    assert_eq!(remove(&app, &sku, "a").await, StatusCode::NO_CONTENT);
    let changes: Vec<Value> = sqlx::query_scalar(
        "SELECT data FROM events WHERE sale_id = $1 AND type = 'sale.allowlist_changed'
          ORDER BY sequence",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("events");
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert_eq!(changes[5]["change"], json!("removed"));
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_buyer_keeps_the_purchase_and_buys_no_more() {
    let app = spawn_app().await;
    let (sku, _) = listed_sale(&app, 10, json!({"perCustomerLimit": 3})).await;
    put_json(&app, &sku, &["alice".into()]).await;
    let (status, body) = app.purchase(&sku, "alice").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(remove(&app, &sku, "alice").await, StatusCode::NO_CONTENT);
    let (status, _) = status_and_json(
        app.client
            .get(format!("/api/v1/sales/{sku}/purchases/alice"))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.purchase(&sku, "alice").await;
    refused(status, &body, StatusCode::FORBIDDEN, "NOT_ELIGIBLE");
}

/// A process's resident set, in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `PUT path` with a `text/csv` body of `ids` lines made by `id`, written to the
/// socket piece by piece (never whole in this process either); the answer's status line.
async fn put_streamed(base: &str, path: &str, ids: usize, id: impl Fn(usize) -> String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let line_len = id(0).len() + 1;
    let address = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ids * line_len
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    let mut piece = String::with_capacity(line_len * 1_000);
    for i in 0..ids {
        piece.push_str(&id(i));
        piece.push('\n');
        if piece.len() >= line_len * 1_000 || i + 1 == ids {
            if socket.write_all(piece.as_bytes()).await.is_err() {
                // Answered early: read why.
                break;
            }
            piece.clear();
        }
    }
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_is_streamed_into_the_list_without_holding_it_in_memory() {
    const IDS: usize = 300_000;
    let (pool, url) = crate::deploy::migrated_database().await;
    let mut instance = crate::deploy::Instance::start(&url, &[]);
    let client = crate::deploy::client();
    instance.wait_healthy(&client).await;
    let sku = format!("big-{}", Uuid::new_v4().simple());
    let sale = crate::deploy::create_sale(
        &client,
        &instance.base,
        json!({"sku": sku, "name": "Presale", "stock": 10, "allowlist": true}),
    )
    .await;
    // 120-character ids: a 36 MB body.
    let id = |i: usize| format!("{i:0>120}");
    let pid = instance.pid();
    let before = rss_kb(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let path = format!("/api/v1/admin/sales/{sku}/allowlist");
    let answer = put_streamed(&instance.base, &path, IDS, id).await;
    sampler.abort();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        instance.log()
    );
    assert!(answer.contains(&format!("\"size\":{IDS}")), "{answer}");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sale_allowlist WHERE sale_id = $1 AND length(user_id) = 120",
    )
    .bind(id_of(&sale))
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(stored, IDS as i64);
    let grown_mb = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)
        / 1024;
    println!("allow-list upload of {IDS} ids (36 MB): the service's RSS grew by {grown_mb} MB");
    // Holding the body alone would take 36 MB, its ids as strings as much again.
    assert!(grown_mb < 24, "RSS grew by {grown_mb} MB");
}
