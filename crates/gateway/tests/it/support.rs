//! Test harness: start a gateway, mint tokens, connect clients, publish events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_broker::{Broker, MemoryBroker, MessageHandler};
use tidings_gateway::metrics::GatewayMetrics;
use tidings_gateway::{GatewayConfig, Node, server};
use tidings_protocol::Event;
use tidings_token::{Claims, sign_hs256, unix_now};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
/// Deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestGateway {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub broker: Arc<MemoryBroker>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_with_broker(adjust, |b| b as Arc<dyn Broker>).await
    }

    /// Like [`start_with`](Self::start_with), with the node's broker wrapped by
    /// `wrap` (the harness still publishes through the memory broker inside).
    pub async fn start_with_broker(
        adjust: impl FnOnce(&mut GatewayConfig),
        wrap: impl FnOnce(Arc<MemoryBroker>) -> Arc<dyn Broker> + Send + 'static,
    ) -> Self {
        let mut config = GatewayConfig::new(SECRET);
        config.instance_id = "gw-test".into();
        config.unsubscribe_delay = Duration::from_millis(50);
        adjust(&mut config);
        let registry = prometheus::Registry::new();
        let metrics = GatewayMetrics::register(&registry).unwrap();
        let broker = Arc::new(MemoryBroker::new(config.history_size));
        let b = broker.clone();
        let node = Node::new(config, metrics, move |hub: Arc<dyn MessageHandler>| {
            b.set_handler(hub);
            Ok(wrap(b))
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let router = server::router(node.clone(), registry);
        let handle = tokio::spawn(server::serve(listener, router, node.clone(), async move {
            let _ = rx.await;
        }));
        Self { addr, node, broker, shutdown: Some(tx), handle: Some(handle) }
    }

    /// Starts graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(WAIT * 2, h).await.expect("serve returns after drain").unwrap(),
            None => Ok(()),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// A valid token for `workspace` and user `sub`.
    pub fn token_for(&self, workspace: &str, sub: &str) -> String {
        sign(&claims(workspace, sub))
    }

    pub fn token(&self, workspace: &str) -> String {
        self.token_for(workspace, "user-1")
    }

    /// Connects with `token=` for `workspace` plus extra query parameters.
    pub async fn client(&self, workspace: &str, extra: &str) -> Client {
        let url = self.ws_url(&format!("token={}{extra}", self.token(workspace)));
        let mut client = Client::connect(&url).await.unwrap_or_else(|e| panic!("connect {url}: {e:?}"));
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "connected", "first message: {hello}");
        client
    }

    /// A durable event through the broker, as a publisher would send it.
    pub async fn publish(&self, workspace: &str, event_type: &str, entity_ref: Option<&str>, data: Value) -> Event {
        let mut event = Event::new(event_type, workspace, data);
        event.entity_ref = entity_ref.map(String::from);
        event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
        event.validate().unwrap();
        self.broker.publish(event).await.unwrap()
    }

    /// The value of one sample line of `/metrics`, e.g.
    /// `tidings_connections_open{transport="sse"}`; `None` when absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.base())).await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))).map(|v| v.trim().parse().unwrap())
    }

    /// Waits until the hub holds `n` connections in total.
    pub async fn wait_for_connections(&self, n: usize) {
        let node = self.node.clone();
        wait_until(move || node.hub.total() == n).await;
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// The `iss` and `aud` of gateways that check them, and claims that carry them.
pub const ISSUER: &str = "idp";
pub const AUDIENCE: &str = "tidings";

pub fn issued_claims(workspace: &str, sub: &str) -> Claims {
    let mut c = claims(workspace, sub);
    c.iss = Some(ISSUER.into());
    c.aud = Some(tidings_token::Audience::One(AUDIENCE.into()));
    c
}

pub fn claims(workspace: &str, sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: unix_now() + 3600,
        nbf: None,
        iat: Some(unix_now()),
        jti: None,
        iss: None,
        aud: None,
        workspace_id: Some(workspace.into()),
        workspaces: None,
    }
}

pub fn sign(claims: &Claims) -> String {
    sign_hs256(SECRET, claims).unwrap()
}

/// Polls `cond` until it holds; fails the test after [`WAIT`].
pub async fn wait_until(cond: impl FnMut() -> bool) {
    tidings_testkit::eventually("the condition", WAIT, cond).await;
}

/// Why a WebSocket connect failed: the HTTP status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client, Refused> {
        Self::connect_request(url.into_client_request().unwrap()).await
    }

    pub async fn connect_request(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> Result<Client, Refused> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(WsError::Http(response)) => {
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let body = response.body().as_ref().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).unwrap_or(Value::Null);
                Err(Refused { status: response.status().as_u16(), body, retry_after })
            }
            Err(e) => panic!("connect failed below HTTP: {e}"),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string().into())).await.unwrap();
    }

    /// Next frame that is not a ping/pong, within [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame within the deadline");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Next text frame as JSON; panics on close.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(t)) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Sends a request and returns the reply of type `reply_type`.
    pub async fn request(&mut self, v: Value, reply_type: &str) -> Value {
        self.send_json(v).await;
        let reply = self.next_json().await;
        assert_eq!(reply["type"], reply_type, "reply: {reply}");
        reply
    }

    /// Reads until a close frame; returns its code. Frames before it are returned too.
    pub async fn read_until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut seen = Vec::new();
        loop {
            match self.next_frame().await {
                Some(Message::Text(t)) => seen.push(serde_json::from_str(&t).unwrap()),
                Some(Message::Close(frame)) => return (seen, frame.map(|f: CloseFrame| u16::from(f.code))),
                Some(_) => {}
                None => return (seen, None),
            }
        }
    }

    /// Proves the connection is open and answering by a ping round trip.
    pub async fn assert_alive(&mut self) {
        let pong = self.request(json!({"type": "ping", "id": "alive"}), "pong").await;
        assert_eq!(pong["id"], "alive");
    }
}

/// A WebSocket client on a bare TCP socket, for frames a well-behaved library
/// refuses to send (invalid UTF-8, unmasked frames, reserved bits).
pub struct RawWs {
    pub tcp: TcpStream,
}

/// The opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// The opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;

impl RawWs {
    /// Upgrades `GET /ws?{query}` and returns once the 101 headers are read.
    pub async fn connect(addr: SocketAddr, query: &str) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut byte)).await.expect("101 in time").unwrap();
            assert_eq!(n, 1, "connection closed during the handshake: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs { tcp }
    }

    /// Sends one frame: `first_byte` is FIN, RSV1-3 and the opcode; the payload
    /// is masked when `masked` (as RFC 6455 requires of clients).
    pub async fn send_frame(&mut self, first_byte: u8, masked: bool, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126, "short frames only");
        let mut frame = vec![first_byte, payload.len() as u8 | if masked { 0x80 } else { 0 }];
        if masked {
            let key = [0x12u8, 0x34, 0x56, 0x78];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// Next frame as (opcode, payload); `None` once the server closed TCP.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 2];
        match tokio::time::timeout(WAIT, self.tcp.read_exact(&mut head)).await.expect("a frame within the deadline") {
            Ok(_) => {}
            Err(_) => return None,
        }
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.tcp.read_exact(&mut b).await.ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.tcp.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    }

    /// Reads until a close frame and returns its code; `None` when TCP ended
    /// without one (what a client reports as 1006).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.read_frame().await?;
            if opcode == OP_CLOSE {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}
