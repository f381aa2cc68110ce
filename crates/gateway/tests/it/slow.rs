//! A client that stops reading loses events with `lagged`, then is closed 4009,
//! while a healthy client of the same workspace keeps receiving everything.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_never_reading_client_ends_lagged_and_4009_while_a_healthy_one_gets_everything() {
    const EVENTS: usize = 3000;
    let gw = TestGateway::start_with(|c| c.client_queue_bytes = 64 * 16 * 1024).await;
    let mut healthy = gw.client("acme", "").await;
    let mut slow = gw.client("acme", "").await;
    let payload = "x".repeat(16 * 1024);
    let mut ids = Vec::with_capacity(EVENTS);
    // Paced by the healthy client, so only the slow one can fall behind.
    for i in 0..EVENTS {
        let id = gw.publish("acme", "bulk", None, json!({"i": i, "pad": payload})).await.id.unwrap().to_string();
        let got = healthy.next_json().await;
        assert_eq!(got["id"], id.as_str(), "healthy client, event {i}");
        ids.push(id);
    }
    assert!(gw.node.metrics.events_dropped.with_label_values(&["slow_client"]).get() > 0);

    // Now the slow client reads what reached it: a gap-free prefix, then the
    // lagged notice, then close 4009.
    let (frames, code) = slow.read_until_close().await;
    assert_eq!(code, Some(4009));
    let events: Vec<&str> = frames.iter().filter(|f| f["type"] == "bulk").map(|f| f["id"].as_str().unwrap()).collect();
    assert!(events.len() < EVENTS, "the slow client cannot have everything");
    assert_eq!(events, ids[..events.len()], "what arrived is in order and without holes before the gap");
    let lagged: Vec<_> = frames.iter().filter(|f| f["type"] == "lagged").collect();
    assert!(!lagged.is_empty() && lagged.iter().all(|l| l["dropped"].as_u64().unwrap() > 0), "{lagged:?}");
    healthy.assert_alive().await;
}

#[tokio::test]
async fn conflation_keeps_the_newest_metrics_for_a_client_that_fell_behind() {
    let gw = TestGateway::start_with(|c| c.client_queue_bytes = 4 * 256).await;
    let mut c = gw.client("acme", "").await;
    // Hold the connection's writer by filling the queue while no frame is read:
    // the queue is drained only by the writer, which we race here, so use the
    // outbox directly to make the scenario deterministic.
    let conn = gw.node.hub.all().pop().unwrap();
    conn.outbox.hold();
    for cpu in 0..20 {
        gw.publish("acme", "metrics_update", Some("host:default/a"), json!({"metrics": {"cpu": f64::from(cpu), "memory": 1.0}})).await;
    }
    conn.outbox.release_without_replay();
    let mut cpus = Vec::new();
    while cpus.last() != Some(&19.0) {
        cpus.push(c.next_json().await["data"]["metrics"]["cpu"].as_f64().unwrap());
    }
    assert!(cpus.len() < 20, "older queued metrics were replaced: {cpus:?}");
    assert!(cpus.windows(2).all(|w| w[0] < w[1]), "in order, newest last: {cpus:?}");
    assert!(gw.node.metrics.events_conflated.with_label_values(&["slow_client"]).get() > 0);
}
