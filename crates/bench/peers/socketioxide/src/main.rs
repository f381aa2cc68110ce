//! Peer for scripts/bench-peers: socketioxide (the Rust Socket.IO server) with
//! socketioxide-redis, as a socketioxide cluster runs. Same job as a gateway
//! and as the Socket.IO peer: authenticated connect to a workspace (HS256 JWT
//! in the handshake query, checked with `jsonwebtoken`), one Redis channel per
//! workspace subscribed while it has readers, each message parsed once and
//! emitted to the local sockets of that workspace's room (`io.local()`: the
//! channel already reached every server, so the adapter must not re-broadcast).
//! WebSocket transport only; Engine.IO pings every 10 min so a run never pays
//! them. No compression: engineioxide's tungstenite has no permessage-deflate.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use redis::aio::{PubSubSink, PubSubStream};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::adapter::Emitter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::{SocketIo, TransportType};
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

/// The adapter named concretely: `.with()` on generic handlers would leave it to inference.
type Adapter = RedisAdapter<Emitter>;
type Socket = SocketRef<Adapter>;

const TEN_MINUTES: Duration = Duration::from_secs(600);
/// Packets queued per socket before emits to it fail (engineioxide's default is 128):
/// a burst emitted from one core outruns the writers, and the Node peers buffer without bound.
const SOCKET_BUFFER: usize = 4096;

struct Peer {
    key: DecodingKey,
    validation: Validation,
    readers: tokio::sync::Mutex<Readers>,
}

/// Local sockets per workspace and the pub/sub connection they share. One async
/// lock around both keeps SUBSCRIBE / UNSUBSCRIBE in the order the counts changed.
struct Readers {
    counts: HashMap<String, usize>,
    sink: PubSubSink,
}

/// What the handlers share; set once in `main` before the server accepts.
static PEER: OnceLock<Peer> = OnceLock::new();

fn peer() -> &'static Peer {
    PEER.get().expect("PEER is set before the server accepts")
}

#[derive(Deserialize, Clone)]
struct Claims {
    workspace_id: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8204);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secret = std::env::var("TIDINGS_JWT_SECRET").unwrap_or_else(|_| "bench-secret".into());

    // The adapter's driver reads its channels as RESP3 pushes on a multiplexed connection.
    let adapter = RedisAdapterCtr::new_with_redis(&redis::Client::open(resp3(&url))?).await?;
    // The workspace channels get a connection of their own, like the Socket.IO peer's `channels`.
    let (sink, stream) = redis::Client::open(url.as_str())?.get_async_pubsub().await?.split();

    let mut validation = Validation::new(Algorithm::HS256);
    // hs256.mjs: a valid signature and a future `exp`, nothing more (no leeway, any `aud`).
    validation.leeway = 0;
    validation.validate_aud = false;
    let _ = PEER.set(Peer {
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
        readers: tokio::sync::Mutex::new(Readers { counts: HashMap::new(), sink }),
    });

    let (layer, io) = SocketIo::builder()
        .transports([TransportType::Websocket])
        .ping_interval(TEN_MINUTES)
        .ping_timeout(TEN_MINUTES)
        .max_buffer_size(SOCKET_BUFFER)
        .with_adapter::<Adapter>(adapter)
        .build_layer();
    // With a remote adapter, registering a namespace subscribes its adapter channels: await it.
    io.ns("/", on_connect.with(authorize)).await?;
    tokio::spawn(forward(io.clone(), stream));

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("socketioxide peer on {port}");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Connect middleware: an error here is sent as the namespace's connect_error,
/// like `next(new Error("unauthorized"))` in the Socket.IO peer.
async fn authorize(s: Socket) -> Result<(), &'static str> {
    let peer = peer();
    let token = query(&s, "token").unwrap_or_default();
    let workspace = query(&s, "workspace_id").ok_or("unauthorized")?;
    let claims = jsonwebtoken::decode::<Claims>(token.as_str(), &peer.key, &peer.validation).map_err(|_| "unauthorized")?.claims;
    if claims.workspace_id.as_deref() != Some(workspace.as_str()) {
        return Err("unauthorized");
    }
    Ok(())
}

async fn on_connect(s: Socket) {
    // `authorize` let the socket in only with a `workspace_id` matching its token.
    let Some(workspace) = query(&s, "workspace_id") else { return };
    s.join(workspace.clone());
    let mut readers = peer().readers.lock().await;
    let n = readers.counts.entry(workspace.clone()).or_insert(0);
    *n += 1;
    let first = *n == 1;
    // Registered with the count taken, so a disconnect from here on gives it back.
    let left = workspace.clone();
    s.on_disconnect(move || release(left));
    if first && let Err(e) = readers.sink.subscribe(channel(&workspace)).await {
        eprintln!("subscribing to {}: {e}", channel(&workspace));
    }
    drop(readers);
    // After SUBSCRIBE: a client that has `connected` misses no event published later.
    s.emit("connected", &json!({ "type": "connected", "workspace_id": workspace })).ok();
}

async fn release(workspace: String) {
    let mut readers = peer().readers.lock().await;
    let Some(n) = readers.counts.get_mut(&workspace) else { return };
    *n -= 1;
    if *n == 0 {
        readers.counts.remove(&workspace);
        if let Err(e) = readers.sink.unsubscribe(channel(&workspace)).await {
            eprintln!("unsubscribing from {}: {e}", channel(&workspace));
        }
    }
}

/// Every workspace message to the local sockets of its room, parsed once.
async fn forward(io: SocketIo<Adapter>, stream: PubSubStream) {
    let mut stream = std::pin::pin!(stream);
    while let Some(msg) = stream.next().await {
        let Some(workspace) = msg.get_channel_name().strip_prefix("workspace:") else { continue };
        let Ok(event) = serde_json::from_slice::<Value>(msg.get_payload_bytes()) else { continue };
        // Sockets whose queue is full are skipped (and lose the event); the others still get it.
        io.local().to(workspace.to_owned()).emit("event", &event).await.ok();
    }
    // redis-rs's PubSub does not reconnect: a peer that silently stopped forwarding would skew a run.
    eprintln!("socketioxide peer: the Redis pub/sub connection closed");
    std::process::exit(1);
}

fn query(s: &Socket, key: &str) -> Option<String> {
    let query = s.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn channel(workspace: &str) -> String {
    format!("workspace:{workspace}")
}

/// REDIS_URL with `protocol=resp3` unless it names a protocol already.
fn resp3(url: &str) -> String {
    match url {
        u if u.contains("protocol=") => u.to_owned(),
        u if u.contains('?') => format!("{u}&protocol=resp3"),
        u => format!("{u}?protocol=resp3"),
    }
}
