//! Allow-list changes racing purchases against real Postgres (group-committed and
//! single-statement): removals racing their buyers' purchases, a replacing upload racing a
//! crowd.

use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::allowlist::{
    buy, list_size, listed_sale, purchase_rows, put_json, remove, share, users,
};
use crate::queue::broken_invariants;
use crate::support::{code, spawn_app};

/// What one buyer's race did.
struct Raced {
    user: String,
    removal_answered: Instant,
    purchase_sent: Instant,
    bought: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_racing_purchases_never_let_a_removed_buyer_buy_after_the_answer() {
    let app = spawn_app().await;
    // A limit of 2: a buyer who bought could buy again, so any later sale is visible.
    let (sku, sale) = listed_sale(&app, 2_000, json!({"perCustomerLimit": 2})).await;
    let buyers = users("r", 0..300);
    put_json(&app, &sku, &buyers).await;
    let barrier = Arc::new(Barrier::new(buyers.len() * 2));
    let mut tasks = Vec::new();
    for (i, user) in buyers.iter().cloned().enumerate() {
        let (app1, barrier1, sku1, user1) =
            (share(&app), barrier.clone(), sku.clone(), user.clone());
        let removal = tokio::spawn(async move {
            barrier1.wait().await;
            assert_eq!(remove(&app1, &sku1, &user1).await, StatusCode::NO_CONTENT);
            Instant::now()
        });
        let (app2, barrier2, sku2) = (share(&app), barrier.clone(), sku.clone());
        let purchase = tokio::spawn(async move {
            barrier2.wait().await;
            let sent = Instant::now();
            // Every other buyer through the single statement, the rest group-committed.
            let bought = buy(&app2, &sku2, sale, &user, i % 2 == 1).await;
            (user, sent, bought)
        });
        tasks.push((removal, purchase));
    }
    let mut raced = Vec::new();
    for (removal, buy) in tasks {
        let removal_answered = removal.await.expect("removal");
        let (user, purchase_sent, bought) = buy.await.expect("purchase");
        raced.push(Raced {
            user,
            removal_answered,
            purchase_sent,
            bought,
        });
    }
    let bought: Vec<&Raced> = raced.iter().filter(|r| r.bought).collect();
    // Every 201 is a committed row; none was sent after its buyer's removal was answered.
    assert_eq!(purchase_rows(&app, sale).await, bought.len() as i64);
    for race in &bought {
        assert!(
            race.purchase_sent <= race.removal_answered,
            "{} bought after removal",
            race.user
        );
    }
    // After every removal was answered, nobody buys, through either path.
    assert_eq!(list_size(&app, &sku).await, 0);
    for (i, race) in raced.iter().enumerate() {
        assert!(
            !buy(&app, &sku, sale, &race.user, i % 2 == 1).await,
            "{}",
            race.user
        );
    }
    assert_eq!(purchase_rows(&app, sale).await, bought.len() as i64);
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacing_upload_racing_purchases_sells_only_to_listed_buyers() {
    let app = spawn_app().await;
    let (sku, sale) = listed_sale(&app, 5_000, json!({"perCustomerLimit": 10})).await;
    // old: 0-199, new: 100-299; 300-399 on neither list.
    let old = users("p", 0..200);
    let new = users("p", 100..300);
    put_json(&app, &sku, &old).await;
    let everyone = users("p", 0..400);
    let barrier = Arc::new(Barrier::new(everyone.len() + 1));
    let replacing = {
        let (app, sku, new, barrier) = (share(&app), sku.clone(), new.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let (status, body) = put_json(&app, &sku, &new).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(
                (body["added"].as_i64(), body["removed"].as_i64()),
                (Some(100), Some(100))
            );
            Instant::now()
        })
    };
    let mut tasks = Vec::new();
    for (i, user) in everyone.iter().cloned().enumerate() {
        let (client, sku, barrier) = (app.client.clone(), sku.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut answers = Vec::new();
            // Three purchases in a row each, spread over the upload.
            for _ in 0..3 {
                let sent = Instant::now();
                let (status, body) = crate::support::purchase(&client, &sku, &user).await;
                answers.push((sent, status, code(&body).to_string()));
                tokio::time::sleep(Duration::from_millis((i % 7) as u64)).await;
            }
            (user, answers)
        }));
    }
    let replaced_at = replacing.await.expect("upload");
    for task in tasks {
        let (user, answers) = task.await.expect("buyer");
        let n: usize = user[2..].parse().expect("number");
        for (sent, status, code) in answers {
            match n {
                // On both lists: never refused.
                100..200 => assert_eq!(status, StatusCode::CREATED, "{user}: {code}"),
                // Only on the old list: nothing sent after the replace was answered sells.
                0..100 if status == StatusCode::CREATED => {
                    assert!(sent <= replaced_at, "{user} bought after the replace")
                }
                // Never listed: never sells.
                300.. => assert_eq!((status.as_u16(), code.as_str()), (403, "NOT_ELIGIBLE")),
                _ => assert!(
                    status == StatusCode::CREATED
                        || (status == StatusCode::FORBIDDEN && code == "NOT_ELIGIBLE"),
                    "{user}: {status} {code}"
                ),
            }
        }
    }
    let outsiders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM purchases WHERE sale_id = $1
            AND substr(user_id, 3)::int >= 300",
    )
    .bind(sale)
    .fetch_one(app.store.pool())
    .await
    .expect("count");
    assert_eq!(outsiders, 0);
    assert_eq!(list_size(&app, &sku).await, 200);
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}
