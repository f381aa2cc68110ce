//! The Redis broker against a real redis-server started on a free port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tidings_broker::{Broker, DeliveryClaim, DeliveryStore, MessageHandler, PublishedOnce, RedisBroker, RedisConfig};
use tidings_protocol::{Event, EventId};
use tidings_testkit::TestRedis;

const WAIT: Duration = Duration::from_secs(15);

/// Stands in for the hub: what it was sent, and the workspaces it reads.
#[derive(Default)]
struct Collect {
    seen: Mutex<Vec<(String, Value)>>,
    reading: Mutex<Vec<String>>,
    reconnects: Mutex<u32>,
    gaps: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
}

impl MessageHandler for Collect {
    fn on_message(&self, workspace_id: &str, payload: Bytes) {
        self.seen.lock().unwrap().push((workspace_id.to_string(), serde_json::from_slice(&payload).unwrap()));
    }
    fn workspaces(&self) -> Vec<String> {
        self.reading.lock().unwrap().clone()
    }
    fn on_reconnect(&self) {
        *self.reconnects.lock().unwrap() += 1;
    }
    fn on_gap(&self, workspace_id: &str) {
        self.gaps.lock().unwrap().push(workspace_id.to_string());
    }
    fn on_revoked(&self, jti: &str) {
        self.revoked.lock().unwrap().push(jti.to_string());
    }
}

impl Collect {
    async fn follow(&self, broker: &RedisBroker, ws: &str) {
        self.reading.lock().unwrap().push(ws.to_string());
        broker.subscribe(ws).await.unwrap();
    }
    async fn unfollow(&self, broker: &RedisBroker, ws: &str) {
        self.reading.lock().unwrap().retain(|w| w != ws);
        broker.unsubscribe(ws).await.unwrap();
    }
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn ids(&self, ws: &str) -> Vec<String> {
        self.seen.lock().unwrap().iter().filter(|(w, _)| w == ws).filter_map(|(_, v)| v["id"].as_str().map(String::from)).collect()
    }
}

async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    tidings_testkit::eventually(what, WAIT, cond).await;
}

fn broker(redis: &TestRedis, history_size: usize) -> (RedisBroker, Arc<Collect>) {
    broker_with(RedisConfig::new(redis.url(), history_size))
}

fn broker_with(config: RedisConfig) -> (RedisBroker, Arc<Collect>) {
    let seen = Arc::new(Collect::default());
    let broker = RedisBroker::connect(config, seen.clone()).unwrap();
    (broker, seen)
}

/// The ages in seconds of the server's pub/sub connections (`CLIENT LIST TYPE pubsub`).
fn pubsub_connection_ages(redis: &TestRedis) -> Vec<u64> {
    redis
        .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .lines()
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("age="))?.parse().ok())
        .collect()
}

/// Appends `n` events to a workspace stream the way an outside writer could,
/// without announcing them on the channel (nothing is delivered live).
fn append_unannounced(redis: &TestRedis, ws: &str, n: usize, maxlen: Option<usize>) -> Vec<String> {
    let script = r#"
        local t = redis.call('TIME')
        local base = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + 1
        local ids = {}
        for i = 1, tonumber(ARGV[2]) do
          local id = string.format('%.0f-%d', base, i)
          local json = '{"id":"' .. id .. '","type":"t","workspace_id":"' .. ARGV[1] .. '","data":{"n":' .. i .. '}}'
          if ARGV[3] == '' then
            redis.call('XADD', KEYS[1], id, 'event', json)
          else
            redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'event', json)
          end
          ids[#ids + 1] = id
        end
        return ids
    "#;
    let key = format!("workspace:{ws}:events");
    let maxlen = maxlen.map(|m| m.to_string()).unwrap_or_default();
    redis.cli(&["EVAL", script, "1", &key, ws, &n.to_string(), &maxlen]).lines().map(String::from).collect()
}

async fn ready(broker: &RedisBroker) {
    tidings_testkit::retry("the broker to be ready", WAIT, || async { broker.is_ready().await.then_some(()) }).await;
}

fn event(ws: &str, n: u64) -> Event {
    let mut e = Event::new("t", ws, json!({ "n": n }));
    e.timestamp = Some("2026-11-24T12:00:00.000Z".into());
    e
}

