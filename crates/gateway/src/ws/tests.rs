//! The WebSocket session over channels instead of a socket (axum's
//! `testing-websockets` example): the handshake, a delivery, a malformed
//! frame answered with an error, and the close, without a listener. The
//! real-socket behaviour is `tests/it`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::extract::ws::Message;
use axum::http::HeaderMap;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tidings_broker::{Broker, MemoryBroker};
use tidings_protocol::Event;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::PollSender;

use super::{ConnectParams, prepare_upgrade, serve};
use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::node::Node;

const SECRET: &str = "channel-secret";
const WAIT: Duration = Duration::from_secs(10);

/// The client's ends of a session served over two channels.
struct ChannelClient {
    to_session: mpsc::Sender<Result<Message, axum::Error>>,
    from_session: mpsc::Receiver<Message>,
}

impl ChannelClient {
    async fn next_json(&mut self) -> Value {
        match timeout(WAIT, self.from_session.recv()).await {
            Ok(Some(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame that is not a heartbeat ping.
    async fn next_frame(&mut self) -> Option<Message> {
        loop {
            match timeout(WAIT, self.from_session.recv()).await.unwrap() {
                Some(Message::Ping(_)) => continue,
                other => return other,
            }
        }
    }
}

fn gateway() -> (Arc<Node>, Arc<MemoryBroker>) {
    let memory = Arc::new(MemoryBroker::new(100));
    let broker = memory.clone();
    let metrics = GatewayMetrics::register(&prometheus::Registry::new()).unwrap();
    let node = Node::new(GatewayConfig::new(SECRET), metrics, move |hub| {
        broker.set_handler(hub);
        Ok(broker as Arc<dyn Broker>)
    })
    .unwrap();
    (node, memory)
}

/// A session of `node` for `workspace`, its token on the upgrade.
async fn connect(node: &Arc<Node>, workspace: &str) -> ChannelClient {
    let token = tidings_token::Claims::for_workspace(workspace, "u1", Duration::from_secs(60)).sign_hs256(SECRET).unwrap();
    let params = ConnectParams { token: Some(token), ..ConnectParams::default() };
    let (setup, identity) = prepare_upgrade(node, Ok(Query(params)), &HeaderMap::new()).await.unwrap();
    let (to_client, from_session) = mpsc::channel(64);
    let (to_session, mut inbox) = mpsc::channel(64);
    let sink = PollSender::new(to_client).sink_map_err(axum::Error::new);
    let stream = futures_util::stream::poll_fn(move |cx| inbox.poll_recv(cx));
    tokio::spawn(serve(node.clone(), sink, stream, setup, identity, None));
    ChannelClient { to_session, from_session }
}

#[tokio::test]
async fn a_session_runs_over_channels() {
    let (node, broker) = gateway();
    let mut client = connect(&node, "acme").await;
    let connected = client.next_json().await;
    assert_eq!((connected["type"].as_str(), connected["workspace_id"].as_str()), (Some("connected"), Some("acme")));

    let stored = broker.publish(Event::new("deployment_update", "acme", json!({"status": "started"}))).await.unwrap();
    let delivered = client.next_json().await;
    assert_eq!(delivered["type"], "deployment_update");
    assert_eq!(delivered["id"].as_str(), stored.id.map(|id| id.to_string()).as_deref());

    // Bad input gets an error reply, and the session goes on.
    client.to_session.send(Ok(Message::Text("{not json".into()))).await.unwrap();
    let reply = client.next_json().await;
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("invalid_message")));
    client.to_session.send(Ok(Message::Text(r#"{"type":"ping","id":"p1"}"#.into()))).await.unwrap();
    let pong = client.next_json().await;
    assert_eq!((pong["type"].as_str(), pong["id"].as_str()), (Some("pong"), Some("p1")));

    // The client's close is answered, and the connection leaves the hub.
    client.to_session.send(Ok(Message::Close(None))).await.unwrap();
    match client.next_frame().await {
        Some(Message::Close(_)) | None => {}
        other => panic!("expected the close, got {other:?}"),
    }
    tidings_testkit::retry("the connection leaves the hub", WAIT, || async { (node.hub.total() == 0).then_some(()) }).await;
}

#[tokio::test]
async fn a_broken_stream_ends_only_its_own_session() {
    let (node, broker) = gateway();
    let mut broken = connect(&node, "acme").await;
    let mut neighbour = connect(&node, "acme").await;
    broken.next_json().await;
    neighbour.next_json().await;
    broken.to_session.send(Err(axum::Error::new(std::io::Error::other("reset by peer")))).await.unwrap();
    while broken.next_frame().await.is_some() {}
    tidings_testkit::retry("the broken session leaves the hub", WAIT, || async { (node.hub.total() == 1).then_some(()) }).await;
    // The other session still gets events and answers.
    broker.publish(Event::new("deployment_update", "acme", json!({"status": "started"}))).await.unwrap();
    assert_eq!(neighbour.next_json().await["type"], "deployment_update");
    neighbour.to_session.send(Ok(Message::Text(r#"{"type":"ping"}"#.into()))).await.unwrap();
    assert_eq!(neighbour.next_json().await["type"], "pong");
}
