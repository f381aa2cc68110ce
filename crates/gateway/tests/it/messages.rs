//! SPEC §3.3: every client message and its answer; bad input never kills the connection.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn ping_pong_echoes_the_id() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    let pong = c.request(json!({"type": "ping", "id": 42}), "pong").await;
    assert_eq!(pong["id"], 42);
    assert!(tidings_protocol::timestamp::parse_rfc3339(pong["timestamp"].as_str().unwrap()).is_some());
}

#[tokio::test]
async fn subscribe_unsubscribe_update_filter_reply_with_the_filter() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    let r = c.request(json!({"type": "subscribe", "id": "s", "event_types": ["a", "b"]}), "subscribed").await;
    assert_eq!(r["id"], "s");
    assert_eq!(r["filter"], json!({"event_types": ["a", "b"], "entity_refs": "*"}));
    let r = c.request(json!({"type": "unsubscribe", "event_types": ["a"]}), "unsubscribed").await;
    assert_eq!(r["filter"], json!({"event_types": ["b"], "entity_refs": "*"}));
    let r = c.request(json!({"type": "update_filter", "event_types": "*", "entity_refs": ["Host:Default/X"]}), "filter_updated").await;
    assert_eq!(r["filter"], json!({"event_types": "*", "entity_refs": ["host:default/x"]}));
}

#[tokio::test]
async fn request_metrics_returns_the_latest_metrics_per_entity() {
    let gw = TestGateway::start().await;
    for cpu in [10.0, 20.0] {
        gw.publish("acme", "metrics_update", Some("host:default/a"), json!({"metrics": {"cpu": cpu, "memory": 1.0}})).await;
    }
    gw.publish("acme", "metrics_update", Some("host:default/b"), json!({"metrics": {"cpu": 5.0, "memory": 1.0}})).await;
    gw.publish("other", "metrics_update", Some("host:default/a"), json!({"metrics": {"cpu": 99.0, "memory": 1.0}})).await;
    let mut c = gw.client("acme", "").await;
    let r = c.request(json!({"type": "request_metrics", "id": 1}), "metrics").await;
    assert_eq!(r["id"], 1);
    assert_eq!(r["data"]["host:default/a"]["data"]["metrics"]["cpu"], 20.0);
    assert_eq!(r["data"]["host:default/b"]["data"]["metrics"]["cpu"], 5.0);
    let r = c.request(json!({"type": "request_metrics", "entity_refs": ["Host:Default/B"]}), "metrics").await;
    assert_eq!(r["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["host:default/b"]);
}

#[tokio::test]
async fn request_history_pages_and_filters() {
    let gw = TestGateway::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(gw.publish("acme", t, None, json!({"i": i})).await.id.unwrap().to_string());
    }
    let mut c = gw.client("acme", "").await;
    let r = c.request(json!({"type": "request_history", "id": "h", "since": ids[1], "limit": 2}), "history").await;
    assert_eq!(r["id"], "h");
    assert_eq!(r["recovered"], true);
    let got: Vec<&str> = r["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[3].as_str()]);
    let r = c.request(json!({"type": "request_history", "event_types": ["odd"]}), "history").await;
    let got: Vec<i64> = r["events"].as_array().unwrap().iter().map(|e| e["data"]["i"].as_i64().unwrap()).collect();
    assert_eq!(got, [1, 3]);
}

#[tokio::test]
async fn auth_refreshes_the_token() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    let mut fresh = claims("acme", "user-1");
    fresh.exp += 3600;
    let r = c.request(json!({"type": "auth", "id": 7, "token": sign(&fresh)}), "authenticated").await;
    assert_eq!(r["id"], 7);
    assert!(r["expires_at"].as_str().unwrap().ends_with('Z'));
    // (Another user's token closes the connection 4003: see edges.rs.)
    let e = c.request(json!({"type": "auth", "token": "junk"}), "error").await;
    assert_eq!(e["code"], "token_invalid");
    c.assert_alive().await;
}

#[tokio::test]
async fn an_expiring_token_closes_4001_unless_refreshed() {
    let gw = TestGateway::start().await;
    let mut short = claims("acme", "u");
    // Expires within a couple of seconds; the jsonwebtoken leeway lets it in.
    short.exp = tidings_token::unix_now() + 1;
    let mut c = Client::connect(&gw.ws_url(&format!("token={}", sign(&short)))).await.unwrap();
    assert_eq!(c.next_json().await["type"], "connected");
    assert_eq!(c.read_until_close().await.1, Some(4001));
}

#[tokio::test]
async fn bad_input_answers_error_and_keeps_the_connection() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    let cases = [
        ("not json at all", "invalid_message"),
        ("[1,2,3]", "invalid_message"),
        (r#"{"no_type":1}"#, "invalid_message"),
        (r#"{"type":"teleport","id":"x"}"#, "unknown_type"),
        (r#"{"type":"subscribe","event_types":"a"}"#, "invalid_message"),
        (r#"{"type":"subscribe","event_types":["Bad Type"]}"#, "invalid_message"),
        (r#"{"type":"request_history","since":"nope"}"#, "invalid_message"),
        (r#"{"type":"update_filter","entity_refs":"all"}"#, "invalid_message"),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let e = c.next_json().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{frame}");
    }
    let e = c.request(json!({"type": "nope", "id": "i"}), "error").await;
    assert_eq!(e["id"], "i", "the error echoes the id");
    c.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let e = c.next_json().await;
    assert_eq!(e["code"], "unsupported");
    // Still subscribed to everything and alive.
    gw.publish("acme", "after", None, json!(1)).await;
    assert_eq!(c.next_json().await["type"], "after");
    c.assert_alive().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_1009_and_spares_others() {
    let gw = TestGateway::start_with(|c| c.max_message_bytes = 1024).await;
    let mut big = gw.client("acme", "").await;
    let mut other = gw.client("acme", "").await;
    big.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4096))).await;
    let (_, code) = big.read_until_close().await;
    assert_eq!(code, Some(1009));
    other.assert_alive().await;
    gw.publish("acme", "still_here", None, json!(null)).await;
    assert_eq!(other.next_json().await["type"], "still_here");
}

#[tokio::test]
async fn a_client_flooding_messages_gets_rate_limited_then_4008() {
    let gw = TestGateway::start_with(|c| c.client_rate = 5).await;
    let mut c = gw.client("acme", "").await;
    for _ in 0..40 {
        c.send_json(json!({"type": "ping"})).await;
    }
    let (frames, code) = c.read_until_close().await;
    assert!(frames.iter().any(|f| f["code"] == "rate_limited"), "rate_limited errors first");
    assert_eq!(code, Some(4008));
}
