//! A raffle entrant's live stream against real Postgres: the draw and the selection pushed
//! by database notifications (the hub's own refresh is a minute apart here, and nobody
//! polls), a winner hearing `selected` then `purchased`, a loser `drawn` then
//! `not_selected`, `until=selected`, and the refusals with their codes, tokens included.

use flashsale::api::buyer_auth::{BuyerTokens, TokenSettings, mint_token};
use poem::http::StatusCode;
use serde_json::json;

use crate::raffle::{confirm, end_window, enter, raffle};
use crate::streams::{WAIT, next, open, status};
use crate::support::{
    Limits, SseReader, TestApp, client_with_tokens, code, spawn_notified_app, status_and_json,
};

async fn entry_stream(app: &TestApp, sku: &str, user: &str) -> SseReader {
    open(app, &format!("/api/v1/sales/{sku}/entries/{user}/events")).await
}

async fn tick(app: &TestApp, sale: uuid::Uuid) {
    app.store.raffle_tick(sale, 500).await.expect("tick");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_winner_hears_selected_then_purchased_and_the_other_entrant_not_selected() {
    let (app, _live) = spawn_notified_app(100).await;
    let (sku, sale) = raffle(&app, 1, json!({"holdSeconds": 120})).await;
    for user in ["ann", "bob"] {
        assert_eq!(
            enter(&app, &sku, json!({"userId": user})).await.0,
            StatusCode::ACCEPTED
        );
    }
    let mut streams = Vec::new();
    for user in ["ann", "bob"] {
        let mut stream = entry_stream(&app, &sku, user).await;
        let hello = next(&mut stream).await;
        assert_eq!(status(&hello), ("status", "entered"));
        assert!(
            hello.data.get("drawSeed").is_none(),
            "hidden before the draw"
        );
        streams.push((user, stream));
    }

    end_window(&app, sale).await;
    // One tick ranks both and selects the first in draw order (stock 1).
    tick(&app, sale).await;
    let mut winner = None;
    for (user, stream) in &mut streams {
        let mut message = next(stream).await;
        if status(&message) == ("drawn", "entered") {
            // The draw may reach a stream before the selection does.
            assert!(message.data["drawPosition"].is_i64(), "{:?}", message.data);
            if message.data["drawPosition"] == 1 {
                message = next(stream).await;
            }
        }
        match status(&message) {
            ("selected", "selected") => {
                assert_eq!(message.data["drawPosition"], 1);
                assert!(message.data["holdExpiresAt"].is_string());
                assert!(message.data["drawSeed"].is_string(), "{:?}", message.data);
                assert!(message.id.parse::<i64>().expect("numeric id") >= 1);
                winner = Some(user.to_string());
            }
            ("drawn", "entered") => {
                assert_eq!(message.data["drawPosition"], 2);
                assert!(message.data["drawSeed"].is_string());
            }
            other => panic!("unexpected {other:?} for {user}"),
        }
    }
    let winner = winner.expect("one entrant was selected");
    let (winner_stream, loser_stream) = match streams.as_mut_slice() {
        [(first, a), (_, b)] if *first == winner => (a, b),
        [(_, a), (_, b)] => (b, a),
        _ => unreachable!(),
    };

    let (answer, bought) = confirm(&app, &sku, &winner).await;
    assert_eq!(answer, StatusCode::CREATED, "{bought}");
    assert_eq!(
        status(&next(winner_stream).await),
        ("purchased", "purchased")
    );
    assert!(winner_stream.next(WAIT).await.is_none(), "final: it ends");
    // The sold-out tick tells the one behind that no turn will come.
    tick(&app, sale).await;
    let told = next(loser_stream).await;
    assert_eq!(status(&told), ("not_selected", "not_selected"));
    assert_eq!(told.data["drawPosition"], 2);
    assert!(loser_stream.next(WAIT).await.is_none());

    // A stream opened (or reopened, with Last-Event-ID) after the end says it and closes.
    let reopened = app
        .client
        .get(format!("/api/v1/sales/{sku}/entries/{winner}/events"))
        .header("Last-Event-ID", told.id.as_str())
        .send()
        .await;
    assert_eq!(reopened.0.status(), StatusCode::OK);
    let mut late = SseReader::new(reopened);
    assert_eq!(status(&next(&mut late).await), ("status", "purchased"));
    assert!(late.next(WAIT).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_selected_ends_at_selected_and_an_expired_hold_is_told() {
    let (app, _live) = spawn_notified_app(100).await;
    let (sku, sale) = raffle(&app, 1, json!({"holdSeconds": 1})).await;
    assert_eq!(
        enter(&app, &sku, json!({"userId": "solo"})).await.0,
        StatusCode::ACCEPTED
    );
    let mut whole = entry_stream(&app, &sku, "solo").await;
    let mut until = open(
        &app,
        &format!("/api/v1/sales/{sku}/entries/solo/events?until=selected"),
    )
    .await;
    assert_eq!(status(&next(&mut whole).await), ("status", "entered"));
    assert_eq!(status(&next(&mut until).await), ("status", "entered"));
    end_window(&app, sale).await;
    tick(&app, sale).await;
    for stream in [&mut whole, &mut until] {
        let mut message = next(stream).await;
        if message.event == "drawn" {
            message = next(stream).await;
        }
        assert_eq!(status(&message), ("selected", "selected"));
    }
    assert!(
        until.next(WAIT).await.is_none(),
        "until=selected ends there"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    tick(&app, sale).await;
    assert_eq!(status(&next(&mut whole).await), ("expired", "expired"));
    assert!(whole.next(WAIT).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_streams_refuse_what_they_cannot_follow_with_codes() {
    let (app, _live) = spawn_notified_app(10).await;
    let (sku, _) = raffle(&app, 3, json!({})).await;
    let queued = app
        .create_sale(json!({"sku": "rs-queued", "name": "Q", "stock": 5, "checkout": "queued"}))
        .await;
    assert_eq!(queued["checkout"], "queued");
    assert_eq!(
        enter(&app, &sku, json!({"userId": "u"})).await.0,
        StatusCode::ACCEPTED
    );
    let bad_id = Some(("Last-Event-ID", "not-a-number"));
    let cases = [
        (
            format!("/api/v1/sales/{sku}/entries/nobody/events"),
            None,
            StatusCode::NOT_FOUND,
            "NOT_ENTERED",
        ),
        (
            "/api/v1/sales/rs-queued/entries/u/events".into(),
            None,
            StatusCode::CONFLICT,
            "WRONG_CHECKOUT",
        ),
        (
            "/api/v1/sales/no-such-sale/entries/u/events".into(),
            None,
            StatusCode::NOT_FOUND,
            "SALE_NOT_FOUND",
        ),
        (
            format!("/api/v1/sales/{sku}/entries/u/events?until=held"),
            None,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            format!("/api/v1/sales/{sku}/entries/u/events"),
            bad_id,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ];
    for (path, header, expected, expected_code) in cases {
        let mut request = app.client.get(&path);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let (answer, body) = status_and_json(request.send().await).await;
        assert_eq!(
            (answer, code(&body)),
            (expected, expected_code),
            "{path} {header:?}"
        );
    }

    // With buyer tokens on, only the entrant's own token opens it.
    let settings = TokenSettings {
        secret: Some("raffle-stream-secret".into()),
        ..TokenSettings::default()
    };
    let secured = client_with_tokens(
        app.store.clone(),
        Limits::off(),
        BuyerTokens::new(&settings),
    );
    let path = format!("/api/v1/sales/{sku}/entries/u/events");
    let with = |user: &str| format!("Bearer {}", mint_token(&settings, user, 600).expect("mint"));
    let (answer, body) = status_and_json(secured.get(&path).send().await).await;
    assert_eq!(
        (answer, code(&body)),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    let (answer, body) = status_and_json(
        secured
            .get(&path)
            .header("Authorization", with("v"))
            .send()
            .await,
    )
    .await;
    assert_eq!((answer, code(&body)), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    let own = secured
        .get(&path)
        .header("Authorization", with("u"))
        .send()
        .await;
    assert_eq!(own.0.status(), StatusCode::OK);
    let mut own = SseReader::new(own);
    assert_eq!(status(&next(&mut own).await), ("status", "entered"));
    drop(own);

    // This instance serves ten streams: the eleventh is refused until one goes.
    let mut open_streams = Vec::new();
    for _ in 0..10 {
        open_streams.push(entry_stream(&app, &sku, "u").await);
    }
    let refused = app.client.get(&path).send().await;
    assert_eq!(refused.0.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.0.headers().get("Retry-After").is_some());
    let (_, body) = status_and_json(refused).await;
    assert_eq!(code(&body), "TOO_MANY_STREAMS");
}
