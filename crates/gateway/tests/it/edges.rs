//! Security and robustness at the edges (issue 8, items 9 and 10): required
//! `iss`/`aud`, RFC 6455 close codes for broken frames, a refreshed token that
//! lost the workspace, internal errors, unauthenticated sockets against the
//! connection cap, absurd `exp`, and an SSE client that stops reading.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::json;
use tidings_broker::{Broker, BrokerError, HistoryPage, LatestEvent, MemoryBroker};
use tidings_protocol::{Event, EventId};
use tidings_token::unix_now;
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[tokio::test]
async fn a_token_without_iss_or_aud_is_refused_where_they_are_configured() {
    let gw = TestGateway::start_with(|c| {
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
    })
    .await;
    let good = || issued_claims("acme", "u");
    let mut no_iss = good();
    no_iss.iss = None;
    let mut no_aud = good();
    no_aud.aud = None;
    let mut neither = good();
    (neither.iss, neither.aud) = (None, None);
    // With both missing, either code is right (jsonwebtoken checks required claims in no fixed order).
    let (iss, aud) = ("token_wrong_issuer", "token_wrong_audience");
    let cases = [(sign(&no_iss), vec![iss]), (sign(&no_aud), vec![aud]), (sign(&neither), vec![iss, aud])];
    let http = reqwest::Client::new();
    for (token, codes) in &cases {
        match Client::connect(&gw.ws_url(&format!("token={token}"))).await {
            Ok(_) => panic!("{codes:?}: the upgrade was accepted"),
            Err(r) => assert!(r.status == 401 && codes.iter().any(|c| r.body["error"]["code"] == *c), "ws, want {codes:?}: {r:?}"),
        }
        for path in ["/v1/workspaces/acme/events", "/v1/workspaces/acme/latest", "/v1/workspaces/acme/events/stream"] {
            let r = http.get(format!("{}{path}", gw.base())).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(status == 401 && codes.iter().any(|c| body["error"]["code"] == *c), "{path}, want {codes:?}: {status} {body}");
        }
    }
    // The first-message auth path refuses it as well (1008), and the good token passes.
    let mut c = Client::connect(&gw.ws_url("workspace_id=acme")).await.unwrap();
    c.send_json(json!({"type": "auth", "token": sign(&no_aud)})).await;
    assert_eq!(c.read_until_close().await.1, Some(1008));
    let mut c = Client::connect(&gw.ws_url(&format!("token={}", sign(&good())))).await.unwrap();
    assert_eq!(c.next_json().await["type"], "connected");
}

/// A connection that got its `connected` message over a raw socket.
async fn raw_client(gw: &TestGateway) -> RawWs {
    let mut raw = RawWs::connect(gw.addr, &format!("token={}", gw.token("acme"))).await;
    let (opcode, hello) = raw.read_frame().await.expect("connected");
    assert_eq!(opcode, OP_TEXT);
    let hello: serde_json::Value = serde_json::from_slice(&hello).unwrap();
    assert_eq!(hello["type"], "connected");
    raw
}

