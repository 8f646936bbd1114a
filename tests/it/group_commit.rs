//! Group commit: two purchase queues (two service instances) on one database, racing the
//! same users and the last units, sell exactly the stock, once per user; and a batch refused
//! at a boundary moment (the opening, a buyer who bought elsewhere) is decided again by batch
//! statements, counted by a statement-level trigger, never one statement per buyer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flashsale::domain::SaleState;
use flashsale::store::{PurchaseBatcher, PurchaseOutcome, Store, StoreError};
use sqlx::PgPool;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::support::{counters, id_of, live_sale_id, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_batching_the_same_users_sell_the_stock_exactly_once_each() {
    let app = spawn_app().await;
    let sale = app.active_sale(150).await;
    let sku = sale["sku"].as_str().expect("sku").to_string();
    let instances = [
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(4)),
        PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(4)),
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
    let queue = PurchaseBatcher::new(app.store.clone(), false, Duration::from_secs(4));
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

/// Counts, from now on, the statements that try to insert purchases (a batch, a single
/// purchase, a confirm), whether they sell or not: a statement-level trigger fires once per
/// statement even when it inserts no row.
async fn count_purchase_statements(pool: &PgPool) {
    for sql in [
        "CREATE SEQUENCE test_purchase_statements",
        "CREATE FUNCTION test_count_purchase_statement() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN PERFORM nextval('test_purchase_statements'); RETURN NULL; END $$",
        "CREATE TRIGGER test_count_purchase_statements AFTER INSERT ON purchases
             FOR EACH STATEMENT EXECUTE FUNCTION test_count_purchase_statement()",
    ] {
        sqlx::query(sql)
            .execute(pool)
            .await
            .expect("statement counter");
    }
}

async fn purchase_statements(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_purchase_statements",
    )
    .fetch_one(pool)
    .await
    .expect("statement count")
}

