//! Live-only publishing for a minute with bare `PUBLISH` and no fault
//! (scenario 8): every connected client gets every event, and each gateway
//! keeps one pub/sub connection throughout (a re-opened one loses live events).

use std::time::{Duration, Instant};

use tidings_chaos::{Publishing, Recorder, Stack, WAIT, client};
use tidings_testkit::{TestRedis, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_a_minute_of_live_events_loses_none_on_one_pubsub_connection_per_gateway() {
    let _quiet = tidings_chaos::shared().await;
    const CLIENTS: usize = 4;
    const MINUTE: Duration = Duration::from_secs(60);
    let stack = Stack::start(TestRedis::start());
    let mut recorders = Vec::new();
    for _ in 0..CLIENTS {
        recorders.push(Recorder::start(client(&stack.lb_ws(), "s8")).await);
    }
    // Each gateway subscribes on its first reader; wait for both before counting.
    let channel = tidings_protocol::keys::WorkspaceKeys::new("s8", false).channel;
    eventually("both gateways subscribed", WAIT, || stack.redis.cli(&["PUBSUB", "NUMSUB", &channel]).lines().nth(1) == Some("2")).await;
    // The connection ids Redis gives its pub/sub clients: a re-opened connection has a new one.
    let pubsub_ids = || -> Vec<String> {
        let list = stack.redis.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
        let mut ids: Vec<String> =
            list.lines().filter_map(|l| l.split_whitespace().next().filter(|f| f.starts_with("id=")).map(String::from)).collect();
        ids.sort();
        ids
    };
    let publishing = Publishing::live(&stack.redis.url(), "s8", Duration::from_millis(5));
    // Two gateways, the publisher process and this test's publisher (both
    // follow the revocations channel).
    eventually("four pub/sub connections", WAIT, || pubsub_ids().len() == 4).await;
    let ids_at_start = pubsub_ids();
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < MINUTE {
        // A sample a second; the minute is the scenario's length.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(pubsub_ids(), ids_at_start, "the same pub/sub connections all minute");
        samples += 1;
    }
    let sent = publishing.stop().await;
    for (i, recorder) in recorders.into_iter().enumerate() {
        eventually(&format!("client {i} has every live event"), WAIT, || recorder.seen().live.len() as u64 >= sent).await;
        let seen = recorder.close().await;
        let want: Vec<u64> = (0..sent).collect();
        assert_eq!(seen.live, want, "client {i}: every live event once, in order");
        assert!(seen.outages.is_empty(), "client {i} stayed connected");
    }
    let warnings = stack.warnings();
    assert!(warnings.is_empty(), "nothing to warn about: {warnings:#?}");
    eprintln!("s8: {sent} live events × {CLIENTS} clients over {MINUTE:?}, 0 lost; pub/sub connections unchanged over {samples} samples");
}
