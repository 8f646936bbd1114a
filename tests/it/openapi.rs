//! The committed OpenAPI document is the one the service serves.

use poem::http::StatusCode;

use crate::support::spawn_app;

const COMMITTED: &str = include_str!("../../openapi/openapi.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_spec_matches_the_served_spec() {
    let app = spawn_app().await;
    let response = app.client.get("/openapi.json").send().await;
    assert_eq!(response.0.status(), StatusCode::OK);
    let served: serde_json::Value =
        serde_json::from_str(&response.0.into_body().into_string().await.expect("body"))
            .expect("json");
    let committed: serde_json::Value = serde_json::from_str(COMMITTED).expect("committed json");
    assert!(
        served == committed,
        "openapi/openapi.json is stale: regenerate it with `just openapi` \
         (cargo run -- openapi > openapi/openapi.json)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_lists_every_error_code_and_swagger_ui_is_served() {
    let committed: serde_json::Value = serde_json::from_str(COMMITTED).expect("json");
    let codes = &committed["components"]["schemas"]["ErrorCode"]["enum"];
    for expected in [
        "INVALID_REQUEST",
        "UNAUTHORIZED",
        "SALE_NOT_FOUND",
        "SKU_TAKEN",
        "SOLD_OUT",
        "ALREADY_PURCHASED",
        "INSUFFICIENT_STOCK",
        "LIMIT_REACHED",
        "QUANTITY_TOO_LARGE",
        "SALE_NOT_ACTIVE",
        "WRONG_CHECKOUT",
        "NOT_PURCHASED",
        "RATE_LIMITED",
        "INTERNAL",
    ] {
        assert!(
            codes
                .as_array()
                .is_some_and(|c| c.iter().any(|v| v == expected)),
            "{expected}"
        );
    }
    let purchase = &committed["paths"]["/api/v1/sales/{sale}/purchases"]["post"]["responses"];
    for status in ["201", "400", "404", "409", "429", "500"] {
        assert!(
            purchase.get(status).is_some(),
            "purchase documents {status}"
        );
    }
    let app = spawn_app().await;
    let docs = app.client.get("/docs").send().await;
    assert_eq!(docs.0.status(), StatusCode::OK);
}