/// Waits until a statement waits for a lock (the crowd's batch, behind a parked
/// transaction); returns whether every waiting one started before the sale's opening.
async fn until_lock_wait(pool: &PgPool, sale_id: Uuid) -> bool {
    for _ in 0..1_000 {
        let before: Option<bool> = sqlx::query_scalar(
            "SELECT bool_and(a.xact_start < s.starts_at)
               FROM pg_stat_activity a, sales s
              WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
                AND s.id = $1",
        )
        .bind(sale_id)
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if let Some(before) = before {
            return before;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the crowd's statement never waited for the sale row");
}

/// Buys for `buyer-0` .. `buyer-{count - 1}` through `queue`, each in a task of its own.
/// On a current-thread runtime every task queues its request before the sale's batcher
/// runs again, so the whole crowd is one batch.
fn crowd(
    queue: &PurchaseBatcher,
    sku: &str,
    count: usize,
) -> Vec<JoinHandle<(String, Result<PurchaseOutcome, StoreError>)>> {
    (0..count)
        .map(|n| {
            let (queue, sku) = (queue.clone(), sku.to_string());
            tokio::spawn(async move {
                let user = format!("buyer-{n}");
                let outcome = queue.purchase(&sku, &user).await;
                (user, outcome)
            })
        })
        .collect()
}

async fn audit_passes(store: &Store, sale_id: Uuid) {
    let report = store.audit_sale(sale_id).await.expect("audit");
    assert!(report.passed(), "{:?}", report.checks);
}

// Current-thread on purpose: see `crowd`.
#[tokio::test]
async fn a_crowd_whose_batch_straddles_the_opening_is_sold_by_batch_statements_not_one_by_one() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let sale = app.active_sale(200).await;
    let (id, sku) = (id_of(&sale), sale["sku"].as_str().expect("sku").to_string());
    count_purchase_statements(pool).await;
    sqlx::query("UPDATE sales SET starts_at = now() + interval '400 milliseconds' WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .expect("open in a moment");
    let queue = PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5));
    // Resolves and caches the sku, and starts the sale's batcher.
    let early = queue.purchase(&sku, "early").await.expect("purchase");
    assert!(
        matches!(early, PurchaseOutcome::NotActive(SaleState::Scheduled)),
        "{early:?}"
    );

    // Park on the sale row: the crowd's statement starts (its now() fixed) before the
    // opening and waits for the row until after it, as a busy row makes it do.
    let mut parked = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sales WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .execute(&mut *parked)
        .await
        .expect("park");
    let buyers = crowd(&queue, &sku, 500);
    assert!(
        until_lock_wait(pool, id).await,
        "the crowd's statement started after the opening: nothing straddled it"
    );
    loop {
        let open: bool = sqlx::query_scalar("SELECT starts_at <= now() FROM sales WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("clock");
        if open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    parked.commit().await.expect("let go");

    let mut bought = 0;
    for buyer in buyers {
        match buyer.await.expect("task") {
            (_, Ok(PurchaseOutcome::Purchased(_))) => bought += 1,
            (_, Ok(PurchaseOutcome::SoldOut)) => {}
            (user, other) => panic!("{user}: no definite answer: {other:?}"),
        }
    }
    assert_eq!(bought, 200);
    assert_eq!(counters(pool, &sku).await, (200, 0, 0, 200));
    audit_passes(&app.store, id).await;
    // "early", the crowd's refused statement and its retry; one per buyer would be 500 more.
    let statements = purchase_statements(pool).await;
    assert!(
        statements <= 5,
        "{statements} purchase statements for 501 buyers"
    );
}

// Current-thread on purpose: see `crowd`.
#[tokio::test]
async fn a_buyer_the_batch_skips_as_already_bought_leaves_no_unit_unsold_and_is_told_so() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let sale = app.active_sale(100).await;
    let (id, sku) = (id_of(&sale), sale["sku"].as_str().expect("sku").to_string());
    count_purchase_statements(pool).await;
    let queue = PurchaseBatcher::new(app.store.clone(), true, Duration::from_secs(5));
    // Resolves and caches the sku, and starts the sale's batcher.
    let first = queue.purchase(&sku, "first").await.expect("purchase");
    assert!(matches!(first, PurchaseOutcome::Purchased(_)), "{first:?}");

    // buyer-7 buys through another path, committed after the crowd's statement took its
    // snapshot: the statement counts them fresh, and its INSERT skips them (ON CONFLICT),
    // one unit short, while it refused the buyers past the units it meant to sell.
    let mut elsewhere = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM sales WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .execute(&mut *elsewhere)
        .await
        .expect("lock");
    let other_purchase = Uuid::new_v4();
    sqlx::query("INSERT INTO purchases (id, sale_id, user_id) VALUES ($1, $2, 'buyer-7')")
        .bind(other_purchase)
        .bind(id)
        .execute(&mut *elsewhere)
        .await
        .expect("bought elsewhere");
    sqlx::query("UPDATE sales SET available = available - 1, sold = sold + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *elsewhere)
        .await
        .expect("counters");
    let buyers = crowd(&queue, &sku, 300);
    until_lock_wait(pool, id).await;
    elsewhere.commit().await.expect("commit");

    let (mut bought, mut sold_out) = (0, 0);
    for buyer in buyers {
        match buyer.await.expect("task") {
            (user, Ok(PurchaseOutcome::AlreadyPurchased(purchase))) => {
                assert_eq!((user.as_str(), purchase.id), ("buyer-7", other_purchase));
            }
            (user, Ok(PurchaseOutcome::Purchased(_))) => {
                assert_ne!(user, "buyer-7");
                bought += 1;
            }
            (user, Ok(PurchaseOutcome::SoldOut)) => {
                assert_ne!(user, "buyer-7", "a buyer who bought is never told SOLD_OUT");
                sold_out += 1;
            }
            (user, other) => panic!("{user}: no definite answer: {other:?}"),
        }
    }
    // 100 units: "first", buyer-7 elsewhere, and 98 of the crowd, the last one by a retry.
    assert_eq!((bought, sold_out), (98, 201));
    assert_eq!(counters(pool, &sku).await, (100, 0, 0, 100));
    audit_passes(&app.store, id).await;
    // "first", buyer-7's insert, the crowd's statement and its retry.
    let statements = purchase_statements(pool).await;
    assert!(
        statements <= 5,
        "{statements} purchase statements for 302 buyers"
    );
}
