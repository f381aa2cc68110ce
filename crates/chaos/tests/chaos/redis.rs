//! Redis faults (scenario 3): a restart with its data kept (AOF), ten seconds
//! unreachable (SIGSTOP/SIGCONT), and a restart without its data. Gateways
//! and publisher report not-ready meanwhile and recover; clients see every
//! event, or, when the data is gone, are told they cannot recover.

use std::time::Duration;

use tidings_chaos::{Publishing, Recorder, Stack, WAIT, assert_exactly, client, flowing, stream_ids};
use tidings_testkit::{TestRedis, eventually, http_status, signal};

const CLIENTS: usize = 4;

async fn recorders(stack: &Stack, workspace: &str) -> Vec<Recorder> {
    let mut recorders = Vec::new();
    for _ in 0..CLIENTS {
        recorders.push(Recorder::start(client(&stack.lb_ws(), workspace)).await);
    }
    recorders
}

/// Waits until `/readyz` of the gateways and the publisher answers `status`.
async fn readiness(stack: &Stack, status: u16) {
    let urls = [stack.gateway_url(0), stack.gateway_url(1), stack.publisher_url()];
    eventually(&format!("readyz {status} everywhere"), WAIT, || urls.iter().all(|u| http_status(&format!("{u}/readyz")) == Some(status)))
        .await;
}

async fn every_client_saw_the_stream(stack: &Stack, recorders: Vec<Recorder>, workspace: &str, scenario: &str) {
    let published = stream_ids(&stack.redis, workspace);
    for (i, recorder) in recorders.into_iter().enumerate() {
        recorder.wait_for_all(&published).await;
        let seen = recorder.close().await;
        assert_exactly(&seen, &published, &format!("{scenario} client {i}"));
        assert_eq!(seen.reloads, 0);
    }
    eprintln!("{scenario}: {} events, {CLIENTS} clients, 0 lost, 0 duplicates", published.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3a_redis_restarted_with_its_data_costs_nothing() {
    let _quiet = tidings_chaos::shared().await;
    let redis = TestRedis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut stack = Stack::start(redis);
    let recorders = recorders(&stack, "s3a").await;
    let publishing = Publishing::start(&stack.redis.url(), "s3a", Duration::from_millis(5));
    flowing(&recorders, 50).await;
    stack.redis.kill();
    readiness(&stack, 503).await;
    stack.redis.restart();
    readiness(&stack, 200).await;
    flowing(&recorders, 50).await;
    publishing.stop().await;
    every_client_saw_the_stream(&stack, recorders, "s3a", "s3a Redis restart (AOF)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3b_redis_unreachable_for_ten_seconds_costs_nothing() {
    let _quiet = tidings_chaos::shared().await;
    let stack = Stack::start(TestRedis::start());
    let recorders = recorders(&stack, "s3b").await;
    let publishing = Publishing::start(&stack.redis.url(), "s3b", Duration::from_millis(5));
    flowing(&recorders, 50).await;
    let pid = stack.redis.pid().unwrap();
    signal(pid, "STOP");
    let stopped = std::time::Instant::now();
    readiness(&stack, 503).await;
    eprintln!("s3b: not ready {:?} after SIGSTOP", stopped.elapsed());
    // The fault itself lasts ten seconds; this is its length, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    signal(pid, "CONT");
    readiness(&stack, 200).await;
    flowing(&recorders, 50).await;
    publishing.stop().await;
    every_client_saw_the_stream(&stack, recorders, "s3b", "s3b Redis stopped 10 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3c_redis_restarted_empty_tells_clients_they_cannot_recover_then_delivers_again() {
    let _quiet = tidings_chaos::shared().await;
    let mut stack = Stack::start(TestRedis::start());
    let recorders = recorders(&stack, "s3c").await;
    let publishing = Publishing::start(&stack.redis.url(), "s3c", Duration::from_millis(5));
    flowing(&recorders, 50).await;
    stack.redis.restart_empty();
    eventually("every client told to reload", WAIT, || recorders.iter().all(|r| r.seen().reloads >= 1)).await;
    readiness(&stack, 200).await;
    flowing(&recorders, 50).await;
    publishing.stop().await;
    // What the new, empty Redis holds is what a client can still be promised.
    let published = stream_ids(&stack.redis, "s3c");
    assert!(!published.is_empty());
    for (i, recorder) in recorders.into_iter().enumerate() {
        let seen = recorder.wait_for_all(&published).await;
        recorder.close().await;
        assert!(seen.ids.windows(2).all(|w| w[0] < w[1]), "client {i}: in order, once each");
        assert!(seen.reloads >= 1, "client {i} was told");
    }
    eprintln!("s3c: {CLIENTS} clients told recovered:false, then {} events delivered", published.len());
}