#[tokio::test]
async fn durable_publish_stores_publishes_and_keeps_latest() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "acme").await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(broker.publish(event("acme", n)).await.unwrap().id.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {ids:?}");
    wait_until("20 messages", || seen.len() == 20).await;
    assert_eq!(seen.ids("acme"), ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(), "channel order = stream order");

    // The stream entry id is the event id, and the stored JSON carries it.
    let raw = redis.cli(&["XRANGE", "workspace:acme:events", "-", "+", "COUNT", "1"]);
    assert!(raw.contains(&ids[0].to_string()) && raw.contains(&format!("\"id\":\"{}\"", ids[0])), "{raw}");

    let mut m = Event::new("metrics_update", "acme", json!({"metrics": {"cpu": 1.5, "memory": 2.0}}));
    m.entity_ref = Some("host:default/a".into());
    broker.publish(m).await.unwrap();
    let latest = broker.latest("acme").await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!((latest[0].entity_ref.as_str(), latest[0].event_type.as_str()), ("host:default/a", "metrics_update"));
    let stored: Value = serde_json::from_slice(&latest[0].json).unwrap();
    assert_eq!(stored["data"]["metrics"]["cpu"], 1.5, "numbers survive the script untouched");
}

#[tokio::test]
async fn subscriptions_follow_readers_and_never_cross_workspaces() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "a").await;
    assert_eq!(redis.cli(&["PUBSUB", "CHANNELS", "workspace:*"]), "workspace:a");
    broker.publish(event("b", 1)).await.unwrap();
    broker.publish(event("a", 2)).await.unwrap();
    wait_until("a's message", || seen.len() == 1).await;
    assert_eq!(seen.seen.lock().unwrap()[0].0, "a");
    seen.unfollow(&broker, "a").await;
    assert_eq!(redis.cli(&["PUBSUB", "CHANNELS", "workspace:*"]), "");
    // A bare PUBLISH (live-only) from another service reaches subscribers, unstored.
    seen.follow(&broker, "b").await;
    redis.cli(&["PUBLISH", "workspace:b", r#"{"type":"log_line","workspace_id":"b","data":"hi"}"#]);
    wait_until("live message", || seen.len() == 2).await;
    assert_eq!(seen.seen.lock().unwrap()[1].1["type"], "log_line");
}

#[tokio::test]
async fn history_pages_and_reports_trimming() {
    // Small stream nodes so MAXLEN ~ trims close to the configured size.
    let redis = TestRedis::start_with(&["--stream-node-max-entries", "5"]);
    let (broker, _) = broker(&redis, 10);
    ready(&broker).await;
    let mut ids: Vec<EventId> = Vec::new();
    for n in 0..60 {
        ids.push(broker.publish(event("w", n)).await.unwrap().id.unwrap());
    }
    let newest = broker.history("w", None, 3).await.unwrap();
    assert_eq!(newest.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[57..]);

    let recent = broker.history("w", Some(ids[55]), 2).await.unwrap();
    assert!(recent.recovered && recent.more);
    assert_eq!(recent.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[56..58]);
    assert_eq!(recent.last_id, Some(ids[59]));

    let old = broker.history("w", Some(ids[0]), 100).await.unwrap();
    assert!(!old.recovered, "ids[1] is long trimmed");
    assert!(!old.events.is_empty() && old.events.len() < 59);

    let fresh = broker.history("empty", Some(EventId::new(1, 0)), 10).await.unwrap();
    assert!(!fresh.recovered && fresh.events.is_empty(), "an id of a stream that no longer exists cannot be recovered");
    assert!(broker.history("empty", Some(EventId::ZERO), 10).await.unwrap().recovered, "0-0 asks for everything: nothing is lost");
}

#[tokio::test]
async fn a_lost_pubsub_connection_reconnects_and_replays_what_it_missed_exactly_once() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 1000);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(broker.publish(event("w", n)).await.unwrap().id.unwrap().to_string());
    }
    wait_until("first five", || seen.len() == 5).await;
    // Cut the pub/sub connection and publish while it is down.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for n in 5..30 {
        ids.push(broker.publish(event("w", n)).await.unwrap().id.unwrap().to_string());
    }
    wait_until("all thirty", || seen.len() >= 30).await;
    wait_until("the reconnect callback", || *seen.reconnects.lock().unwrap() >= 1).await;
    assert_eq!(seen.ids("w"), ids, "every event once, in order");
    assert!(broker.reconnects() >= 1);
}

