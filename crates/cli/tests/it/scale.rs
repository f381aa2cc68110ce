//! Horizontal scale on a real Redis: several gateway processes and a publisher
//! process, clients spread over the gateways, gateway crashes and Redis restarts.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_protocol::EventId;
use tidings_testkit::{ServerProcess, TestCluster, TestRedis, http_status, wait_for};
use tidings_token::Claims;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "scale-secret";
const PUBLISH_TOKEN: &str = "scale-publish-token";
const WAIT: Duration = Duration::from_secs(20);

type Proc = ServerProcess;

/// Where the processes find Redis: one server, or a cluster's seed list.
trait Backend {
    fn url(&self) -> String;
    fn cluster(&self) -> bool;
    /// Gateways subscribed to the workspace's channel right now.
    fn subscribers(&self, workspace: &str) -> u32;
}

impl Backend for TestRedis {
    fn url(&self) -> String {
        TestRedis::url(self)
    }
    fn cluster(&self) -> bool {
        false
    }
    fn subscribers(&self, workspace: &str) -> u32 {
        let out = self.cli(&["PUBSUB", "NUMSUB", &format!("workspace:{workspace}")]);
        out.lines().nth(1).unwrap().parse().unwrap()
    }
}

impl Backend for TestCluster {
    fn url(&self) -> String {
        self.urls()
    }
    fn cluster(&self) -> bool {
        true
    }
    fn subscribers(&self, workspace: &str) -> u32 {
        let channel = format!("workspace:{{{workspace}}}");
        let master = self.master_of(self.keyslot(&channel));
        let out = tidings_testkit::redis_cli(master, &["PUBSUB", "SHARDNUMSUB", &channel]);
        out.lines().nth(1).unwrap().parse().unwrap()
    }
}