#[tokio::test]
async fn broken_frames_close_1007_and_1002_and_spare_the_neighbours() {
    let gw = TestGateway::start().await;
    let mut neighbour = gw.client("acme", "").await;
    const FIN_TEXT: u8 = 0x80 | OP_TEXT;

    // A masked text frame whose bytes are not UTF-8.
    let mut bad_utf8 = raw_client(&gw).await;
    bad_utf8.send_frame(FIN_TEXT, true, b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}").await;
    assert_eq!(bad_utf8.close_code().await, Some(1007), "invalid UTF-8 closes 1007, not a bare TCP close");

    // Protocol violations: an unmasked client frame, a reserved bit, a reserved opcode.
    for (what, first_byte, masked) in [("unmasked", FIN_TEXT, false), ("rsv1", FIN_TEXT | 0x40, true), ("opcode 3", 0x80 | 0x3, true)] {
        let mut c = raw_client(&gw).await;
        c.send_frame(first_byte, masked, br#"{"type":"ping"}"#).await;
        assert_eq!(c.close_code().await, Some(1002), "{what} closes 1002");
    }

    gw.publish("acme", "after_garbage", None, json!(1)).await;
    assert_eq!(neighbour.next_json().await["type"], "after_garbage");
    neighbour.assert_alive().await;
    gw.wait_for_connections(1).await;
}

#[tokio::test]
async fn a_refreshed_token_that_lost_the_workspace_closes_4003() {
    let gw = TestGateway::start().await;
    // Another workspace only.
    let mut c = gw.client("acme", "").await;
    c.send_json(json!({"type": "auth", "token": gw.token("elsewhere")})).await;
    assert_eq!(c.read_until_close().await.1, Some(4003));
    // Another user, same workspace.
    let mut c = gw.client("acme", "").await;
    c.send_json(json!({"type": "auth", "token": gw.token_for("acme", "mallory")})).await;
    assert_eq!(c.read_until_close().await.1, Some(4003));

    // An invalid or expired refresh is answered, and the current token still holds.
    let mut c = gw.client("acme", "").await;
    let e = c.request(json!({"type": "auth", "id": 1, "token": "junk"}), "error").await;
    assert_eq!((e["code"].as_str(), e["id"].as_i64()), (Some("token_invalid"), Some(1)));
    let mut expired = claims("acme", "user-1");
    expired.exp = unix_now() - 3600;
    let e = c.request(json!({"type": "auth", "token": sign(&expired)}), "error").await;
    assert_eq!(e["code"], "token_expired");
    c.assert_alive().await;
    gw.wait_for_connections(1).await;
}

#[tokio::test]
async fn an_absurd_exp_in_a_refresh_or_at_connect_is_clamped_not_a_panic() {
    let gw = TestGateway::start().await;
    let mut neighbour = gw.client("acme", "").await;
    for exp in [u64::MAX, u64::MAX / 2, 253_402_300_799 /* 9999-12-31T23:59:59Z */] {
        let mut c = gw.client("acme", "").await;
        let mut forever = claims("acme", "user-1");
        forever.exp = exp;
        let r = c.request(json!({"type": "auth", "token": sign(&forever)}), "authenticated").await;
        assert!(r["expires_at"].as_str().unwrap().starts_with("9999-12-31"), "{r}");
        c.assert_alive().await;

        // At connect: WebSocket and SSE.
        let mut c = Client::connect(&gw.ws_url(&format!("token={}", sign(&forever)))).await.unwrap();
        assert_eq!(c.next_json().await["type"], "connected");
        c.assert_alive().await;
        let sse = reqwest::Client::new()
            .get(format!("{}/v1/workspaces/acme/events/stream?token={}", gw.base(), sign(&forever)))
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200);
    }
    neighbour.assert_alive().await;
}

/// The memory broker, except that reading the latest state panics: a bug in a
/// broker implementation, hit in the middle of a client request.
struct PanicsOnLatest(Arc<MemoryBroker>);

impl Broker for PanicsOnLatest {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>> {
        self.0.publish(event)
    }
    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.0.publish_live(event)
    }
    fn subscribe<'a>(&'a self, w: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.0.subscribe(w)
    }
    fn unsubscribe<'a>(&'a self, w: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.0.unsubscribe(w)
    }
    fn history<'a>(&'a self, w: &'a str, since: Option<EventId>, limit: usize) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        self.0.history(w, since, limit)
    }
    fn latest<'a>(&'a self, _w: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>> {
        async { panic!("a broker bug") }.boxed()
    }
    fn is_ready(&self) -> BoxFuture<'_, bool> {
        self.0.is_ready()
    }
    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.0.is_revoked(jti)
    }
    fn revoke<'a>(&'a self, jti: &'a str, exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.0.revoke(jti, exp)
    }
}

#[tokio::test]
async fn a_panic_while_handling_a_message_closes_1011_and_frees_the_connection() {
    let gw = TestGateway::start_with_broker(|_| {}, |b| Arc::new(PanicsOnLatest(b)) as Arc<dyn Broker>).await;
    let mut neighbour = gw.client("acme", "").await;
    let mut victim = gw.client("acme", "").await;
    victim.send_json(json!({"type": "request_metrics"})).await;
    assert_eq!(victim.read_until_close().await.1, Some(1011), "an internal error closes 1011, not a dropped socket");
    gw.wait_for_connections(1).await;
    gw.publish("acme", "after_panic", None, json!(1)).await;
    assert_eq!(neighbour.next_json().await["type"], "after_panic");
    neighbour.assert_alive().await;
}

#[tokio::test]
async fn sockets_waiting_for_an_auth_message_count_against_max_connections() {
    let gw = TestGateway::start_with(|c| c.max_connections = 2).await;
    let mut waiting_a = Client::connect(&gw.ws_url("workspace_id=acme")).await.unwrap();
    let waiting_b = Client::connect(&gw.ws_url("workspace_id=acme")).await.unwrap();
    let token = gw.token("acme");
    for query in [format!("token={token}"), "workspace_id=acme".to_string()] {
        match Client::connect(&gw.ws_url(&query)).await {
            Ok(_) => panic!("{query}: upgraded past the cap while two sockets wait for auth"),
            Err(r) => assert_eq!((r.status, r.retry_after.is_some()), (503, true), "{r:?}"),
        }
    }
    // A waiting socket authenticates on the slot it already holds.
    waiting_a.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(waiting_a.next_json().await["type"], "connected");
    waiting_a.assert_alive().await;
    // A waiting socket that leaves frees its slot.
    drop(waiting_b);
    let mut c =
        tidings_testkit::retry("a slot to free up", WAIT, || async { Client::connect(&gw.ws_url(&format!("token={token}"))).await.ok() })
            .await;
    assert_eq!(c.next_json().await["type"], "connected");
    c.assert_alive().await;
}