#[tokio::test]
async fn a_redis_restart_turns_not_ready_then_ready_and_delivery_resumes() {
    let mut redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    redis.kill();
    assert!(!broker.is_ready().await);
    assert!(broker.publish(event("w", 1)).await.is_err(), "nothing is reported as published while Redis is down");
    redis.restart();
    ready(&broker).await;
    // The restarted Redis kept nothing; the broker re-subscribed by itself.
    wait_until("resubscribed", || redis.cli(&["PUBSUB", "CHANNELS", "workspace:*"]) == "workspace:w").await;
    let id = broker.publish(event("w", 2)).await.unwrap().id.unwrap().to_string();
    wait_until("delivery after the restart", || seen.ids("w").contains(&id)).await;
}

#[tokio::test]
async fn the_shipped_lua_script_publishes_for_any_service() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "acme").await;
    let script = tidings_broker::redis::PUBLISH_SCRIPT;
    let event = r#"{"type":"deployment_update","workspace_id":"acme","entity_ref":"component:default/checkout","timestamp":"2026-11-24T12:00:00Z","data":{"deployment":{"id":"d1","version":"v1","environment":"prod","status":"success","start_time":"2026-11-24T11:59:00Z"}}}"#;
    let id = redis.cli(&["EVAL", script, "3", "workspace:acme:events", "workspace:acme:latest", "workspace:acme", event, "10000", "", "0"]);
    assert!(id.parse::<EventId>().is_ok(), "script returned {id:?}");
    wait_until("the scripted event", || seen.len() == 1).await;
    assert_eq!(seen.ids("acme"), [id]);
    let err = redis.cli(&["EVAL", script, "3", "workspace:acme:events", "workspace:acme:latest", "workspace:acme", "{}", "10000", "", "0"]);
    assert!(err.contains("non-empty JSON object"), "{err}");
}

fn claim(delivery: &str) -> DeliveryClaim {
    DeliveryClaim { source: "github".into(), delivery: delivery.into() }
}

#[tokio::test]
async fn a_delivery_is_claimed_and_published_in_one_step() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "acme").await;
    let PublishedOnce::Published(stored) = broker.publish_once(&claim("d-1"), vec![event("acme", 1), event("acme", 2)]).await.unwrap()
    else {
        panic!("a new delivery is published");
    };
    let ids: Vec<String> = stored.iter().map(|e| e.id.unwrap().to_string()).collect();
    assert!(stored[0].id < stored[1].id);
    wait_until("both events", || seen.ids("acme") == ids).await;
    let ttl: i64 = redis.cli(&["TTL", "tidings:dedup:github:d-1"]).parse().unwrap();
    assert!((86_000..=86_400).contains(&ttl), "remembered for 24 h, TTL {ttl}");
    assert_eq!(broker.publish_once(&claim("d-1"), vec![event("acme", 1), event("acme", 2)]).await.unwrap(), PublishedOnce::Duplicate);
    assert_eq!(redis.cli(&["XLEN", "workspace:acme:events"]), "2", "the redelivery wrote nothing");
}