fn spawn(binary: &str, redis: &dyn Backend, name: &str) -> Proc {
    let env = [
        ("TIDINGS_REDIS_URL", redis.url()),
        ("TIDINGS_REDIS_CLUSTER", redis.cluster().to_string()),
        ("TIDINGS_JWT_SECRET", SECRET.to_string()),
        ("TIDINGS_PUBLISH_TOKEN", PUBLISH_TOKEN.to_string()),
        ("TIDINGS_INSTANCE_ID", name.to_string()),
        ("TIDINGS_DRAIN_SECS", "1".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    ServerProcess::start(binary, &env, None)
}

fn token(workspace: &str) -> String {
    Claims::for_workspace(workspace, &format!("user-{workspace}"), Duration::from_secs(3600)).sign_hs256(SECRET).unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    server: String,
}

async fn connect(gateway: &Proc, workspace: &str, since: Option<&str>) -> Option<Client> {
    let mut url = format!("ws://127.0.0.1:{}/ws?token={}", gateway.port, token(workspace));
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
    let hello = next_json(&mut ws).await?;
    assert_eq!(hello["type"], "connected");
    Some(Client { ws, server: hello["server"].as_str().unwrap().to_string() })
}

/// The next text frame, or None once the connection is gone.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn publish(publisher: &Proc, workspace: &str, events: Value) -> Vec<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/{workspace}/events", publisher.base()))
        .bearer_auth(PUBLISH_TOKEN)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
}

/// Reads `n` events of the client's workspace, asserting nothing else arrives.
async fn read_events(client: &mut Client, workspace: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let e = next_json(&mut client.ws).await.expect("connection open");
        assert_eq!(e["workspace_id"], workspace, "foreign event {e}");
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn clients_on_several_gateways_get_every_event_once_in_order_and_nothing_foreign() {
    several_gateways(&TestRedis::start()).await;
}

#[tokio::test]
async fn the_same_on_a_redis_cluster() {
    several_gateways(&TestCluster::start(3, 0)).await;
}

async fn several_gateways(redis: &dyn Backend) {
    let gw1 = spawn("tidings-gateway", redis, "gw-1");
    let gw2 = spawn("tidings-gateway", redis, "gw-2");
    let publisher = spawn("tidings-publisher", redis, "pub-1");

    let mut a_clients = vec![
        connect(&gw1, "ws-a", None).await.unwrap(),
        connect(&gw1, "ws-a", None).await.unwrap(),
        connect(&gw2, "ws-a", None).await.unwrap(),
    ];
    let mut b_client = connect(&gw2, "ws-b", None).await.unwrap();
    assert_eq!((a_clients[0].server.as_str(), a_clients[2].server.as_str()), ("gw-1", "gw-2"));
    assert_eq!(redis.subscribers("ws-a"), 2, "both gateways subscribed");
    assert_eq!(redis.subscribers("ws-b"), 1, "only gw-2 has a B reader");

    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    for round in 0..10 {
        let batch: Vec<Value> = (0..10).map(|i| json!({"type": "deploy", "data": {"round": round, "i": i}})).collect();
        a_ids.extend(publish(&publisher, "ws-a", json!(batch)).await);
        b_ids.extend(publish(&publisher, "ws-b", json!({"type": "other", "data": round})).await);
    }
    let parsed: Vec<EventId> = a_ids.iter().map(|i| i.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "the publisher answers ids in publish order");
    for client in &mut a_clients {
        assert_eq!(read_events(client, "ws-a", a_ids.len()).await, a_ids);
    }
    assert_eq!(read_events(&mut b_client, "ws-b", b_ids.len()).await, b_ids);

    // gw-1 unsubscribes once its last A reader is gone; gw-2 stays.
    let on_gw2 = a_clients.pop().unwrap();
    assert_eq!(on_gw2.server, "gw-2");
    drop(a_clients);
    wait_for("gw-1 to unsubscribe ws-a", WAIT, || redis.subscribers("ws-a") == 1);
    drop(b_client);
    wait_for("nobody reading ws-b", WAIT, || redis.subscribers("ws-b") == 0);
    drop(on_gw2);
}

#[tokio::test]
async fn a_gateway_killed_mid_stream_loses_nothing_for_clients_that_reconnect_with_since() {
    let redis = TestRedis::start();
    let mut gw1 = spawn("tidings-gateway", &redis, "gw-1");
    let gw2 = spawn("tidings-gateway", &redis, "gw-2");
    let publisher = spawn("tidings-publisher", &redis, "pub-1");
    let mut client = connect(&gw1, "acme", None).await.unwrap();

    // Publish continuously from a task while the gateway dies.
    let base = publisher.base();
    let producer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        // Spread the publishes over time so the gateway dies mid-stream.
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        for i in 0..200 {
            pace.tick().await;
            let r = http
                .post(format!("{base}/v1/workspaces/acme/events"))
                .bearer_auth(PUBLISH_TOKEN)
                .json(&json!({"type": "tick", "data": i}))
                .send()
                .await
                .unwrap();
            ids.push(r.json::<Value>().await.unwrap()["ids"][0].as_str().unwrap().to_string());
        }
        ids
    });

    let mut received: Vec<String> = Vec::new();
    while received.len() < 40 {
        let e = next_json(&mut client.ws).await.unwrap();
        received.push(e["id"].as_str().unwrap().to_string());
    }
    gw1.kill();
    // Drain what was in flight, then reconnect elsewhere with since = last seen.
    while let Some(e) = next_json(&mut client.ws).await {
        received.push(e["id"].as_str().unwrap().to_string());
    }
    let last = received.last().unwrap().clone();
    let mut client = connect(&gw2, "acme", Some(&last)).await.unwrap();
    let published = producer.await.unwrap();
    let mut seen: BTreeSet<String> = received.iter().cloned().collect();
    while seen.len() < published.len() {
        let e = next_json(&mut client.ws).await.unwrap();
        let id = e["id"].as_str().unwrap().to_string();
        assert!(received.last().is_none_or(|l| l.parse::<EventId>().unwrap() < id.parse().unwrap()), "in order after the reconnect");
        received.push(id.clone());
        seen.insert(id);
    }
    assert_eq!(seen, published.iter().cloned().collect::<BTreeSet<_>>(), "zero events lost");
    assert_eq!(received.len(), published.len(), "and none twice");
}

