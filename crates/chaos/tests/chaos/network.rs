//! Network faults between the gateways and Redis (scenario 9), through a TCP
//! proxy in the test: a stall (nothing moves, sockets stay open), a cut (FIN)
//! and a reset (RST). Each gateway notices within its probe period,
//! reconnects, and replays what was published meanwhile (straight to Redis).
//! Then connections stranded for good: every process must replace them.

use std::time::{Duration, Instant};

use tidings_chaos::proxy::{Cut, Mode, TcpProxy};
use tidings_chaos::{Publishing, Recorder, Stack, WAIT, assert_exactly, client, flowing, stream_ids};
use tidings_testkit::{TestRedis, eventually, http_status};

/// `tidings_broker_connected` of a gateway (None while it does not answer).
async fn broker_connected(base: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("tidings_broker_connected ")?.trim().parse().ok())
}

async fn both(stack: &Stack, value: f64, what: &str) -> Duration {
    let started = Instant::now();
    tidings_testkit::retry(what, WAIT, || async {
        let (a, b) = (broker_connected(&stack.gateway_url(0)).await, broker_connected(&stack.gateway_url(1)).await);
        (a == Some(value) && b == Some(value)).then_some(())
    })
    .await;
    started.elapsed()
}

const CLIENTS: usize = 4;

/// A stack dialling Redis through a proxy, clients on it, events flowing.
struct Proxied {
    proxy: TcpProxy,
    stack: Stack,
    recorders: Vec<Recorder>,
    publishing: Publishing,
    workspace: &'static str,
}

impl Proxied {
    async fn start(workspace: &'static str) -> Self {
        let redis = TestRedis::start();
        let proxy = TcpProxy::start(redis.port).await;
        let stack = Stack::start_via(redis, proxy.url());
        let mut recorders = Vec::new();
        for _ in 0..CLIENTS {
            recorders.push(Recorder::start(client(&stack.lb_ws(), workspace)).await);
        }
        both(&stack, 1.0, "pub/sub up").await;
        // Straight to Redis, not through the proxy: the record of what was published.
        let publishing = Publishing::start(&stack.redis.url(), workspace, Duration::from_millis(5));
        flowing(&recorders, 50).await;
        Self { proxy, stack, recorders, publishing, workspace }
    }

    /// Stops publishing; every client saw exactly the stream. Returns what each saw.
    async fn settle(self) -> (Stack, usize, Vec<tidings_chaos::Seen>) {
        self.publishing.stop().await;
        let published = stream_ids(&self.stack.redis, self.workspace);
        let mut seen_by = Vec::new();
        for (i, recorder) in self.recorders.into_iter().enumerate() {
            recorder.wait_for_all(&published).await;
            let seen = recorder.close().await;
            assert_exactly(&seen, &published, &format!("client {i}"));
            seen_by.push(seen);
        }
        (self.stack, published.len(), seen_by)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_stalls_cuts_and_resets_between_gateway_and_redis_are_noticed_and_repaired() {
    let _quiet = tidings_chaos::shared().await;
    let run = Proxied::start("s9").await;
    let (proxy, stack, recorders) = (&run.proxy, &run.stack, &run.recorders);

    proxy.set(Mode::Stall);
    let noticed = both(stack, 0.0, "the stall noticed").await;
    eprintln!("s9: stall noticed after {noticed:?}");
    // The probe pings every 5 s and gives a ping 3 s; a loaded machine may add a little.
    assert!(noticed < Duration::from_secs(12), "a stalled connection is noticed within the probe period: {noticed:?}");
    proxy.set(Mode::Forward);
    let back = both(stack, 1.0, "reconnected after the stall").await;
    eprintln!("s9: reconnected {back:?} after the stall ended");
    flowing(recorders, 50).await;

    for how in [Cut::Close, Cut::Reset] {
        let accepted = proxy.accepted();
        proxy.cut(how);
        eventually("the gateways dialled again", WAIT, || proxy.accepted() >= accepted + 2).await;
        both(stack, 1.0, "reconnected after the cut").await;
        flowing(recorders, 50).await;
    }
    let (stack, published, seen_by) = run.settle().await;
    for (i, seen) in seen_by.iter().enumerate() {
        assert!(
            seen.outages.is_empty(),
            "client {i}: the gateway kept its clients through the Redis faults: {:?}\n{:#?}",
            seen.states,
            stack.warnings()
        );
    }
    eprintln!("s9: {published} events, {CLIENTS} clients, 0 lost, 0 duplicates across a stall, a cut and a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9b_connections_to_redis_that_go_silent_for_good_are_replaced_by_every_process() {
    // Before: the command side's readiness PING gave up after 1 s without
    // replacing the connection, so a process whose command connection was
    // stranded (and that sent nothing else on it) stayed not-ready for good.
    let _quiet = tidings_chaos::shared().await;
    let run = Proxied::start("s9b").await;
    let (proxy, stack, recorders) = (&run.proxy, &run.stack, &run.recorders);

    let stranded_at = Instant::now();
    proxy.strand();
    let ready = [stack.gateway_url(0), stack.gateway_url(1), stack.publisher_url()].map(|base| format!("{base}/readyz"));
    // Asked until each was not ready once and all are ready again: an idle
    // process's readiness probe is what finds its dead command connection.
    let mut went_down = [false; 3];
    eventually("every process not ready once, then all ready again", WAIT, || {
        let statuses = ready.each_ref().map(|url| http_status(url));
        for (down, status) in went_down.iter_mut().zip(&statuses) {
            *down |= *status == Some(503);
        }
        went_down.iter().all(|d| *d) && statuses.iter().all(|s| *s == Some(200))
    })
    .await;
    eprintln!("s9b: every process ready again {:?} after its connections were stranded", stranded_at.elapsed());
    flowing(recorders, 50).await;
    let (_, published, _) = run.settle().await;
    eprintln!("s9b: {published} events, {CLIENTS} clients, 0 lost, 0 duplicates across stranded connections");
}
