//! The client against a real gateway process on a real Redis: the gateway is
//! killed and restarted under a steady stream of events, and the application
//! still sees every event once, in order.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tidings_broker::{Broker, PublishOnly, RedisBroker, RedisConfig};
use tidings_client::{Backoff, Client, ClientConfig, ClientEvent, ConnectionState, StopReason, TokenRequest, static_token};
use tidings_protocol::{Event, EventId};
use tidings_testkit::{ServerProcess, TestRedis, free_port};
use tidings_token::{Claims, sign_hs256, unix_now};

const SECRET: &str = "client-secret";
const WAIT: Duration = Duration::from_secs(30);

fn token(jti: Option<&str>, ttl: u64) -> String {
    let claims = Claims {
        sub: "client-test".into(),
        exp: unix_now() + ttl,
        nbf: None,
        iat: None,
        jti: jti.map(String::from),
        iss: None,
        aud: None,
        workspace_id: Some("acme".into()),
        workspaces: None,
    };
    sign_hs256(SECRET, &claims).unwrap()
}

fn gateway(redis: &TestRedis, port: u16) -> ServerProcess {
    let env = [
        ("TIDINGS_REDIS_URL", redis.url()),
        ("TIDINGS_JWT_SECRET", SECRET.to_string()),
        ("TIDINGS_DRAIN_SECS", "1".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    ServerProcess::start_on("tidings-gateway", port, &env, None)
}

fn config(port: u16) -> ClientConfig {
    ClientConfig {
        backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(500), max_attempts: None },
        ..ClientConfig::new(format!("ws://127.0.0.1:{port}"), "acme")
    }
}

/// Reads events until `n` arrived; other client events are returned too.
async fn read_events(client: &mut Client, n: usize) -> (Vec<EventId>, Vec<ClientEvent>) {
    let mut ids = Vec::new();
    let mut other = Vec::new();
    while ids.len() < n {
        match tokio::time::timeout(WAIT, client.next()).await.expect("events in time").expect("the client runs") {
            ClientEvent::Event(e) => ids.push(e.id.unwrap()),
            notice => other.push(notice),
        }
    }
    (ids, other)
}

#[tokio::test]
async fn a_gateway_killed_and_restarted_under_load_loses_nothing_and_repeats_nothing() {
    const EVENTS: u64 = 400;
    let redis = TestRedis::start();
    let port = free_port();
    let mut gw = gateway(&redis, port);
    let mut client = Client::connect(config(port), static_token(token(None, 3600)));
    let mut states = client.states();
    states.wait_for(|s| matches!(s, ConnectionState::Connected { .. })).await.unwrap();

    let broker = RedisBroker::connect(RedisConfig::new(redis.url(), 10_000), Arc::new(PublishOnly)).unwrap();
    let publisher = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(5));
        let mut ids = Vec::new();
        for n in 0..EVENTS {
            pace.tick().await;
            let stored = broker.publish(Event::new("tick", "acme", json!({ "n": n }))).await.unwrap();
            ids.push(stored.id.unwrap());
        }
        ids
    });
    let (mut seen, _) = read_events(&mut client, 50).await;
    gw.kill(); // SIGKILL mid-stream: no close frame
    states.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })).await.unwrap();
    let _gw = gateway(&redis, port);
    let published = publisher.await.unwrap();
    let (rest, notices) = read_events(&mut client, published.len() - seen.len()).await;
    seen.extend(rest);
    assert_eq!(seen, published, "every event once, in order, across the restart");
    assert!(!notices.contains(&ClientEvent::Reload), "history reached back: nothing to reload");
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(!matches!(extra, Ok(Some(ClientEvent::Event(_)))), "no duplicate after the last: {extra:?}");
}

