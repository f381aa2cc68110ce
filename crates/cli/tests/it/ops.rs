//! What an operator relies on, on real processes: one OpenTelemetry trace
//! from a webhook to the socket write, exported over OTLP/HTTP to a receiver
//! in the test; JSON log lines that name their connection and trace; and
//! WebSocket clients balanced by a real nginx with the project's config.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tidings_testkit::{ServerProcess, TestRedis, wait_for};
use tidings_token::Claims;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "ops-secret";
const PUBLISH_TOKEN: &str = "ops-publish-token";
const ARGOCD_TOKEN: &str = "ops-argocd-token";
const WAIT: Duration = Duration::from_secs(20);

fn token(workspace: &str) -> String {
    Claims::for_workspace(workspace, "ops-user", Duration::from_secs(3600)).sign_hs256(SECRET).unwrap()
}

/// An OTLP/HTTP receiver: answers every `POST /v1/traces` with 200 and keeps
/// the decoded JSON export requests.
struct OtlpReceiver {
    port: u16,
    exports: Arc<Mutex<Vec<Value>>>,
}

impl OtlpReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let kept = exports.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve_exports(stream, &kept));
            }
        });
        Self { port, exports }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, flattened out of the export requests.
    fn spans(&self) -> Vec<Span> {
        let exports = self.exports.lock().unwrap();
        let mut spans = Vec::new();
        for export in exports.iter() {
            for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(Span {
                            service: service.clone(),
                            name: span["name"].as_str().unwrap_or_default().to_string(),
                            trace_id: span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                            span_id: span["spanId"].as_str().unwrap_or_default().to_lowercase(),
                            parent_id: span["parentSpanId"].as_str().unwrap_or_default().to_lowercase(),
                        });
                    }
                }
            }
        }
        spans
    }
}

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

/// HTTP/1.1 keep-alive: request after request on one connection.
fn serve_exports(stream: TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST /v1/traces")
            && let Ok(export) = serde_json::from_slice::<Value>(&body)
        {
            kept.lock().unwrap().push(export);
        }
        let reply = "{}";
        let _ = write!(writer, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}", reply.len());
    }
}

fn otel_env(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
        // Export within a tenth of a second instead of five.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("TIDINGS_LOG_FORMAT", "json".into()),
    ]
}

