//! A raffle with variants against real Postgres: each variant's units go to its own
//! entrants in draw order (replayed from the seed), an expired hold passes to the next
//! entrant of the same variant, and the rest learn `not_selected` when their variant is gone.

use std::collections::HashMap;

use poem::http::StatusCode;
use serde_json::json;

use crate::queue::broken_invariants;
use crate::raffle::{confirm, end_window, enter, raffle, replay, statuses, tick_until_finished};
use crate::support::{code, spawn_app};
use crate::variant_holds::variant_rows;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variants_units_go_to_its_entrants_in_draw_order() {
    let app = spawn_app().await;
    let variants = json!([{"code": "S", "stock": 2}, {"code": "M", "stock": 3}]);
    let (sku, sale) = raffle(&app, 5, json!({"variants": variants, "holdSeconds": 60})).await;
    let (status, body) = enter(&app, &sku, json!({"userId": "x"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "VARIANT_REQUIRED")
    );
    let (status, body) = enter(&app, &sku, json!({"userId": "x", "variant": "XL"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "UNKNOWN_VARIANT")
    );
    let mut variant_of = HashMap::new();
    for i in 0..40 {
        let (user, variant) = (format!("e{i}"), if i % 2 == 0 { "S" } else { "M" });
        let (status, body) = enter(&app, &sku, json!({"userId": user, "variant": variant})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["variant"], variant);
        variant_of.insert(user, variant);
    }
    end_window(&app, sale).await;
    app.store.raffle_tick(sale, 500).await.expect("the draw");
    // Each variant's line, in the draw order anyone replays from the seed.
    let order = replay(&app, &sku, sale).await;
    let line = |variant: &str| -> Vec<String> {
        order
            .iter()
            .filter(|u| variant_of[u.as_str()] == variant)
            .cloned()
            .collect()
    };
    let (s_line, m_line) = (line("S"), line("M"));
    let now = statuses(&app, sale).await;
    let selected = |line: &[String]| -> Vec<String> {
        line.iter()
            .filter(|u| now[u.as_str()] == "selected")
            .cloned()
            .collect()
    };
    assert_eq!(selected(&s_line), s_line[..2].to_vec());
    assert_eq!(selected(&m_line), m_line[..3].to_vec());
    assert_eq!(
        variant_rows(&app, sale).await,
        [("S".into(), 0, 2, 0), ("M".into(), 0, 3, 0)]
    );

    // The first of S confirms; the second lets the hold run out: it passes to the third of
    // S, not to anyone of M.
    let (status, bought) = confirm(&app, &sku, &s_line[0]).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    assert_eq!(bought["variant"], "S");
    sqlx::query(
        "UPDATE raffle_entries SET hold_expires_at = now() - interval '1 millisecond'
          WHERE sale_id = $1 AND user_id = $2",
    )
    .bind(sale)
    .bind(&s_line[1])
    .execute(app.store.pool())
    .await
    .expect("expire");
    app.store.raffle_tick(sale, 500).await.expect("tick");
    let now = statuses(&app, sale).await;
    assert_eq!(now[s_line[1].as_str()], "expired");
    assert_eq!(now[s_line[2].as_str()], "selected");
    for user in [&s_line[2], &m_line[0], &m_line[1], &m_line[2]] {
        let (status, body) = confirm(&app, &sku, user).await;
        assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
    }
    tick_until_finished(&app, sale).await;
    let now = statuses(&app, sale).await;
    let count = |status: &str| now.values().filter(|s| s.as_str() == status).count();
    assert_eq!(
        (count("purchased"), count("expired"), count("not_selected")),
        (5, 1, 34)
    );
    assert_eq!(
        variant_rows(&app, sale).await,
        [("S".into(), 0, 0, 2), ("M".into(), 0, 0, 3)]
    );
    assert_eq!(
        broken_invariants(&app.store, &sku).await,
        Vec::<String>::new()
    );
}
