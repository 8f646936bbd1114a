//! Bad quantities and limits: each refused with its 4xx and `code`, the defaults filled in.

use poem::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::quantities::{join_units, limited_sale, order};
use crate::queue::queued_sale;
use crate::support::{TestApp, code, counters, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quantities_and_limits_are_refused_with_their_codes() {
    let app = spawn_app().await;
    let sale = app.active_sale(10).await;
    assert_eq!(
        (
            sale["perCustomerLimit"].as_i64(),
            sale["maxPerOrder"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let sku = limited_sale(&app, 10, 4, 2).await;
    let (_, view) = app.admin_get(&format!("/api/v1/admin/sales/{sku}")).await;
    assert_eq!(
        (
            view["perCustomerLimit"].as_i64(),
            view["maxPerOrder"].as_i64()
        ),
        (Some(4), Some(2))
    );
    let defaulted = limited_sale_body(&app, json!({"perCustomerLimit": 3})).await;
    assert_eq!(
        defaulted["maxPerOrder"], 3,
        "maxPerOrder defaults to perCustomerLimit"
    );

    for bad in [
        json!({"perCustomerLimit": 0}),
        json!({"perCustomerLimit": 101}),
        json!({"maxPerOrder": 0}),
        json!({"perCustomerLimit": 2, "maxPerOrder": 3}),
        json!({"maxPerOrder": 2}),
        json!({"perCustomerLimit": null}),
        // A holds' cap below one order would stall a queue on that order for good.
        json!({"perCustomerLimit": 4, "maxActiveHolds": 3}),
    ] {
        let mut body =
            json!({"sku": format!("bad-{}", Uuid::new_v4().simple()), "name": "x", "stock": 5});
        if let (Some(body), Some(bad)) = (body.as_object_mut(), bad.as_object()) {
            body.extend(bad.clone());
        }
        let (status, answer) = app
            .admin_post_json("/api/v1/admin/sales", body.clone())
            .await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{body}"
        );
    }
    for (quantity, expected) in [
        (json!(0), "INVALID_REQUEST"),
        (json!(-1), "INVALID_REQUEST"),
        (json!(101), "INVALID_REQUEST"),
        (json!("2"), "INVALID_REQUEST"),
        (json!(null), "INVALID_REQUEST"),
        (json!(3), "QUANTITY_TOO_LARGE"),
    ] {
        let (status, body) =
            order(&app, &sku, json!({"userId": "val", "quantity": quantity})).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, expected),
            "{quantity}: {body}"
        );
        if expected == "QUANTITY_TOO_LARGE" {
            assert_eq!(body["maxPerOrder"], 2);
        }
    }
    // A limit-1 sale refuses two units as too large, whatever the stock.
    let one = sale["sku"].as_str().expect("sku");
    let (status, body) = order(&app, one, json!({"userId": "val", "quantity": 2})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "QUANTITY_TOO_LARGE")
    );
    // The queue's join checks the same.
    let (queued, _) = queued_sale(&app, 5, json!({"perCustomerLimit": 2})).await;
    let (status, body) = join_units(&app, &queued, "val", 3).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "QUANTITY_TOO_LARGE")
    );
    assert_eq!(counters(app.store.pool(), &sku).await, (10, 10, 0, 0));
}

async fn limited_sale_body(app: &TestApp, extra: Value) -> Value {
    let mut body =
        json!({"sku": format!("qty-{}", Uuid::new_v4().simple()), "name": "x", "stock": 5});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    app.create_sale(body).await
}