fn start(binary: &str, redis: &TestRedis, extra: &[(&'static str, String)], log: &Path) -> ServerProcess {
    let mut env = vec![
        ("TIDINGS_REDIS_URL", redis.url()),
        ("TIDINGS_JWT_SECRET", SECRET.to_string()),
        ("TIDINGS_PUBLISH_TOKEN", PUBLISH_TOKEN.to_string()),
        ("TIDINGS_ARGOCD_WEBHOOK_TOKEN", ARGOCD_TOKEN.to_string()),
        ("TIDINGS_DRAIN_SECS", "1".to_string()),
        ("RUST_LOG", "info,tidings_gateway=debug,tidings_publisher=debug".to_string()),
    ];
    env.extend_from_slice(extra);
    ServerProcess::start(binary, &env, Some(log))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket reader of `workspace` on the gateway, once it is subscribed.
async fn reader(gateway: &ServerProcess, workspace: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/ws?token={}", gateway.port, token(workspace));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time").expect("socket open").unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Waits until the receiver holds spans named `names` in one trace, each the
/// child of the one before, and returns that chain.
fn chain(receiver: &OtlpReceiver, trace_id: Option<&str>, names: &[&str]) -> Vec<Span> {
    let mut found = Vec::new();
    let mut complete = || {
        let spans = receiver.spans();
        let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        // Walk up from every delivery span to the root.
        for leaf in spans.iter().filter(|s| s.name == *names.last().unwrap()) {
            if trace_id.is_some_and(|t| leaf.trace_id != t) {
                continue;
            }
            let mut path = vec![leaf.clone()];
            while let Some(parent) = by_id.get(path.last().unwrap().parent_id.as_str()) {
                path.push((*parent).clone());
            }
            path.reverse();
            let path_names: Vec<&str> = path.iter().map(|s| s.name.as_str()).collect();
            if path_names.ends_with(names) {
                found = path;
                return true;
            }
        }
        false
    };
    wait_for(&format!("a trace {names:?}"), WAIT, &mut complete);
    found
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test]
async fn one_trace_runs_from_the_webhook_to_the_socket_write_and_log_lines_name_it() {
    let redis = TestRedis::start();
    let receiver = OtlpReceiver::start();
    let logs = tempfile::tempdir().unwrap();
    let gateway_log = logs.path().join("gateway.log");
    let publisher_log = logs.path().join("publisher.log");
    let gateway = start("tidings-gateway", &redis, &otel_env(&receiver), &gateway_log);
    let publisher = start("tidings-publisher", &redis, &otel_env(&receiver), &publisher_log);
    let mut ws = reader(&gateway, "traced").await;

    let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../publisher/tests/fixtures/argocd/webhook.on-deployed.json")).unwrap();
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/webhooks/argocd?workspace_id=traced", publisher.base()))
        .bearer_auth(ARGOCD_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    let event = next_json(&mut ws).await;
    let traceparent = event["trace"].as_str().expect("the delivered event carries its traceparent").to_string();

    let spans = chain(&receiver, None, &["webhook", "publish", "broker.receive", "fanout", "deliver"]);
    let trace_id = &spans[0].trace_id;
    assert!(spans.iter().all(|s| &s.trace_id == trace_id), "one trace id throughout: {spans:?}");
    assert_eq!(traceparent.split('-').nth(1), Some(trace_id.as_str()), "the event's trace field names that trace");
    let services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, ["tidings-publisher", "tidings-publisher", "tidings-gateway", "tidings-gateway", "tidings-gateway"]);

    // A log line logged inside the traced webhook span carries its trace id.
    wait_for("a publisher log line with the trace id", WAIT, || {
        json_lines(&publisher_log).iter().any(|line| {
            line["spans"].as_array().into_iter().flatten().any(|s| s["name"] == "webhook" && s["trace_id"] == trace_id.as_str())
        })
    });
    // And the gateway's lines of a connection name it: close the reader and
    // find the writer's goodbye in the connection's span.
    let _ = ws.close(None).await;
    wait_for("a gateway log line inside the connection span", WAIT, || {
        json_lines(&gateway_log)
            .iter()
            .any(|line| line["spans"].as_array().into_iter().flatten().any(|s| s["name"] == "connection" && s["connection_id"].is_string()))
    });
}

/// One notification through the HTTP publish API with this `traceparent` header.
async fn publish_with_traceparent(publisher: &ServerProcess, traceparent: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/workspaces/api/events", publisher.base()))
        .bearer_auth(PUBLISH_TOKEN)
        .header("traceparent", traceparent)
        .header("content-type", "application/json")
        .body(r#"{"type":"notification","data":{"title":"t","message":"m","level":"info"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
}

#[tokio::test]
async fn a_publish_with_a_traceparent_header_continues_the_callers_trace() {
    let redis = TestRedis::start();
    let receiver = OtlpReceiver::start();
    let logs = tempfile::tempdir().unwrap();
    let gateway = start("tidings-gateway", &redis, &otel_env(&receiver), &logs.path().join("gateway.log"));
    let publisher = start("tidings-publisher", &redis, &otel_env(&receiver), &logs.path().join("publisher.log"));
    let mut ws = reader(&gateway, "api").await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    publish_with_traceparent(&publisher, &format!("00-{caller_trace}-{caller_span}-01")).await;
    let event = next_json(&mut ws).await;
    assert!(event["trace"].as_str().unwrap().contains(caller_trace), "{event}");

    let spans = chain(&receiver, Some(caller_trace), &["publish", "broker.receive", "fanout", "deliver"]);
    assert_eq!(spans[0].parent_id, caller_span, "the publish span is the caller's span's child");

    // A malformed traceparent is not an error: the publish starts a trace of its own.
    publish_with_traceparent(&publisher, "garbage").await;
    let event = next_json(&mut ws).await;
    let own_trace = event["trace"].as_str().unwrap().split('-').nth(1).unwrap().to_string();
    assert_ne!(own_trace, caller_trace);
    let spans = chain(&receiver, Some(&own_trace), &["publish", "broker.receive", "fanout", "deliver"]);
    assert!(spans[0].parent_id.is_empty() || spans[0].parent_id == "0000000000000000", "a root span: {spans:?}");
}

/// The value of an unlabelled metric on `/metrics`.
async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn the_gateways_broker_gauge_follows_redis_down_and_back() {
    let mut redis = TestRedis::start();
    let logs = tempfile::tempdir().unwrap();
    let gateway = start("tidings-gateway", &redis, &[], &logs.path().join("gateway.log"));
    let base = gateway.base();
    tidings_testkit::retry("connected = 1", WAIT, || async {
        (metric(&base, "tidings_broker_connected").await == Some(1.0)).then_some(())
    })
    .await;
    redis.kill();
    tidings_testkit::retry("connected = 0", WAIT, || async {
        (metric(&base, "tidings_broker_connected").await == Some(0.0)).then_some(())
    })
    .await;
    redis.restart();
    tidings_testkit::retry("connected = 1 again", WAIT, || async {
        (metric(&base, "tidings_broker_connected").await == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn clients_behind_nginx_move_to_the_other_gateway_when_one_drains_and_lose_nothing() {
    use tidings_broker::{Broker, PublishOnly, RedisBroker, RedisConfig};
    use tidings_client::{Backoff, Client, ClientConfig, ClientEvent, ConnectionState, static_token};

    const CLIENTS: usize = 4;
    const EVENTS: u64 = 300;
    let redis = TestRedis::start();
    let logs = tempfile::tempdir().unwrap();
    let named = |name: &str| vec![("TIDINGS_INSTANCE_ID", name.to_string())];
    let drained = start("tidings-gateway", &redis, &named("gw-a"), &logs.path().join("a.log"));
    let other = start("tidings-gateway", &redis, &named("gw-b"), &logs.path().join("b.log"));
    let ports = [drained.port, other.port];
    let nginx = tidings_testkit::Nginx::start(&ports, tidings_testkit::free_port());

    let config = || ClientConfig {
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500), max_attempts: None },
        ..ClientConfig::new(format!("ws://127.0.0.1:{}", nginx.port), "balanced")
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = Client::connect(config(), static_token(token("balanced")));
        client.states().wait_for(|s| matches!(s, ConnectionState::Connected { .. })).await.unwrap();
        clients.push(client);
    }
    let server_of = |client: &Client| match &*client.states().borrow() {
        ConnectionState::Connected { server, .. } => Some(server.clone()),
        _ => None,
    };
    let servers: BTreeSet<String> = clients.iter().filter_map(server_of).collect();
    assert_eq!(servers.len(), 2, "least_conn spreads the clients over both gateways: {servers:?}");

    let broker = RedisBroker::connect(RedisConfig::new(redis.url(), 10_000), Arc::new(PublishOnly)).unwrap();
    let publisher = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        let mut ids = Vec::new();
        for n in 0..EVENTS {
            pace.tick().await;
            let stored = broker.publish(tidings_protocol::Event::new("tick", "balanced", serde_json::json!({ "n": n }))).await.unwrap();
            ids.push(stored.id.unwrap());
        }
        ids
    });
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let read = |mut client: Client| {
        let received = received.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < EVENTS as usize {
                match tokio::time::timeout(WAIT, client.next()).await.expect("events in time").expect("the client runs") {
                    ClientEvent::Event(e) => {
                        ids.push(e.id.unwrap());
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    ClientEvent::Reload => panic!("history reaches back: nothing to reload"),
                    _ => {}
                }
            }
            (ids, client)
        })
    };
    let mut states: Vec<_> = clients.iter().map(Client::states).collect();
    let readers: Vec<_> = clients.into_iter().map(read).collect();

    // Drain gw-a (SIGTERM: 1012 to its clients, then it exits) mid-stream.
    tidings_testkit::eventually("a quarter of the events read", WAIT, || {
        received.load(std::sync::atomic::Ordering::Relaxed) >= CLIENTS * EVENTS as usize / 4
    })
    .await;
    tidings_testkit::signal(drained.child.id(), "TERM");
    for state in &mut states {
        state.wait_for(|s| matches!(s, ConnectionState::Connected { server, .. } if server == "gw-b")).await.unwrap();
    }
    let published = publisher.await.unwrap();
    for reader in readers {
        let (ids, client) = reader.await.unwrap();
        assert_eq!(ids, published, "every event once, in order, across the move");
        let extra = tokio::time::timeout(Duration::from_millis(200), async {
            let mut client = client;
            client.next().await
        })
        .await;
        assert!(!matches!(extra, Ok(Some(ClientEvent::Event(_)))), "no duplicate after the last");
    }
    drop(drained);
}