#[tokio::test]
async fn a_publish_that_fails_keeps_no_claim_and_the_retry_publishes_once() {
    // Before: the claim (SET NX) and the publish were separate steps; a failed
    // publish whose release also failed answered every retry `duplicate`.
    let redis = TestRedis::start();
    let (broker, _) = broker(&redis, 100);
    ready(&broker).await;
    // A key of the wrong type makes the write fail inside the script.
    redis.cli(&["SET", "workspace:acme:events", "not a stream"]);
    let failed = broker.publish_once(&claim("d-2"), vec![event("acme", 1), event("acme", 2)]).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(redis.cli(&["EXISTS", "tidings:dedup:github:d-2"]), "0", "no claim is kept for what was not published");
    redis.cli(&["DEL", "workspace:acme:events"]);
    assert!(matches!(
        broker.publish_once(&claim("d-2"), vec![event("acme", 1), event("acme", 2)]).await.unwrap(),
        PublishedOnce::Published(_)
    ));
    assert_eq!(broker.publish_once(&claim("d-2"), vec![event("acme", 1)]).await.unwrap(), PublishedOnce::Duplicate);
    assert_eq!(redis.cli(&["XLEN", "workspace:acme:events"]), "2", "exactly once");
    // A bad event anywhere in the delivery writes nothing at all.
    let script = tidings_broker::redis::PUBLISH_SCRIPT;
    let keys = ["workspace:acme:events", "workspace:acme:latest", "workspace:acme", "tidings:dedup:github:d-3"];
    let err = redis.cli(&["EVAL", script, "4", keys[0], keys[1], keys[2], keys[3], r#"{"type":"t"}"#, "100", "", "0", "60", "[]", ""]);
    assert!(err.contains("non-empty JSON object"), "{err}");
    assert_eq!(redis.cli(&["EXISTS", "tidings:dedup:github:d-3"]), "0");
    assert_eq!(redis.cli(&["XLEN", "workspace:acme:events"]), "2");
}

#[tokio::test]
async fn a_claimed_publish_that_times_out_is_neither_lost_nor_repeated() {
    // Before: the timed-out publish released its claim, and when Redis ran the
    // held script after all, the redelivery published the events a second time.
    let redis = TestRedis::start();
    let (broker, _) = broker(&redis, 100);
    ready(&broker).await;
    broker.publish_once(&claim("warm-up"), vec![event("acme", 0)]).await.unwrap(); // loads the script
    redis.cli(&["CLIENT", "PAUSE", "4500", "WRITE"]);
    let timed_out = broker.publish_once(&claim("d-4"), vec![event("acme", 1), event("acme", 2)]).await;
    assert!(timed_out.is_err(), "longer than the command timeout: {timed_out:?}");
    wait_until("the held script to run once writes resume", || redis.cli(&["XLEN", "workspace:acme:events"]) == "3").await;
    assert_eq!(broker.publish_once(&claim("d-4"), vec![event("acme", 1), event("acme", 2)]).await.unwrap(), PublishedOnce::Duplicate);
    assert_eq!(redis.cli(&["XLEN", "workspace:acme:events"]), "3", "stored once");
}

#[tokio::test]
async fn revocations_and_entity_links_live_in_redis() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    broker.link_entity("github", "acme/checkout", Some("component:default/checkout")).await.unwrap();
    assert_eq!(broker.linked_entity("github", "acme/checkout").await.unwrap().as_deref(), Some("component:default/checkout"));
    assert_eq!(redis.cli(&["HGET", "tidings:entity-links:github", "acme/checkout"]), "component:default/checkout");
    broker.link_entity("github", "acme/checkout", None).await.unwrap();
    assert_eq!(broker.linked_entity("github", "acme/checkout").await.unwrap(), None);

    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    broker.revoke("j1", Some(exp)).await.unwrap();
    assert!(broker.is_revoked("j1").await.unwrap());
    assert!(!broker.is_revoked("j2").await.unwrap());
    let ttl: i64 = redis.cli(&["TTL", "tidings:revoked:j1"]).parse().unwrap();
    assert!((3600..=3660).contains(&ttl), "kept until the token's exp and a minute, TTL {ttl}");
    wait_until("the revocation announced", || seen.revoked.lock().unwrap().as_slice() == ["j1"]).await;
    broker.revoke("j3", None).await.unwrap();
    let ttl: i64 = redis.cli(&["TTL", "tidings:revoked:j3"]).parse().unwrap();
    assert!(ttl > 29 * 24 * 3600, "without exp: 30 days, TTL {ttl}");
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls_port = tidings_testkit::free_port().to_string();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let redis = TestRedis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--tls-ca-cert-file",
        cert,
        "--tls-auth-clients",
        "no",
    ]);
    // A self-signed server certificate: `#insecure` skips verification (a real
    // deployment uses a certificate its system roots trust, and no fragment).
    let seen = Arc::new(Collect::default());
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    let broker = RedisBroker::connect(RedisConfig::new(url, 100), seen.clone()).unwrap();
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    let id = broker.publish(event("w", 1)).await.unwrap().id.unwrap().to_string();
    wait_until("delivery over TLS", || seen.ids("w") == [id.clone()]).await;
    assert_eq!(redis.cli(&["XLEN", "workspace:w:events"]), "1");
}