#[tokio::test]
async fn an_sse_client_that_stops_reading_loses_its_slot_after_the_write_deadline() {
    let heartbeat = std::time::Duration::from_millis(500);
    let gw = TestGateway::start_with(|c| {
        c.heartbeat = heartbeat;
        // Queue bound out of the way: only the write deadline can end this stream.
        c.client_queue_bytes = 256 * 1024 * 1024;
        c.history_size = 16;
    })
    .await;
    let series = r#"tidings_connections_open{transport="sse"}"#;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /v1/workspaces/acme/events/stream?token={} HTTP/1.1\r\nHost: gw\r\n\r\n", gw.token("acme"));
    tcp.write_all(request.as_bytes()).await.unwrap();
    tidings_testkit::retry("the SSE stream to open", WAIT, || async { (gw.metric(series).await == Some(1.0)).then_some(()) }).await;

    // Far more than the socket buffers hold; the client reads none of it.
    let pad = "x".repeat(32 * 1024);
    for i in 0..1500 {
        gw.publish("acme", "bulk", None, json!({"i": i, "pad": pad})).await;
    }
    tidings_testkit::retry("the stalled SSE stream to be closed", WAIT, || async { (gw.metric(series).await == Some(0.0)).then_some(()) })
        .await;
    assert_eq!(gw.node.hub.total(), 0, "and it left the hub");
    // The gateway still serves.
    gw.client("acme", "").await.assert_alive().await;
    drop(tcp);
}

/// The memory broker, except that history reads wait until the test opens
/// the gate: a Redis that is slow to answer every joining client at once.
struct HeldHistory {
    inner: Arc<MemoryBroker>,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Broker for HeldHistory {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>> {
        self.inner.publish(event)
    }
    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish_live(event)
    }
    fn subscribe<'a>(&'a self, w: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.subscribe(w)
    }
    fn unsubscribe<'a>(&'a self, w: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.unsubscribe(w)
    }
    fn history<'a>(&'a self, w: &'a str, since: Option<EventId>, limit: usize) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        async move {
            self.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(self.gate.acquire().await);
            self.inner.history(w, since, limit).await
        }
        .boxed()
    }
    fn latest<'a>(&'a self, w: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>> {
        self.inner.latest(w)
    }
    fn is_ready(&self) -> BoxFuture<'_, bool> {
        self.inner.is_ready()
    }
    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.inner.is_revoked(jti)
    }
    fn revoke<'a>(&'a self, jti: &'a str, exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.revoke(jti, exp)
    }
}

#[tokio::test]
async fn joins_beyond_the_limit_wait_their_turn_and_one_that_waits_too_long_is_told_to_retry() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, w) = (gate.clone(), waiting.clone());
    let gw = TestGateway::start_with_broker(
        |c| {
            c.joins_in_flight = 1;
            c.join_turn_wait = std::time::Duration::from_millis(300);
        },
        move |inner| Arc::new(HeldHistory { inner, gate: g, waiting: w }) as Arc<dyn Broker>,
    )
    .await;
    let mut neighbour = gw.client("acme", "").await;
    let token = gw.token("acme");
    // Resuming reads history while it holds the one turn.
    let url = gw.ws_url(&format!("token={token}&since=0-0"));
    let resuming = tokio::spawn(async move { Client::connect(&url).await });
    wait_until(|| waiting.load(std::sync::atomic::Ordering::SeqCst) == 1).await;

    let refused = match Client::connect(&gw.ws_url(&format!("token={token}"))).await {
        Ok(_) => panic!("joined while the only turn was taken"),
        Err(r) => r,
    };
    assert_eq!((refused.status, refused.retry_after.as_deref()), (503, Some("1")), "{refused:?}");
    assert!(refused.body["error"]["message"].as_str().unwrap_or_default().contains("joining"), "{refused:?}");
    // First-message auth waits for the same turn, and is told 1013 (try again later).
    let mut by_message = Client::connect(&gw.ws_url("workspace_id=acme")).await.unwrap();
    by_message.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(by_message.read_until_close().await.1, Some(1013));

    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    let mut resumed = resuming.await.unwrap().unwrap();
    let hello = resumed.next_json().await;
    assert_eq!((hello["type"].as_str(), hello["recovered"].as_bool()), (Some("connected"), Some(true)));
    // The turn is free again, and the neighbour never noticed.
    let mut later = gw.client("acme", "").await;
    gw.publish("acme", "after_the_storm", None, json!(1)).await;
    for client in [&mut neighbour, &mut later, &mut resumed] {
        assert_eq!(client.next_json().await["type"], "after_the_storm");
    }
}
