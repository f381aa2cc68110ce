//! Fan-out: workspace isolation, filters, batches, recovery with `since`.

use serde_json::{Value, json};

use crate::support::*;

/// Reads events until one of type `marker`; returns the types seen before it.
async fn types_until(c: &mut Client, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = c.next_json().await;
        let t = v["type"].as_str().unwrap().to_string();
        if t == marker {
            return seen;
        }
        seen.push(t);
    }
}

#[tokio::test]
async fn workspace_b_receives_none_of_workspace_a() {
    let gw = TestGateway::start().await;
    let mut a = gw.client("ws-a", "").await;
    let mut b = gw.client("ws-b", "").await;
    let mut a_ids = Vec::new();
    for i in 0..50 {
        a_ids.push(gw.publish("ws-a", "for_a", None, json!({"i": i})).await.id.unwrap().to_string());
    }
    gw.publish("ws-b", "marker", None, json!(null)).await;
    assert_eq!(types_until(&mut b, "marker").await, Vec::<String>::new(), "B saw A's events");
    let mut got = Vec::new();
    for _ in 0..50 {
        let e = a.next_json().await;
        assert_eq!(e["workspace_id"], "ws-a");
        got.push(e["id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, a_ids, "A gets all of its events, in id order");
}

#[tokio::test]
async fn an_event_whose_workspace_disagrees_with_its_channel_is_dropped() {
    let gw = TestGateway::start().await;
    let mut b = gw.client("ws-b", "").await;
    // A misbehaving service publishes A's event on B's channel.
    let forged = json!({"type": "forged", "workspace_id": "ws-a", "data": null}).to_string();
    gw.node.hub.fan_out("ws-b", forged.into());
    gw.publish("ws-b", "marker", None, json!(null)).await;
    assert_eq!(types_until(&mut b, "marker").await, Vec::<String>::new());
}

#[tokio::test]
async fn filters_select_by_type_and_entity() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "&event_types=deploy,marker&entity_refs=component:default/checkout").await;
    gw.publish("acme", "deploy", Some("component:default/checkout"), json!(1)).await;
    gw.publish("acme", "deploy", Some("component:default/other"), json!(2)).await;
    gw.publish("acme", "alert_x", Some("component:default/checkout"), json!(3)).await;
    gw.publish("acme", "deploy", None, json!(4)).await; // no entity_ref: passes the entity dimension
    gw.publish("acme", "marker", None, json!(null)).await;
    let mut datas = Vec::new();
    loop {
        let e = c.next_json().await;
        if e["type"] == "marker" {
            break;
        }
        datas.push(e["data"].clone());
    }
    assert_eq!(datas, [json!(1), json!(4)]);

    // unsubscribe empties the type list: nothing matches any more but the marker we add back.
    c.request(json!({"type": "unsubscribe", "event_types": ["deploy", "marker"]}), "unsubscribed").await;
    gw.publish("acme", "deploy", Some("component:default/checkout"), json!(5)).await;
    c.request(json!({"type": "subscribe", "event_types": ["marker"]}), "subscribed").await;
    gw.publish("acme", "marker", None, json!(null)).await;
    assert_eq!(types_until(&mut c, "marker").await, Vec::<String>::new());

    // update_filter back to all: everything flows again; entity refs compare case-insensitively.
    c.request(json!({"type": "update_filter", "event_types": "*", "entity_refs": ["Component:Default/Checkout"]}), "filter_updated").await;
    gw.publish("acme", "anything", Some("component:default/checkout"), json!(6)).await;
    assert_eq!(c.next_json().await["data"], 6);
}

#[tokio::test]
async fn batch_mode_wraps_events_in_batch_frames() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "&batch=1").await;
    let mut want = Vec::new();
    for i in 0..30 {
        want.push(gw.publish("acme", "t", None, json!(i)).await.id.unwrap().to_string());
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        let frame = c.next_json().await;
        assert_eq!(frame["type"], "batch", "{frame}");
        for e in frame["events"].as_array().unwrap() {
            got.push(e["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, want);
    c.assert_alive().await;
}

#[tokio::test]
async fn since_on_connect_replays_then_goes_live_without_gap_or_duplicate() {
    let gw = TestGateway::start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(gw.publish("acme", "t", None, json!(i)).await.id.unwrap().to_string());
    }
    let mut c = Client::connect(&gw.ws_url(&format!("token={}&since={}", gw.token("acme"), ids[4]))).await.unwrap();
    let hello = c.next_json().await;
    assert_eq!((hello["type"].as_str(), hello["recovered"].as_bool()), (Some("connected"), Some(true)));
    // Publish while the client reads its replay.
    let publisher = {
        let broker = gw.broker.clone();
        tokio::spawn(async move {
            use tidings_broker::Broker;
            let mut live = Vec::new();
            for i in 10..20 {
                let mut e = tidings_protocol::Event::new("t", "acme", json!(i));
                e.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
                live.push(broker.publish(e).await.unwrap().id.unwrap().to_string());
            }
            live
        })
    };
    let live = publisher.await.unwrap();
    let mut got = Vec::new();
    while got.len() < 15 {
        got.push(c.next_json().await["id"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = ids[5..].iter().cloned().chain(live).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn since_beyond_history_reports_not_recovered() {
    let gw = TestGateway::start_with(|c| c.history_size = 3).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(gw.publish("acme", "t", None, json!(i)).await.id.unwrap().to_string());
    }
    let mut c = Client::connect(&gw.ws_url(&format!("token={}&since={}", gw.token("acme"), ids[0]))).await.unwrap();
    let hello = c.next_json().await;
    assert_eq!(hello["recovered"], false);
    let got: Vec<Value> =
        vec![c.next_json().await["data"].clone(), c.next_json().await["data"].clone(), c.next_json().await["data"].clone()];
    assert_eq!(got, [json!(3), json!(4), json!(5)], "what is still stored follows");
}

#[tokio::test]
async fn subscribe_with_since_replays_missed_events_of_the_new_types() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "&event_types=seen").await;
    let first = gw.publish("acme", "seen", None, json!("s1")).await.id.unwrap().to_string();
    assert_eq!(c.next_json().await["data"], "s1");
    gw.publish("acme", "missed", None, json!("m1")).await;
    gw.publish("acme", "seen", None, json!("s2")).await;
    assert_eq!(c.next_json().await["data"], "s2");
    let r = c.request(json!({"type": "subscribe", "event_types": ["missed"], "since": first}), "subscribed").await;
    assert_eq!(r["recovered"], true);
    // m1 was never delivered; s2 was, and is not repeated.
    assert_eq!(c.next_json().await["data"], "m1");
    gw.publish("acme", "missed", None, json!("m2")).await;
    assert_eq!(c.next_json().await["data"], "m2");
}

#[tokio::test]
async fn live_only_events_reach_clients_without_an_id() {
    let gw = TestGateway::start().await;
    let mut c = gw.client("acme", "").await;
    use tidings_broker::Broker;
    gw.broker.publish_live(tidings_protocol::Event::new("log_line", "acme", json!("hello"))).await.unwrap();
    let e = c.next_json().await;
    assert_eq!((e["type"].as_str(), e.get("id")), (Some("log_line"), None));
}

#[tokio::test]
async fn the_workspace_is_unsubscribed_after_the_last_reader_leaves() {
    let gw = TestGateway::start().await;
    let c = gw.client("acme", "").await;
    assert_eq!(gw.node.metrics.subscribed_workspaces.get(), 1);
    drop(c);
    let node = gw.node.clone();
    wait_until(move || node.metrics.subscribed_workspaces.get() == 0).await;
}

#[tokio::test]
async fn a_reader_returning_before_the_delayed_unsubscribe_keeps_one_subscription() {
    let gw = TestGateway::start_with(|c| c.unsubscribe_delay = std::time::Duration::from_millis(300)).await;
    let first = gw.client("acme", "").await;
    drop(first);
    gw.wait_for_connections(0).await;
    // Back before the delayed unsubscribe fires: still one subscription, and it stays.
    let mut again = gw.client("acme", "").await;
    assert_eq!(gw.node.metrics.subscribed_workspaces.get(), 1);
    gw.publish("acme", "still_subscribed", None, json!(null)).await;
    assert_eq!(again.next_json().await["type"], "still_subscribed");
    let other = gw.client("other", "").await;
    let node = gw.node.clone();
    wait_until(move || node.metrics.subscribed_workspaces.get() == 2).await;
    drop(other);
    let node = gw.node.clone();
    wait_until(move || node.metrics.subscribed_workspaces.get() == 1).await;
    gw.publish("acme", "after_other_left", None, json!(null)).await;
    assert_eq!(again.next_json().await["type"], "after_other_left");
}

#[tokio::test]
async fn a_connection_task_that_panics_leaves_the_hub() {
    // Before: unregistering was the last statement of the connection task, so
    // a panic anywhere before it left the connection in the hub for good.
    let gw = TestGateway::start().await;
    let node = gw.node.clone();
    let conn = node.new_connection("acme", "u", None, tidings_gateway::hub::Transport::WebSocket, tidings_protocol::Filter::default());
    let registration = node.register(&conn).await.unwrap();
    assert_eq!(gw.node.hub.count("acme"), 1);
    let task = tokio::spawn(async move {
        let _registration = registration;
        panic!("a bug in the reader");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(gw.node.hub.count("acme"), 0, "the registration's drop took it out");
    let node = gw.node.clone();
    wait_until(move || node.metrics.connections_open.with_label_values(&["websocket"]).get() == 0).await;
}
