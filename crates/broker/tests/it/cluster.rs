//! The Redis broker on a real Redis Cluster (3 masters, 1 replica each):
//! hash-tagged keys, sharded pub/sub spread over the masters, a failover and a
//! slot move survived without losing or repeating an event.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tidings_broker::{Broker, DeliveryStore, MessageHandler, RedisBroker, RedisConfig};
use tidings_protocol::Event;
use tidings_testkit::TestCluster;

const WAIT: Duration = Duration::from_secs(30);

/// Stands in for the hub: what it was sent, and the workspaces it reads.
#[derive(Default)]
struct Collect(Mutex<Vec<(String, Value)>>, Mutex<Vec<String>>);

impl MessageHandler for Collect {
    fn on_message(&self, workspace_id: &str, payload: Bytes) {
        self.0.lock().unwrap().push((workspace_id.to_string(), serde_json::from_slice(&payload).unwrap()));
    }
    fn workspaces(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }
}

impl Collect {
    async fn follow(&self, broker: &RedisBroker, ws: &str) {
        self.1.lock().unwrap().push(ws.to_string());
        broker.subscribe(ws).await.unwrap();
    }

    fn ids(&self, ws: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|(w, _)| w == ws).map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect()
    }
}

async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    tidings_testkit::eventually(what, WAIT, cond).await;
}

fn event(ws: &str, n: u64) -> Event {
    let mut e = Event::new("t", ws, json!({ "n": n }));
    e.timestamp = Some("2026-11-24T12:00:00.000Z".into());
    e
}

async fn connect(cluster: &TestCluster) -> (RedisBroker, Arc<Collect>) {
    let seen = Arc::new(Collect::default());
    let broker = RedisBroker::connect(RedisConfig::new(cluster.urls(), 1000).with_cluster(true), seen.clone()).unwrap();
    tidings_testkit::retry("the cluster broker to be ready", WAIT, || async { broker.is_ready().await.then_some(()) }).await;
    (broker, seen)
}

/// Publishes through the broker, retrying while the cluster moves a slot
/// (a publish either stores and returns an id, or fails and stores nothing).
async fn publish_retrying(broker: &RedisBroker, ws: &str, n: u64) -> String {
    tidings_testkit::retry("a publish to succeed", WAIT, || async {
        broker.publish(event(ws, n)).await.ok().map(|e| e.id.unwrap().to_string())
    })
    .await
}

#[tokio::test]
async fn workspaces_spread_over_masters_with_hash_tagged_keys() {
    let cluster = TestCluster::start(3, 1);
    let (broker, seen) = connect(&cluster).await;
    let workspaces: Vec<String> = (0..12).map(|i| format!("team-{i}")).collect();
    let masters: BTreeSet<u16> = workspaces.iter().map(|w| cluster.master_of(cluster.keyslot(&format!("workspace:{{{w}}}")))).collect();
    assert!(masters.len() >= 2, "12 workspaces land on more than one master");
    for w in &workspaces {
        seen.follow(&broker, w).await;
    }
    let mut want = std::collections::HashMap::new();
    for n in 0..5 {
        for w in &workspaces {
            want.entry(w.clone()).or_insert_with(Vec::new).push(publish_retrying(&broker, w, n).await);
        }
    }
    for w in &workspaces {
        wait_until(&format!("events of {w}"), || seen.ids(w).len() == 5).await;
        assert_eq!(seen.ids(w), want[w], "{w}: in order, once");
    }
    assert_eq!(cluster.cli(&["EXISTS", "workspace:{team-0}:events"]), "1", "hash-tagged stream");
    let history = broker.history("team-0", None, 10).await.unwrap();
    assert_eq!(history.events.len(), 5);

    // A webhook delivery: the claim carries the workspace's hash tag, so one
    // script claims and publishes in the workspace's slot.
    let claim = tidings_broker::DeliveryClaim { source: "github".into(), delivery: "d-1".into() };
    let published = broker.publish_once(&claim, vec![event("team-1", 10), event("team-1", 11)]).await.unwrap();
    let tidings_broker::PublishedOnce::Published(stored) = published else { panic!("a new delivery is published") };
    let ids: Vec<String> = stored.iter().map(|e| e.id.unwrap().to_string()).collect();
    wait_until("the delivery's events", || seen.ids("team-1").ends_with(&ids)).await;
    assert_eq!(broker.publish_once(&claim, vec![event("team-1", 10)]).await.unwrap(), tidings_broker::PublishedOnce::Duplicate);
    assert_eq!(cluster.cli(&["EXISTS", "tidings:dedup:{team-1}:github:d-1"]), "1");
}

#[tokio::test]
async fn a_master_failover_and_a_slot_move_lose_nothing() {
    let cluster = TestCluster::start(3, 1);
    let (broker, seen) = connect(&cluster).await;
    let ws = "acme";
    let slot = cluster.keyslot("workspace:{acme}");
    seen.follow(&broker, ws).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(publish_retrying(&broker, ws, n).await);
    }
    wait_until("the first ten", || seen.ids(ws).len() == 10).await;

    let new_master = cluster.failover(cluster.master_of(slot));
    for n in 10..20 {
        ids.push(publish_retrying(&broker, ws, n).await);
    }
    wait_until("events after the failover", || seen.ids(ws).len() >= 20).await;
    assert_eq!(seen.ids(ws), ids, "failover: every event once, in order");

    let target = cluster.master_ports().into_iter().find(|p| *p != new_master).unwrap();
    cluster.move_slot(slot, target);
    for n in 20..30 {
        ids.push(publish_retrying(&broker, ws, n).await);
    }
    wait_until("events after the slot move", || seen.ids(ws).len() >= 30).await;
    assert_eq!(seen.ids(ws), ids, "slot move: every event once, in order");
}