#[tokio::test]
async fn an_expired_token_is_replaced_through_the_provider_and_a_revoked_one_stops_the_client() {
    let redis = TestRedis::start();
    let port = free_port();
    let _gw = gateway(&redis, port);
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let provider = {
        let asked = asked.clone();
        Arc::new(move |request: TokenRequest| {
            asked.lock().unwrap().push(request);
            // The first token expires within a couple of seconds; the next one lasts.
            let ttl = if request == TokenRequest::Initial && asked.lock().unwrap().len() == 1 { 2 } else { 3600 };
            let token = token(Some("j-9"), ttl);
            Box::pin(async move { Some(token) }) as futures_util::future::BoxFuture<'static, Option<String>>
        })
    };
    let client = Client::connect(config(port), provider);
    let mut states = client.states();
    tidings_testkit::eventually("a new token asked for after 4001", WAIT, || asked.lock().unwrap().contains(&TokenRequest::Expired)).await;
    states.wait_for(|s| matches!(s, ConnectionState::Connected { .. })).await.unwrap();

    let broker = RedisBroker::connect(RedisConfig::new(redis.url(), 100), Arc::new(PublishOnly)).unwrap();
    tidings_testkit::retry("the revocation", WAIT, || async { broker.revoke("j-9", None).await.ok() }).await;
    states.wait_for(|s| *s == ConnectionState::Stopped(StopReason::Forbidden)).await.unwrap();
}

#[tokio::test]
async fn history_that_no_longer_reaches_back_asks_the_application_to_reload() {
    let redis = TestRedis::start_with(&["--stream-node-max-entries", "5"]);
    let port = free_port();
    let _gw = gateway(&redis, port);
    let broker = RedisBroker::connect(RedisConfig::new(redis.url(), 10), Arc::new(PublishOnly)).unwrap();
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(broker.publish(Event::new("tick", "acme", json!({ "n": n }))).await.unwrap().id.unwrap());
    }
    let mut client = Client::connect(ClientConfig { since: Some(ids[0]), ..config(port) }, static_token(token(None, 3600)));
    let first = tokio::time::timeout(WAIT, client.next()).await.unwrap().unwrap();
    assert_eq!(first, ClientEvent::Reload, "told before the events that follow");
    let ClientEvent::Event(next) = tokio::time::timeout(WAIT, client.next()).await.unwrap().unwrap() else { panic!("an event") };
    assert!(next.id.unwrap() > ids[1], "what is still stored follows");
}

#[tokio::test]
async fn messages_wait_in_a_bounded_queue_while_disconnected_and_the_filter_survives_a_restart() {
    let redis = TestRedis::start();
    let port = free_port();
    let mut client = Client::connect(ClientConfig { outgoing_queue: 2, ..config(port) }, static_token(token(None, 3600)));
    // No gateway yet: the client keeps trying, the queue holds two messages.
    let subscribe = tidings_protocol::ClientMessage::Subscribe {
        id: Some(json!("s1")),
        event_types: Some(vec!["wanted".into()]),
        entity_refs: None,
        since: None,
    };
    client.send(subscribe).unwrap();
    client.send(tidings_protocol::ClientMessage::Ping { id: Some(json!("p1")) }).unwrap();
    assert!(matches!(client.send(tidings_protocol::ClientMessage::Ping { id: None }), Err(tidings_client::SendError::Full)));

    let mut gw = gateway(&redis, port);
    let mut replies = Vec::new();
    while replies.len() < 2 {
        if let ClientEvent::Reply(r) = tokio::time::timeout(WAIT, client.next()).await.unwrap().unwrap() {
            replies.push(r["id"].clone());
        }
    }
    assert_eq!(replies, [json!("s1"), json!("p1")], "sent in order once connected");

    // After a restart the client reconnects with its filter: only `wanted` arrives.
    gw.kill();
    let mut states = client.states();
    states.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })).await.unwrap();
    let _gw = gateway(&redis, port);
    states.wait_for(|s| matches!(s, ConnectionState::Connected { .. })).await.unwrap();
    let broker = RedisBroker::connect(RedisConfig::new(redis.url(), 100), Arc::new(PublishOnly)).unwrap();
    for event_type in ["unwanted", "wanted"] {
        tidings_testkit::retry("a publish", WAIT, || async { broker.publish(Event::new(event_type, "acme", json!({}))).await.ok() }).await;
    }
    loop {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap().unwrap() {
            ClientEvent::Event(e) => {
                assert_eq!(e.event_type, "wanted", "the filter was re-applied");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_client_with_bounded_attempts_gives_up() {
    let port = free_port(); // nothing listens there
    let config = ClientConfig {
        backoff: Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(50), max_attempts: Some(3) },
        ..ClientConfig::new(format!("ws://127.0.0.1:{port}"), "acme")
    };
    let client = Client::connect(config, static_token(token(None, 3600)));
    let mut states = client.states();
    states.wait_for(|s| *s == ConnectionState::Stopped(StopReason::GaveUp)).await.unwrap();
}
