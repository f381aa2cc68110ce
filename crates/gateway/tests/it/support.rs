//! Test harness: start a gateway, mint tokens, connect clients, publish events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings_broker::{Broker, MemoryBroker, MessageHandler};
use tidings_gateway::auth::{Claims, sign_hs256, unix_now};
use tidings_gateway::metrics::GatewayMetrics;
use tidings_gateway::{GatewayConfig, Node, server};
use tidings_protocol::Event;
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
            Ok(b as Arc<dyn Broker>)
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
