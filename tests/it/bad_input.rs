//! A table of malformed requests: each gets its 4xx and machine-readable `code`, never a 500.

use poem::http::{Method, StatusCode};
use serde_json::Value;

use crate::support::{ADMIN_KEY, code, spawn_app, status_and_json};

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    content_type: &'static str,
    admin: bool,
    status: StatusCode,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        admin: path.starts_with("/api/v1/admin"),
        method,
        path,
        body,
        content_type: "application/json",
        status: StatusCode::from_u16(status).expect("status"),
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_a_4xx_with_a_code() {
    let app = spawn_app().await;
    app.create_sale(serde_json::json!({"sku": "live", "name": "Live", "stock": 5}))
        .await;
    let sales = "/api/v1/admin/sales";
    let buy = "/api/v1/sales/live/purchases";
    let long_user = Box::leak(format!(r#"{{"userId":"{}"}}"#, "u".repeat(129)).into_boxed_str());
    let long_ref = Box::leak(format!("/api/v1/sales/{}", "x".repeat(65)).into_boxed_str());
    let mut cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            sales,
            Some("{\"sku\":"),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "not an object",
            Method::POST,
            sales,
            Some("[1,2]"),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "missing stock",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "stock as string",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":"5"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "stock zero",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":0}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "stock too large",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":10000001}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "stock beyond i32",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":99999999999}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "fractional stock",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1.5}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "empty sku",
            Method::POST,
            sales,
            Some(r#"{"sku":"","name":"A","stock":1}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "sku with a slash",
            Method::POST,
            sales,
            Some(r#"{"sku":"a/b","name":"A","stock":1}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "unknown checkout",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1,"checkout":"lottery"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "bad date",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1,"startsAt":"tomorrow"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "end before start",
            Method::POST,
            sales,
            Some(
                r#"{"sku":"a","name":"A","stock":1,"startsAt":"2030-01-02T00:00:00Z","endsAt":"2030-01-01T00:00:00Z"}"#,
            ),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "end in the past with default start",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1,"endsAt":"2000-01-01T00:00:00Z"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "hold of zero seconds",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1,"holdSeconds":0}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "unknown field",
            Method::POST,
            sales,
            Some(r#"{"sku":"a","name":"A","stock":1,"stok":2}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "bad limit",
            Method::GET,
            "/api/v1/admin/sales?limit=0",
            None,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "limit not a number",
            Method::GET,
            "/api/v1/admin/sales?limit=ten",
            None,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase without body",
            Method::POST,
            buy,
            None,
            400,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        case(
            "purchase with empty user",
            Method::POST,
            buy,
            Some(r#"{"userId":""}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase with an empty object",
            Method::POST,
            buy,
            Some("{}"),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase with null user",
            Method::POST,
            buy,
            Some(r#"{"userId":null}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "numeric sku",
            Method::POST,
            sales,
            Some(r#"{"sku":12,"name":"A","stock":1}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase with numeric user",
            Method::POST,
            buy,
            Some(r#"{"userId":42}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase with a too long user",
            Method::POST,
            buy,
            Some(long_user),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase with a control character",
            Method::POST,
            buy,
            Some(r#"{"userId":"a\u0000b"}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "purchase from an unknown sale",
            Method::POST,
            "/api/v1/sales/nope/purchases",
            Some(r#"{"userId":"u"}"#),
            404,
            "SALE_NOT_FOUND",
        ),
        case(
            "view of an unknown sale",
            Method::GET,
            "/api/v1/sales/nope",
            None,
            404,
            "SALE_NOT_FOUND",
        ),
        case(
            "view with a too long reference",
            Method::GET,
            long_ref,
            None,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "unknown route",
            Method::GET,
            "/api/v1/nothing",
            None,
            404,
            "NOT_FOUND",
        ),
        case(
            "wrong method",
            Method::PUT,
            "/api/v1/sales/live",
            None,
            405,
            "METHOD_NOT_ALLOWED",
        ),
        case(
            "cancel an unknown sale",
            Method::POST,
            "/api/v1/admin/sales/nope/cancel",
            None,
            404,
            "SALE_NOT_FOUND",
        ),
        case(
            "delete an unknown sale",
            Method::DELETE,
            "/api/v1/admin/sales/nope",
            None,
            404,
            "SALE_NOT_FOUND",
        ),
        case(
            "audit an unknown sale",
            Method::GET,
            "/api/v1/admin/sales/nope/audit",
            None,
            404,
            "SALE_NOT_FOUND",
        ),
    ];
    cases.push(Case {
        content_type: "text/plain",
        ..case(
            "purchase as text",
            Method::POST,
            buy,
            Some(r#"{"userId":"u"}"#),
            400,
            "UNSUPPORTED_MEDIA_TYPE",
        )
    });
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = app.client.request(case.method.clone(), case.path);
        if let Some(body) = case.body {
            request = request.content_type(case.content_type).body(body);
        }
        if case.admin {
            request = request.header("Authorization", format!("Bearer {ADMIN_KEY}"));
        }
        let (status, body) = status_and_json(request.send().await).await;
        if status != case.status || code(&body) != case.code || !body["message"].is_string() {
            failures.push(format!(
                "{}: expected {} {}, got {status} {body}",
                case.name, case.status, case.code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let sales_count: Value = app.admin_get("/api/v1/admin/sales").await.1;
    assert_eq!(
        sales_count.as_array().map(Vec::len),
        Some(1),
        "no half-created sale"
    );
}

#[tokio::test]
async fn a_sku_shaped_like_a_sale_id_is_refused_at_creation() {
    let app = spawn_app().await;
    for sku in [
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().simple().to_string(),
    ] {
        let (status, body) = app
            .admin_post_json(
                "/api/v1/admin/sales",
                serde_json::json!({"sku": sku, "name": "Shadow", "stock": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&body), "INVALID_REQUEST", "{body}");
    }
}
