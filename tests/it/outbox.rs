//! The outbox against real Postgres: each change emits exactly its events, in sequence; the
//! feed returns every event once while buyers buy; the stream resumes where it left off; the
//! CSV export matches the table; retention prunes without breaking the audit.

use std::collections::HashMap;
use std::time::Duration;

use flashsale::store::Store;
use flashsale::worker::{Runner, RunnerConfig, ServiceJobs};
use poem::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    ADMIN_KEY, TestApp, id_of, live_sale_id, metric, read_messages, spawn_app, status_and_json,
};

/// Makes every queued job due now and runs them (state changes are recorded by jobs).
async fn run_jobs_now(store: &Store) {
    sqlx::query("UPDATE jobs SET run_at = now() WHERE run_at > now() AND kind <> 'queue_tick'")
        .execute(store.pool())
        .await
        .expect("make jobs due");
    let runner = Runner::new(
        store.clone(),
        ServiceJobs::new(store.clone(), Duration::from_secs(7 * 24 * 3600)),
        RunnerConfig::default(),
    );
    while runner.run_due_jobs().await.expect("run jobs") > 0 {}
}

/// Every event of the sale from the feed, paging with a small page. The feed shows an
/// event once every older transaction of the cluster has finished (other tests run at the
/// same time), so this pages on until it has as many events as the sale has numbered.
async fn feed_of(app: &TestApp, sale: Uuid) -> Vec<Value> {
    let numbered: i64 = sqlx::query_scalar("SELECT last_event_sequence FROM sales WHERE id = $1")
        .bind(sale)
        .fetch_one(app.store.pool())
        .await
        .expect("sale");
    let mut events = Vec::new();
    let mut after = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let query = if after.is_empty() {
            format!("/api/v1/admin/events?sale={sale}&limit=3")
        } else {
            format!("/api/v1/admin/events?sale={sale}&limit=3&after={after}")
        };
        let (status, page) = app.admin_get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        after = page["nextCursor"].as_str().unwrap_or_default().to_string();
        if batch.is_empty() {
            if events.len() as i64 >= numbered || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        events.extend(batch);
    }
}