#[tokio::test]
async fn a_redis_restart_without_its_data_tells_clients_they_cannot_recover() {
    let mut redis = TestRedis::start();
    let gw = spawn("tidings-gateway", &redis, "gw-1");
    let publisher = spawn("tidings-publisher", &redis, "pub-1");
    let mut client = connect(&gw, "acme", None).await.unwrap();
    let before = publish(&publisher, "acme", json!({"type": "before"})).await;
    assert_eq!(read_events(&mut client, "acme", 1).await, before);

    redis.kill();
    let ready = format!("{}/readyz", gw.base());
    wait_for("readyz 503 while Redis is down", WAIT, || http_status(&ready) == Some(503));
    let r = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/acme/events", publisher.base()))
        .bearer_auth(PUBLISH_TOKEN)
        .json(&json!({"type": "lost"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "nothing is reported as published while Redis is down");
    assert!(r.headers().contains_key("retry-after"));
    // A connection to a workspace this gateway does not follow yet cannot be
    // served: refused before the upgrade, with a retry hint.
    let url = format!("ws://127.0.0.1:{}/ws?token={}", gw.port, token("elsewhere"));
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503 before the upgrade, got {:?}", other.map(|(_, r)| r.status())),
    }

    redis.restart();
    wait_for("readyz 200 after the restart", WAIT, || http_status(&ready) == Some(200));
    // Redis came back empty: the gateway cannot know what it missed, so it
    // closes its clients with 1012; reconnecting with `since` says recovered: false.
    let closed = loop {
        match tokio::time::timeout(WAIT, client.ws.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection error instead of a close: {e}"),
            None => break None,
        }
    };
    assert_eq!(closed, Some(1012));
    let url = format!("ws://127.0.0.1:{}/ws?token={}&since={}", gw.port, token("acme"), before[0]);
    let (mut ws, _) = tidings_testkit::retry("a reconnect", WAIT, || async { tokio_tungstenite::connect_async(&url).await.ok() }).await;
    let hello = next_json(&mut ws).await.unwrap();
    assert_eq!((hello["type"].as_str(), hello["recovered"].as_bool()), (Some("connected"), Some(false)), "{hello}");
    // The same answer over polling and SSE.
    let poll = reqwest::Client::new()
        .get(format!("{}/v1/workspaces/acme/events?since={}", gw.base(), before[0]))
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.json::<Value>().await.unwrap()["recovered"], false);
    let mut sse = reqwest::Client::new()
        .get(format!("{}/v1/workspaces/acme/events/stream?since={}", gw.base(), before[0]))
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, sse.chunk()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("event: connected") && first.contains(r#""recovered":false"#), "{first}");
    let after = publish(&publisher, "acme", json!({"type": "after"})).await;
    let mut client = Client { ws, server: hello["server"].as_str().unwrap().to_string() };
    assert_eq!(read_events(&mut client, "acme", 1).await, after);
}

#[tokio::test]
async fn tidings_publish_writes_straight_to_redis() {
    let redis = TestRedis::start();
    let gw = spawn("tidings-gateway", &redis, "gw-1");
    let mut client = connect(&gw, "acme", None).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["publish", "--workspace", "acme", "--type", "notification", "--data", r#"{"title":"t","message":"m","level":"info"}"#])
        .env("TIDINGS_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(read_events(&mut client, "acme", 1).await, [id]);
    // A bad event is refused before anything is sent.
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["publish", "--workspace", "acme", "--type", "Bad Type"])
        .env("TIDINGS_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(redis.cli(&["XLEN", "workspace:acme:events"]), "1");
}

#[tokio::test]
async fn a_signed_github_deployment_status_reaches_a_websocket_client_of_the_routed_workspace() {
    let redis = TestRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "[[route]]\nrepository = \"Codertocat/*\"\nworkspace = \"acme\"\n").unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../publisher/tests/fixtures/github");
    let deliveries: Value = serde_json::from_slice(&std::fs::read(fixtures.join("_deliveries.json")).unwrap()).unwrap();
    let secret = deliveries["secret"].as_str().unwrap().to_string();

    let gw = spawn("tidings-gateway", &redis, "gw-1");
    let env = [
        ("TIDINGS_REDIS_URL", redis.url()),
        ("TIDINGS_PUBLISH_TOKEN", PUBLISH_TOKEN.to_string()),
        ("TIDINGS_GITHUB_WEBHOOK_SECRET", secret),
        ("TIDINGS_ROUTES_FILE", routes.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let publisher = ServerProcess::start("tidings-publisher", &env, None);
    let mut client = connect(&gw, "acme", None).await.unwrap();
    let mut other = connect(&gw, "other", None).await.unwrap();

    let file = "deployment_status.created.json";
    let mut request =
        reqwest::Client::new().post(format!("{}/webhooks/github", publisher.base())).body(std::fs::read(fixtures.join(file)).unwrap());
    for (k, v) in deliveries["deliveries"][file]["headers"].as_object().unwrap() {
        request = request.header(k.as_str(), v.as_str().unwrap());
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = reqwest::get(format!("{}/nowhere", publisher.base())).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found", "the publisher's 404 is JSON too");

    let e = next_json(&mut client.ws).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["workspace_id"].as_str(), e["entity_ref"].as_str()),
        (Some("deployment_update"), Some("acme"), Some("component:default/hello-world"))
    );
    let d = &e["data"]["deployment"];
    assert_eq!(
        (d["status"].as_str(), d["environment"].as_str(), d["version"].as_str()),
        (Some("success"), Some("production"), Some("master"))
    );
    assert_eq!(d["commit"], "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
    assert_eq!(d["url"], "https://github.com/Codertocat/Hello-World/deployments");

    // The other workspace got nothing: its next event is one published for it.
    publish(&publisher, "other", json!({"type": "marker"})).await;
    assert_eq!(next_json(&mut other.ws).await.unwrap()["type"], "marker");

    // While Redis is down a webhook is answered 503 with Retry-After, and the
    // same delivery goes through once Redis is back.
    let mut redis = redis;
    redis.kill();
    let file = "deployment_status.created.gh-pages.json";
    let send = || {
        let mut request =
            reqwest::Client::new().post(format!("{}/webhooks/github", publisher.base())).body(std::fs::read(fixtures.join(file)).unwrap());
        for (k, v) in deliveries["deliveries"][file]["headers"].as_object().unwrap() {
            request = request.header(k.as_str(), v.as_str().unwrap());
        }
        request.send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    redis.restart();
    wait_for("publisher ready again", WAIT, || http_status(&format!("{}/readyz", publisher.base())) == Some(200));
    assert_eq!(send().await.unwrap().status(), 202, "the retry of the refused delivery is published");
}

/// Resident memory of a process, from `/proc/<pid>/status`.
fn rss_bytes(process: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_client_that_asks_for_history_and_never_reads_cannot_grow_the_gateway() {
    // Before: `history` answers bypassed the queue bound, so a client asking
    // 15 times a second for 1,000 events and reading nothing grew the gateway
    // by ~1 MB per request.
    let redis = TestRedis::start();
    let gateway = spawn("tidings-gateway", &redis, "gw-mem");
    let publisher = spawn("tidings-publisher", &redis, "pub-mem");
    let pad = "x".repeat(900);
    for chunk in 0..10 {
        let events: Vec<Value> = (0..100).map(|i| json!({"type": "log_line", "data": {"n": chunk * 100 + i, "pad": pad}})).collect();
        publish(&publisher, "mem", Value::Array(events)).await;
    }
    let mut healthy = connect(&gateway, "mem", None).await.unwrap();
    let mut greedy = connect(&gateway, "mem", None).await.unwrap();
    // One answer of the same size first, so the allocator has seen one.
    healthy.ws.send(Message::text(json!({"type": "request_history", "limit": 1000}).to_string())).await.unwrap();
    assert_eq!(next_json(&mut healthy.ws).await.unwrap()["type"], "history");
    let before = rss_bytes(&gateway);

    let reader = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while let Some(frame) = next_json(&mut healthy.ws).await {
            if frame["type"] == "probe" {
                let sent = frame["data"]["sent_ms"].as_u64().unwrap();
                latencies.push(unix_ms().saturating_sub(sent));
                if frame["data"]["last"] == true {
                    break;
                }
            }
        }
        latencies
    });
    let asker = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(66));
        let mut sent = 0u32;
        for _ in 0..(15 * 15) {
            pace.tick().await;
            let ask = json!({"type": "request_history", "limit": 1000}).to_string();
            if tokio::time::timeout(Duration::from_secs(1), greedy.ws.send(Message::text(ask))).await.map_or(true, |r| r.is_err()) {
                break; // closed by the gateway, or its buffers are full
            }
            sent += 1;
        }
        (sent, greedy)
    });
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    for n in 0..300 {
        pace.tick().await;
        publish(&publisher, "mem", json!({"type": "probe", "data": {"sent_ms": unix_ms(), "last": n == 299}})).await;
    }
    let mut latencies = reader.await.unwrap();
    let (asked, _greedy) = asker.await.unwrap();
    let after = rss_bytes(&gateway);
    latencies.sort_unstable();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert_eq!(latencies.len(), 300, "the healthy client got every probe");
    assert!(p99 < 250, "healthy client p99 {p99} ms");
    assert!(after < before + 16 * 1024 * 1024, "gateway RSS grew from {before} to {after} bytes after {asked} requests");
    // Closed without waiting for it to read what was stuck in its socket.
    tidings_testkit::retry("the greedy client closed 4009", WAIT, || async {
        let metrics = reqwest::get(format!("{}/metrics", gateway.base())).await.ok()?.text().await.ok()?;
        metrics.contains(r#"tidings_connections_closed_total{code="4009"} 1"#).then_some(())
    })
    .await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Publishing needs Redis commands, not pub/sub: with an account that may not
/// SUBSCRIBE (least privilege), the publisher's pub/sub connection never comes
/// up, yet it is ready and publishes; without Redis it is not ready.
#[tokio::test]
async fn the_publisher_is_ready_on_its_command_connection_alone() {
    let mut redis = TestRedis::start();
    assert_eq!(redis.cli(&["ACL", "SETUSER", "default", "-subscribe", "-ssubscribe", "-psubscribe"]), "OK");
    let publisher = spawn("tidings-publisher", &redis, "pub-no-pubsub"); // waits for /readyz 200
    assert_eq!(publish(&publisher, "acme", json!({"type": "t"})).await.len(), 1);
    assert_eq!(redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]), "", "no pub/sub connection exists");
    redis.kill();
    let readyz = format!("{}/readyz", publisher.base());
    wait_for("the publisher to turn unready without Redis", WAIT, || http_status(&readyz) == Some(503));
}
