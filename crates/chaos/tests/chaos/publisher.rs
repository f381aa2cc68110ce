//! A publisher restarted while webhooks are sent and retried (scenario 7):
//! each delivery is published exactly once, however often it is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tidings_chaos::{ARGOCD_TOKEN, Recorder, Stack, WAIT, assert_exactly, client, stream_ids};
use tidings_testkit::{TestRedis, eventually};

const DELIVERIES: usize = 60;

/// Argo CD delivery `i`: the fixture with its own revision (Argo CD sends no
/// delivery id; the publisher de-duplicates by the hash of the body).
fn delivery(i: usize) -> Vec<u8> {
    let fixture = include_str!("../../../publisher/tests/fixtures/argocd/webhook.on-deployed.json");
    let mut body: Value = serde_json::from_str(fixture).unwrap();
    body["revision"] = Value::String(format!("{i:040x}"));
    serde_json::to_vec(&body).unwrap()
}

/// Sends until the publisher answers 2xx, as a webhook sender retries; returns the answer.
async fn send_until_answered(http: &reqwest::Client, url: &str, body: &[u8]) -> (u16, Value) {
    let until = std::time::Instant::now() + WAIT;
    loop {
        let sent = http.post(url).bearer_auth(ARGOCD_TOKEN).header("content-type", "application/json").body(body.to_vec()).send().await;
        if let Ok(answer) = sent {
            let status = answer.status().as_u16();
            if (200..300).contains(&status) {
                return (status, answer.json().await.unwrap_or(Value::Null));
            }
        }
        assert!(std::time::Instant::now() < until, "delivery never answered 2xx");
        // A sender's retry interval (the scenario is the retries), not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_webhooks_retried_across_a_publisher_restart_are_published_exactly_once() {
    let _quiet = tidings_chaos::shared().await;
    let mut stack = Stack::start(TestRedis::start());
    let recorder = Recorder::start(client(&stack.lb_ws(), "s7")).await;
    // Through nginx, as a real sender reaches it: 502 while the publisher is down.
    let url = format!("http://127.0.0.1:{}/webhooks/argocd?workspace_id=s7", stack.lb_port());
    let answered = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (url, answered) = (url.clone(), answered.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = Vec::new();
            for i in 0..DELIVERIES {
                answers.push(send_until_answered(&http, &url, &delivery(i)).await);
                answered.fetch_add(1, Ordering::Relaxed);
            }
            answers
        })
    };
    eventually("a third of the deliveries answered", WAIT, || answered.load(Ordering::Relaxed) >= DELIVERIES / 3).await;
    stack.kill_publisher();
    stack.start_publisher();
    let answers = sender.await.unwrap();

    // Every delivery once more, as a sender whose answer was lost would.
    let http = reqwest::Client::new();
    for i in 0..DELIVERIES {
        let (status, body) = send_until_answered(&http, &url, &delivery(i)).await;
        assert_eq!((status, &body["duplicate"]), (200, &Value::Bool(true)), "delivery {i} again: a duplicate, nothing published");
    }
    let per_delivery = answers.iter().find(|(s, _)| *s == 202).and_then(|(_, b)| b["published"].as_u64()).unwrap() as usize;
    let published = stream_ids(&stack.redis, "s7");
    assert_eq!(
        published.len(),
        DELIVERIES * per_delivery,
        "each of {DELIVERIES} deliveries published exactly once ({per_delivery} events each)"
    );
    let seen = recorder.wait_for_all(&published).await;
    assert_exactly(&seen, &published, "the reader");
    let duplicates = answers.iter().filter(|(s, _)| *s == 200).count();
    eprintln!(
        "s7: {DELIVERIES} deliveries over a publisher restart, {} events, {duplicates} first answers were duplicates (published before the restart cut the answer), 0 published twice",
        published.len()
    );
    recorder.close().await;
}