/// `(sequence, type, userId)` of each event.
fn summary(events: &[Value]) -> Vec<(i64, String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event["sequence"].as_i64().unwrap_or(-1),
                event["type"].as_str().unwrap_or_default().to_string(),
                event["data"]["userId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn expected(rows: &[(&str, &str)]) -> Vec<(i64, String, String)> {
    rows.iter()
        .enumerate()
        .map(|(at, (kind, user))| (at as i64 + 1, kind.to_string(), user.to_string()))
        .collect()
}

async fn audit_passes(store: &Store, sale: Uuid) {
    let report = store.audit_sale(sale).await.expect("audit");
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| format!("{}: {}", check.check_name, check.detail))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        report
            .checks
            .iter()
            .any(|check| check.check_name == "event_sequence_has_no_gaps")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_buys_a_sell_out_and_a_cancel_each_emit_exactly_their_events_in_sequence() {
    let app = spawn_app().await;
    let sold_out = app.active_sale(2).await;
    let cancelled = app.active_sale(5).await;
    run_jobs_now(&app.store).await;
    for (sale, user) in [(&sold_out, "u1"), (&sold_out, "u2"), (&cancelled, "u1")] {
        let sku = sale["sku"].as_str().expect("sku");
        assert_eq!(app.purchase(sku, user).await.0, StatusCode::CREATED);
    }
    // Refusals change nothing, so they emit nothing.
    let sku = sold_out["sku"].as_str().expect("sku");
    assert_eq!(app.purchase(sku, "u1").await.0, StatusCode::CONFLICT);
    assert_eq!(app.purchase(sku, "u3").await.0, StatusCode::CONFLICT);
    let cancelled_sku = cancelled["sku"].as_str().expect("sku");
    let (status, _) = app
        .admin_post(&format!("/api/v1/admin/sales/{cancelled_sku}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK);
    run_jobs_now(&app.store).await;

    let events = feed_of(&app, id_of(&sold_out)).await;
    assert_eq!(
        summary(&events),
        expected(&[
            ("sale.started", ""),
            ("purchase.created", "u1"),
            ("purchase.created", "u2"),
            ("sale.sold_out", ""),
        ])
    );
    let purchase = &events[1];
    assert_eq!(purchase["sku"], sold_out["sku"]);
    assert_eq!(purchase["saleId"], sold_out["id"]);
    assert_eq!(purchase["data"]["checkout"], "instant");
    assert!(purchase["data"]["id"].is_string() && purchase["data"]["createdAt"].is_string());
    assert_eq!(
        events[3]["data"],
        json!({"stock": 2, "sold": 2, "held": 0, "available": 0})
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");

    let events = feed_of(&app, id_of(&cancelled)).await;
    assert_eq!(
        summary(&events),
        expected(&[
            ("sale.started", ""),
            ("purchase.created", "u1"),
            ("sale.cancelled", ""),
        ])
    );
    assert_eq!(events[2]["data"]["sold"], 1);
    audit_passes(&app.store, id_of(&sold_out)).await;
    audit_passes(&app.store, id_of(&cancelled)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_granted_expired_released_confirmed_and_an_archive_emit_exactly_their_events() {
    let app = spawn_app().await;
    let sku = format!("q-{}", Uuid::new_v4().simple());
    let sale = app
        .create_sale(json!({"sku": sku, "name": "Q", "stock": 2, "checkout": "queued"}))
        .await;
    let sale = id_of(&sale);
    run_jobs_now(&app.store).await;
    for user in ["a", "b", "c", "d"] {
        assert_eq!(app.join_queue(&sku, user).await.0, StatusCode::ACCEPTED);
    }
    app.store.queue_tick(sale, 500).await.expect("tick"); // grants a, b
    sqlx::query(
        "UPDATE queue_entries SET hold_expires_at = now() - interval '1 ms'
          WHERE sale_id = $1 AND user_id = 'a'",
    )
    .bind(sale)
    .execute(app.store.pool())
    .await
    .expect("expire a");
    app.store.queue_tick(sale, 500).await.expect("tick"); // expires a, grants c
    let confirmed = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue/b/confirm"))
        .send()
        .await;
    assert_eq!(confirmed.0.status(), StatusCode::CREATED);
    let left = app
        .client
        .delete(format!("/api/v1/sales/{sku}/queue/c"))
        .send()
        .await;
    assert_eq!(left.0.status(), StatusCode::OK);
    app.store.queue_tick(sale, 500).await.expect("tick"); // grants d
    let deleted = app
        .client
        .delete(format!("/api/v1/admin/sales/{sku}"))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await;
    let (status, body) = status_and_json(deleted).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("archived"))
    );
    run_jobs_now(&app.store).await;

    let events = feed_of(&app, sale).await;
    assert_eq!(
        summary(&events),
        expected(&[
            ("sale.started", ""),
            ("hold.granted", "a"),
            ("hold.granted", "b"),
            ("hold.expired", "a"),
            ("hold.granted", "c"),
            ("purchase.created", "b"),
            ("hold.released", "c"),
            ("hold.granted", "d"),
            // The archive cancelled the sale (it could still sell) and records both in its
            // own transaction, then voids d's live hold.
            ("sale.cancelled", ""),
            ("sale.archived", ""),
            ("hold.expired", "d"),
        ])
    );
    assert_eq!(events[5]["data"]["checkout"], "queued");
    assert!(events[1]["data"]["holdExpiresAt"].is_string());
    assert_eq!(
        events[8]["data"],
        json!({"stock": 2, "sold": 1, "held": 1, "available": 0})
    );
    audit_passes(&app.store, sale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirm_of_a_queued_sales_last_unit_emits_its_sold_out_at_once() {
    let app = spawn_app().await;
    let sku = format!("q-{}", Uuid::new_v4().simple());
    let sale = app
        .create_sale(json!({"sku": sku, "name": "Q", "stock": 1, "checkout": "queued"}))
        .await;
    let sale = id_of(&sale);
    run_jobs_now(&app.store).await;
    let joined = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue"))
        .body_json(&json!({ "userId": "last" }))
        .send()
        .await;
    assert_eq!(joined.0.status(), StatusCode::ACCEPTED);
    app.store.queue_tick(sale, 500).await.expect("tick");
    let confirmed = app
        .client
        .post(format!("/api/v1/sales/{sku}/queue/last/confirm"))
        .send()
        .await;
    assert_eq!(confirmed.0.status(), StatusCode::CREATED);
    // Only jobs already due: the sell-out's state job, queued by the confirm itself.
    let runner = Runner::new(
        app.store.clone(),
        ServiceJobs::new(app.store.clone(), Duration::from_secs(7 * 24 * 3600)),
        RunnerConfig::default(),
    );
    runner.run_due_jobs().await.expect("run jobs");
    let events = feed_of(&app, sale).await;
    assert_eq!(
        summary(&events),
        expected(&[
            ("sale.started", ""),
            ("hold.granted", "last"),
            ("purchase.created", "last"),
            ("sale.sold_out", ""),
        ])
    );
    audit_passes(&app.store, sale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_the_feed_while_a_thousand_buyers_buy_returns_each_purchase_exactly_once() {
    let app = spawn_app().await;
    let sale = app.active_sale(1000).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let sale = id_of(&sale);
    let buyers: Vec<_> = (0..1000)
        .map(|n| {
            let client = app.client.clone();
            let sku = sku.clone();
            tokio::spawn(async move {
                crate::support::purchase(&client, &sku, &format!("buyer-{n}"))
                    .await
                    .0
            })
        })
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut after = String::new();
    let mut pages = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 1000 && tokio::time::Instant::now() < deadline {
        let query = format!("/api/v1/admin/events?type=purchase.created&limit=37&after={after}");
        let query = if after.is_empty() {
            query.replace("&after=", "")
        } else {
            query
        };
        let (status, page) = app.admin_get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for event in page["events"].as_array().cloned().unwrap_or_default() {
            let user = event["data"]["userId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *seen.entry(user).or_default() += 1;
        }
        after = page["nextCursor"].as_str().unwrap_or_default().to_string();
    }
    for buyer in buyers {
        assert_eq!(buyer.await.expect("buyer"), StatusCode::CREATED);
    }
    assert_eq!(seen.len(), 1000, "every purchase was paged");
    assert!(seen.values().all(|&n| n == 1), "none twice: {seen:?}");
    assert!(pages > 1000 / 37, "paged while buying ({pages} pages)");
    audit_passes(&app.store, sale).await;
}

/// Reads SSE messages (`id`, parsed `data`) from a streaming body until `count` arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_new_events_as_they_commit_and_resumes_after_last_event_id() {
    let app = spawn_app().await;
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let live = app
        .client
        .get(format!(
            "/api/v1/admin/events/stream?sale={sku}&type=purchase.created"
        ))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await;
    assert_eq!(live.0.status(), StatusCode::OK);
    assert_eq!(metric(&app, "flashsale_event_streams_open").await as i64, 1);
    let buying = {
        let client = app.client.clone();
        let sku = sku.clone();
        tokio::spawn(async move {
            for user in ["s1", "s2", "s3"] {
                tokio::time::sleep(Duration::from_millis(100)).await;
                crate::support::purchase(&client, &sku, user).await;
            }
        })
    };
    let messages = read_messages(live, 3).await;
    buying.await.expect("buyers");
    let users: Vec<&str> = messages
        .iter()
        .filter_map(|(_, event)| event["data"]["userId"].as_str())
        .collect();
    assert_eq!(users, ["s1", "s2", "s3"]);

    let resumed = app
        .client
        .get(format!("/api/v1/admin/events/stream?sale={sku}"))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .header("Last-Event-ID", messages[0].0.clone())
        .send()
        .await;
    let again = read_messages(resumed, 2).await;
    assert_eq!(
        again[0].1, messages[1].1,
        "resumes right after the id it was given"
    );
    assert_eq!(again[1].1, messages[2].1);

    assert_eq!(
        metric(&app, "flashsale_event_streams_open").await as i64,
        0,
        "a stream whose client went is dropped"
    );
    let (status, body) = app
        .admin_get("/api/v1/admin/events?after=not-a-cursor")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_of_a_hundred_thousand_purchases_matches_the_table() {
    let app = spawn_app().await;
    let sale = app.active_sale(100_000).await;
    let sale = id_of(&sale);
    let pool = app.store.pool();
    let mut tx = pool.begin().await.expect("tx");
    // Setup, not the service: free of its statement timeout on a loaded machine.
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await
        .expect("no timeout for the setup");
    sqlx::query(
        "WITH taken AS (UPDATE sales SET available = 0, sold = 100000 WHERE id = $1)
         INSERT INTO purchases (id, sale_id, user_id)
         SELECT gen_random_uuid(), $1,
                CASE WHEN g % 1000 = 0 THEN 'user, \"quoted\" ' || g ELSE 'user-' || g END
           FROM generate_series(1, 100000) g",
    )
    .bind(sale)
    .execute(&mut *tx)
    .await
    .expect("seed purchases");
    tx.commit().await.expect("commit");

    let response = app
        .client
        .get(format!("/api/v1/admin/sales/{sale}/purchases"))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .header("Accept", "text/csv")
        .send()
        .await;
    assert_eq!(response.0.status(), StatusCode::OK);
    assert_eq!(response.0.content_type(), Some("text/csv"));
    let csv = response.0.into_body().into_string().await.expect("body");
    let rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>, i32)> = sqlx::query_as(
        "SELECT id, user_id, created_at, quantity FROM purchases WHERE sale_id = $1
          ORDER BY user_id, units_before",
    )
    .bind(sale)
    .fetch_all(pool)
    .await
    .expect("purchases");
    let mut expected = String::from("purchase_id,sale_id,user_id,created_at,quantity,variant\n");
    for (id, user, at, quantity) in &rows {
        let user = if user.contains(',') {
            format!("\"{}\"", user.replace('"', "\"\""))
        } else {
            user.clone()
        };
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        expected.push_str(&format!("{id},{sale},{user},{at},{quantity},\n"));
    }
    assert_eq!(rows.len(), 100_000);
    assert!(csv == expected, "the CSV differs from the table");

    // The JSON pages walk the same rows.
    let (status, page) = app
        .admin_get(&format!("/api/v1/admin/sales/{sale}/purchases?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["purchases"][0]["userId"].as_str(),
        Some(rows[0].1.as_str())
    );
    let after = page["nextCursor"].as_str().expect("cursor").to_string();
    let next = app
        .client
        .get(format!("/api/v1/admin/sales/{sale}/purchases"))
        .query("limit", &1)
        .query("after", &after)
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await;
    let (_, next) = status_and_json(next).await;
    assert_eq!(
        next["purchases"][0]["userId"].as_str(),
        Some(rows[2].1.as_str())
    );
    // An explicit format wins over Accept.
    let page = app
        .client
        .get(format!("/api/v1/admin/sales/{sale}/purchases"))
        .query("format", &"json")
        .query("limit", &1)
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .header("Accept", "text/csv")
        .send()
        .await;
    let (status, page) = status_and_json(page).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["purchases"][0]["userId"].as_str(),
        Some(rows[0].1.as_str())
    );
    audit_passes(&app.store, sale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_events_but_keeps_those_a_pending_delivery_needs_and_the_audit_holds()
{
    let app = spawn_app().await;
    let sale = app.active_sale(10).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let sale = live_sale_id(&app.store, &sku).await;
    for n in 0..6 {
        app.purchase(&sku, &format!("r{n}")).await;
    }
    // A pending delivery of the 5th event holds it (and everything after) back.
    let (status, hook) = app
        .admin_post_json(
            "/api/v1/admin/webhooks",
            json!({"url": "http://127.0.0.1:9/x"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let hook: Uuid = id_of(&hook);
    // Its fan-out has read every event (a new endpoint starts at the feed's horizon, which
    // other tests' open transactions can hold below these events; retention would then
    // keep them for it, rightly).
    sqlx::query(
        "UPDATE webhook_endpoints SET (cursor_tx, cursor_sale, cursor_sequence) =
             (SELECT feed_tx, sale_id, sequence FROM events
               ORDER BY feed_tx DESC, sale_id DESC, sequence DESC LIMIT 1)
          WHERE id = $1",
    )
    .bind(hook)
    .execute(app.store.pool())
    .await
    .expect("fanned out");
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, event_tx, sale_id, sequence, retry_until)
         SELECT $1, feed_tx, sale_id, sequence, now() + interval '1 hour'
           FROM events WHERE sale_id = $2 AND sequence = 5",
    )
    .bind(hook)
    .bind(sale)
    .execute(app.store.pool())
    .await
    .expect("pending delivery");
    sqlx::query("UPDATE events SET occurred_at = now() - interval '8 days' WHERE sale_id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("age the events");

    let pruned = app
        .store
        .prune_events(Duration::from_secs(7 * 24 * 3600), 1_000)
        .await
        .expect("prune");
    assert_eq!((pruned.events, pruned.more), (4, false));
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE sale_id = $1 ORDER BY sequence")
            .bind(sale)
            .fetch_all(app.store.pool())
            .await
            .expect("events");
    // sale.started (1, written with the first purchase), then the six purchases (2-7).
    assert_eq!(left, [5, 6, 7]);
    audit_passes(&app.store, sale).await;
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases WHERE sale_id = $1")
        .bind(sale)
        .fetch_one(app.store.pool())
        .await
        .expect("count");
    assert_eq!(purchases, 6, "purchases are never pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_come_with_their_change_not_from_a_job_even_for_a_crowd_at_the_opening() {
    let app = spawn_app().await;
    let starts = chrono::Utc::now() + chrono::Duration::hours(1);
    let sku = format!("q-{}", Uuid::new_v4().simple());
    let sale = app
        .create_sale(
            json!({"sku": sku, "name": "Q", "stock": 2, "checkout": "queued",
                            "startsAt": starts}),
        )
        .await;
    let sale = id_of(&sale);
    for user in ["a", "b", "c"] {
        assert_eq!(app.join_queue(&sku, user).await.0, StatusCode::ACCEPTED);
    }
    // No job runs in this test: whatever the feed shows came with its change.
    sqlx::query("DELETE FROM jobs")
        .execute(app.store.pool())
        .await
        .expect("no jobs");
    sqlx::query("UPDATE sales SET starts_at = now() - interval '1 second' WHERE id = $1")
        .bind(sale)
        .execute(app.store.pool())
        .await
        .expect("open");
    app.store.queue_tick(sale, 500).await.expect("the opening");
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM queue_entries WHERE sale_id = $1 AND status = 'held'",
    )
    .bind(sale)
    .fetch_all(app.store.pool())
    .await
    .expect("held");
    for user in &held {
        let confirmed = app
            .client
            .post(format!("/api/v1/sales/{sku}/queue/{user}/confirm"))
            .send()
            .await;
        assert_eq!(confirmed.0.status(), StatusCode::CREATED);
    }
    let kinds: Vec<String> = summary(&feed_of(&app, sale).await)
        .into_iter()
        .map(|(_, kind, _)| kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "sale.started",
            "hold.granted",
            "hold.granted",
            "purchase.created",
            "purchase.created",
            "sale.sold_out",
        ],
        "the start before the first hold, the sell-out with the last confirm"
    );

    // A cancel's event is written by the cancel itself, after the start it implies.
    let instant = app.active_sale(5).await;
    let instant_sku = instant["sku"].as_str().expect("sku");
    sqlx::query("DELETE FROM jobs")
        .execute(app.store.pool())
        .await
        .expect("no jobs");
    let (status, _) = app
        .admin_post(&format!("/api/v1/admin/sales/{instant_sku}/cancel"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<String> = summary(&feed_of(&app, id_of(&instant)).await)
        .into_iter()
        .map(|(_, kind, _)| kind)
        .collect();
    assert_eq!(kinds, ["sale.started", "sale.cancelled"]);
}
