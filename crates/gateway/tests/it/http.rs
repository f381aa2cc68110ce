//! Polling, SSE, latest state and the admin endpoints.

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::*;

async fn get(gw: &TestGateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", gw.base()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn polling_pages_with_next_and_filters() {
    let gw = TestGateway::start().await;
    let t = gw.token("acme");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(gw.publish("acme", if i == 2 { "other" } else { "t" }, None, json!(i)).await.id.unwrap().to_string());
    }
    gw.publish("elsewhere", "t", None, json!("not yours")).await;
    let (s, body) = get(&gw, "/v1/workspaces/acme/events?limit=2", Some(&t)).await;
    assert_eq!(s, 200);
    assert_eq!(body["events"].as_array().unwrap().len(), 2, "newest two without since");
    assert_eq!(body["next"], ids[4].as_str());
    let (_, body) = get(&gw, &format!("/v1/workspaces/acme/events?since={}&limit=3&event_types=t", ids[0]), Some(&t)).await;
    let got: Vec<i64> = body["events"].as_array().unwrap().iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(got, [1, 3], "filtered, within the 3 scanned");
    assert_eq!(body["next"], ids[3].as_str(), "next follows the last scanned event");
    assert_eq!(body["recovered"], true);
    let (_, body) = get(&gw, &format!("/v1/workspaces/acme/events?since={}", ids[4]), Some(&t)).await;
    assert_eq!((body["events"].as_array().unwrap().len(), body["next"].as_str()), (0, Some(ids[4].as_str())));
}

#[tokio::test]
async fn polling_refusals() {
    let gw = TestGateway::start().await;
    let t = gw.token("acme");
    let cases = [
        ("/v1/workspaces/acme/events", None, 401, "token_missing"),
        ("/v1/workspaces/acme/events", Some("junk"), 401, "token_invalid"),
        ("/v1/workspaces/other/events", Some(t.as_str()), 403, "workspace_forbidden"),
        ("/v1/workspaces/acme/events?since=x", Some(t.as_str()), 400, "bad_request"),
        ("/v1/workspaces/acme/events?limit=5000", Some(t.as_str()), 400, "bad_request"),
        ("/v1/workspaces/acme/latest", None, 401, "token_missing"),
        ("/nowhere", None, 404, "not_found"),
    ];
    for (path, token, status, code) in cases {
        let (s, body) = get(&gw, path, token).await;
        assert_eq!((s, body["error"]["code"].as_str()), (status, Some(code)), "{path}");
    }
}

#[tokio::test]
async fn latest_groups_metrics_and_health_by_entity() {
    let gw = TestGateway::start().await;
    gw.publish("acme", "metrics_update", Some("host:default/a"), json!({"metrics": {"cpu": 1.0, "memory": 2.0}})).await;
    gw.publish(
        "acme",
        "health_update",
        Some("host:default/a"),
        json!({"health": {"level": "error", "message": "down", "timestamp": "2026-11-24T12:00:00Z"}}),
    )
    .await;
    let (s, body) = get(&gw, "/v1/workspaces/acme/latest", Some(&gw.token("acme"))).await;
    assert_eq!(s, 200);
    assert_eq!(body["entities"]["host:default/a"]["metrics_update"]["data"]["metrics"]["cpu"], 1.0);
    assert_eq!(body["entities"]["host:default/a"]["health_update"]["data"]["health"]["level"], "error");
}

/// Reads SSE blocks until `n` `data:` events were seen; returns (event, id, data) triples.
async fn sse_events(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    n: usize,
) -> Vec<(String, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(WAIT, body.next()).await.expect("SSE data in time").expect("stream open").unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.into();
                }
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !data.is_empty() {
                out.push((event, id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_replays_after_last_event_id_then_streams_live() {
    let gw = TestGateway::start().await;
    let first = gw.publish("acme", "t", None, json!(0)).await.id.unwrap().to_string();
    gw.publish("acme", "t", None, json!(1)).await;
    let response = reqwest::Client::new()
        .get(format!("{}/v1/workspaces/acme/events/stream?token={}", gw.base(), gw.token("acme")))
        .header("last-event-id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    let head = sse_events(&mut body, 2).await;
    assert_eq!(head[0].0, "connected");
    assert_eq!(head[0].2["recovered"], true);
    assert_eq!((head[1].0.as_str(), &head[1].2["data"]), ("t", &json!(1)));
    let live = gw.publish("acme", "live", None, json!(2)).await.id.unwrap().to_string();
    let next = sse_events(&mut body, 1).await;
    assert_eq!((next[0].0.as_str(), next[0].1.as_str()), ("live", live.as_str()));
}

#[tokio::test]
async fn sse_refuses_without_a_valid_token() {
    let gw = TestGateway::start().await;
    let (s, body) = get(&gw, "/v1/workspaces/acme/events/stream", None).await;
    assert_eq!((s, body["error"]["code"].as_str()), (401, Some("token_missing")));
    let (s, _) = get(&gw, &format!("/v1/workspaces/other/events/stream?token={}", gw.token("acme")), None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn admin_endpoints() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    gw.publish("acme", "t", None, json!(1)).await;
    c.next_json().await;
    assert_eq!(get(&gw, "/healthz", None).await.0, 200);
    assert_eq!(get(&gw, "/readyz", None).await.0, 200);
    let text = reqwest::get(format!("{}/metrics", gw.base())).await.unwrap().text().await.unwrap();
    for family in [
        "tidings_connections_open{transport=\"websocket\"} 1",
        "tidings_connections_accepted_total",
        "tidings_messages_delivered_total{transport=\"websocket\"} 1",
        "tidings_delivery_latency_seconds_bucket",
        "tidings_broker_messages_received_total 1",
        "tidings_subscribed_workspaces 1",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
}

#[tokio::test]
async fn an_sse_stream_ends_with_a_close_event_when_its_token_expires() {
    let gw = TestGateway::start().await;
    let mut claims = claims("acme", "u");
    claims.exp = tidings_token::unix_now() + 1;
    let response =
        reqwest::Client::new().get(format!("{}/v1/workspaces/acme/events/stream?token={}", gw.base(), sign(&claims))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let events = sse_events(&mut body, 2).await;
    assert_eq!(events[0].0, "connected");
    assert_eq!((events[1].0.as_str(), &events[1].2["code"]), ("close", &json!(4001)));
    let refused_before = gw.node.metrics.connections_refused.with_label_values(&["unauthorized"]).get();
    assert_eq!(get(&gw, "/v1/workspaces/acme/events/stream?token=junk", None).await.0, 401);
    assert_eq!(
        gw.node.metrics.connections_refused.with_label_values(&["unauthorized"]).get(),
        refused_before + 1,
        "SSE refusals are counted"
    );
}