#[tokio::test]
async fn the_pubsub_connection_survives_its_probes_and_loses_no_live_event() {
    // Before the fix, the probe read a subscribed connection's `["pong", ""]`
    // as a failure and reconnected every period, losing live-only events.
    const EVENTS: usize = 600;
    let redis = TestRedis::start();
    let probe = Duration::from_millis(200);
    let (broker, seen) = broker_with(RedisConfig { pubsub_probe: probe, ..RedisConfig::new(redis.url(), 100) });
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    wait_until("one pub/sub connection", || pubsub_connection_ages(&redis).len() == 1).await;
    // Bare PUBLISH, as any service may do: live-only, never replayed. Paced
    // over 3 s, fifteen probe periods.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    for n in 0..EVENTS {
        pace.tick().await;
        broker.publish_live(event("w", n as u64)).await.unwrap();
    }
    wait_until("every live event", || seen.len() >= EVENTS).await;
    assert_eq!(seen.len(), EVENTS, "no live event lost or doubled");
    assert_eq!(broker.reconnects(), 0, "the connection was never re-opened");
    let ages = pubsub_connection_ages(&redis);
    assert_eq!(ages.len(), 1, "one pub/sub connection: {ages:?}");
    assert!(ages[0] >= 2, "the same connection for the whole run, age {}s", ages[0]);
}

#[tokio::test]
async fn close_ends_the_pubsub_connection_and_commands_keep_working() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 100);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    wait_until("one pub/sub connection", || pubsub_connection_ages(&redis).len() == 1).await;
    tokio::time::timeout(WAIT, broker.close()).await.expect("close waits only for the broker's own tasks");
    wait_until("no pub/sub connection", || pubsub_connection_ages(&redis).is_empty()).await;
    // The command pool is not a background task: a closing process can still publish.
    let stored = broker.publish(event("w", 1)).await.unwrap();
    assert!(stored.id.is_some());
    assert_eq!(redis.cli(&["XLEN", "workspace:w:events"]), "1");
    tokio::time::timeout(WAIT, broker.close()).await.expect("a second close returns at once");
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_pubsub_connection_at_once() {
    // With a probe period longer than the wait, only the closing token (not the
    // loop's next wake-up) can end the connection in time.
    let redis = TestRedis::start();
    let config = RedisConfig { pubsub_probe: Duration::from_secs(3600), ..RedisConfig::new(redis.url(), 100) };
    let (broker, seen) = broker_with(config);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    wait_until("one pub/sub connection", || pubsub_connection_ages(&redis).len() == 1).await;
    let copy = broker.clone();
    drop(broker);
    assert_eq!(pubsub_connection_ages(&redis).len(), 1, "a clone still holds the broker");
    drop(copy);
    wait_until("no pub/sub connection", || pubsub_connection_ages(&redis).is_empty()).await;
}

#[tokio::test]
async fn a_subscribe_that_fails_leaves_nothing_half_done() {
    // Before: a failed SUBSCRIBE left the workspace marked wanted, so the next
    // subscribe was a no-op and its live events never came; a failed stream
    // read left no start position, so the next reconnect replayed the whole
    // stream to a reader that never asked for history.
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 1000);
    ready(&broker).await;
    let old: Vec<String> = append_unannounced(&redis, "w", 50, None);
    seen.reading.lock().unwrap().push("w".into());
    redis.cli(&["CLIENT", "PAUSE", "5000", "ALL"]);
    let first = broker.subscribe("w").await;
    assert!(first.is_err(), "Redis did not answer within the command timeout: {first:?}");
    tidings_testkit::retry("a subscribe once Redis answers", WAIT, || async { broker.subscribe("w").await.ok() }).await;
    wait_until("subscribed", || redis.cli(&["PUBSUB", "CHANNELS", "workspace:*"]) == "workspace:w").await;
    let live = broker.publish(event("w", 1)).await.unwrap().id.unwrap().to_string();
    wait_until("live delivery", || seen.ids("w").contains(&live)).await;
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    wait_until("the reconnect", || broker.reconnects() >= 1).await;
    let after = broker.publish(event("w", 2)).await.unwrap().id.unwrap().to_string();
    wait_until("delivery after the reconnect", || seen.ids("w").contains(&after)).await;
    let ids = seen.ids("w");
    assert!(!ids.iter().any(|id| old.contains(id)), "history from before the subscription was never replayed: {ids:?}");
    assert_eq!(ids, [live, after]);
}

#[tokio::test]
async fn subscriptions_are_re_derived_from_the_readers_after_a_failure() {
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 1000);
    ready(&broker).await;
    seen.follow(&broker, "a").await;
    seen.follow(&broker, "b").await;
    wait_until("both subscribed", || {
        redis.cli(&["PUBSUB", "NUMSUB", "workspace:a", "workspace:b"]).lines().filter(|l| *l == "1").count() == 2
    })
    .await;
    // The last reader of `a` leaves while the connection is being cut: whether
    // UNSUBSCRIBE fails or not, the reconnect subscribes what has readers.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    seen.unfollow(&broker, "a").await;
    wait_until("only b after the reconnect", || redis.cli(&["PUBSUB", "CHANNELS", "workspace:*"]) == "workspace:b").await;
    // A reader that is back is not unsubscribed by a late unsubscribe.
    seen.follow(&broker, "a").await;
    broker.unsubscribe("a").await.unwrap();
    let id = broker.publish(event("a", 1)).await.unwrap().id.unwrap().to_string();
    wait_until("a delivered", || seen.ids("a").contains(&id)).await;
}

#[tokio::test]
async fn a_replay_after_a_reconnect_reads_every_page() {
    // Before: one page of `history_size` events, the rest silently skipped.
    let redis = TestRedis::start();
    let (broker, seen) = broker(&redis, 1000);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    let missed = append_unannounced(&redis, "w", 2500, None);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    wait_until("the whole replay", || seen.len() >= missed.len()).await;
    assert_eq!(seen.ids("w"), missed, "every stored event once, in order");
    assert_eq!(broker.reconnects(), 1, "all of it on the one reconnect");
    assert!(seen.gaps.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_replay_that_cannot_reach_back_reports_the_gap() {
    // Before: the trimmed events were skipped and nobody was told.
    let redis = TestRedis::start_with(&["--stream-node-max-entries", "5"]);
    let (broker, seen) = broker(&redis, 10);
    ready(&broker).await;
    seen.follow(&broker, "w").await;
    let delivered = broker.publish(event("w", 0)).await.unwrap().id.unwrap().to_string();
    wait_until("the first event", || seen.len() == 1).await;
    append_unannounced(&redis, "w", 60, Some(10));
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    wait_until("the gap reported", || seen.gaps.lock().unwrap().as_slice() == ["w"]).await;
    assert!(seen.ids("w").len() > 1, "what is still stored is replayed after {delivered}");
}

#[tokio::test]
async fn history_lost_with_a_redis_restart_is_not_reported_as_recovered() {
    // Before: the new, empty stream was "never trimmed", so an id from before
    // the restart was answered `recovered: true` and its successors were lost.
    let mut redis = TestRedis::start();
    let (broker, _) = broker(&redis, 100);
    ready(&broker).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(broker.publish(event("w", n)).await.unwrap().id.unwrap());
    }
    assert!(broker.history("w", Some(ids[1]), 10).await.unwrap().recovered);
    redis.restart();
    ready(&broker).await;
    let before_any = broker.history("w", Some(ids[4]), 10).await.unwrap();
    assert!(!before_any.recovered, "no stream at all after the restart");
    tidings_testkit::retry("a publish after the restart", WAIT, || async { broker.publish(event("w", 5)).await.ok() }).await;
    let page = broker.history("w", Some(ids[4]), 10).await.unwrap();
    assert!(!page.recovered, "a new incarnation of the stream: what followed ids[4] is gone");
    assert_eq!(page.events.len(), 1, "what is stored still follows");
    let ahead = broker.history("w", Some(EventId::new(ids[4].ms + 60_000, 0)), 10).await.unwrap();
    assert!(!ahead.recovered, "an id the stream never generated (lost writes)");
}
