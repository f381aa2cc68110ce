//! The fault-injection harness behind `tests/chaos`: a stack of real
//! processes (Redis, two gateways behind nginx with the project's config, a
//! publisher), durable publishing that survives the faults, clients of
//! `tidings-client` recording what the application sees and when they were
//! connected, a TCP proxy that stalls, cuts and resets, and the checks every
//! scenario makes (zero loss after de-duplication by id, order, recovery time).

// Test support: a panic is the failure report.
#![allow(clippy::unwrap_used)]

pub mod proxy;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_broker::{Broker, PublishOnly, RedisBroker, RedisConfig};
use tidings_client::{Backoff, Client, ClientConfig, ClientEvent, ConnectionState, static_token};
use tidings_protocol::{Event, EventId};
use tidings_testkit::{Nginx, ServerProcess, TestRedis, free_port, signal};
use tidings_token::Claims;
use tokio::task::JoinHandle;

pub const SECRET: &str = "chaos-secret";
pub const PUBLISH_TOKEN: &str = "chaos-publish-token";
pub const ARGOCD_TOKEN: &str = "chaos-argocd-token";
/// The drain the gateways get: short, so a rolling restart fits a test.
pub const DRAIN: Duration = Duration::from_secs(2);
pub const WAIT: Duration = Duration::from_secs(30);

/// Scenarios run two at a time; one that measures latency runs alone
/// ([`alone`]), the others share ([`shared`]), so its figure is its own.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held for a scenario's length: it may run beside others.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().await
}

/// Held for a scenario's length: nothing else runs meanwhile.
pub async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    QUIET.write().await
}

/// A token for `workspace`.
pub fn token(workspace: &str) -> String {
    token_as(workspace, &format!("chaos-{workspace}"))
}

/// A token for `workspace` naming user `sub` (each user has a connection cap per gateway).
pub fn token_as(workspace: &str, sub: &str) -> String {
    Claims::for_workspace(workspace, sub, Duration::from_secs(3600)).sign_hs256(SECRET).unwrap()
}

/// Redis, two gateways on fixed ports (so a restarted one is where nginx
/// looks), nginx in front of them, and a publisher.
pub struct Stack {
    pub redis: TestRedis,
    /// What the gateways and the publisher dial: Redis, or a proxy in front of it.
    redis_url: String,
    gateways: Vec<Option<ServerProcess>>,
    pub gateway_ports: [u16; 2],
    publisher: Option<ServerProcess>,
    publisher_port: u16,
    /// Started once its upstreams answer, so its first health check passes.
    nginx: Option<Nginx>,
    logs: tempfile::TempDir,
    generation: usize,
}

impl Stack {
    pub fn start(redis: TestRedis) -> Self {
        let url = redis.url();
        Self::start_via(redis, url)
    }

    /// The same, with the processes dialling `redis_url` (e.g. a [`proxy::TcpProxy`]).
    pub fn start_via(redis: TestRedis, redis_url: String) -> Self {
        let gateway_ports = [free_port(), free_port()];
        let publisher_port = free_port();
        let mut logs = tempfile::tempdir().unwrap();
        if std::env::var_os("TIDINGS_CHAOS_KEEP_LOGS").is_some() {
            logs.disable_cleanup(true);
            eprintln!("chaos: the processes' logs stay in {}", logs.path().display());
        }
        let mut stack = Self {
            redis,
            redis_url,
            gateways: vec![None, None],
            gateway_ports,
            publisher: None,
            publisher_port,
            nginx: None,
            logs,
            generation: 0,
        };
        stack.start_gateway(0);
        stack.start_gateway(1);
        stack.start_publisher();
        let nginx_log = std::env::var_os("TIDINGS_CHAOS_KEEP_LOGS").map(|_| stack.logs.path().join("nginx.log"));
        stack.nginx = Some(Nginx::start_logging(&gateway_ports, publisher_port, nginx_log.as_deref()));
        stack
    }

    /// The load balancer's port.
    pub fn lb_port(&self) -> u16 {
        self.nginx.as_ref().map_or(0, |n| n.port)
    }

    fn env(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("TIDINGS_REDIS_URL", self.redis_url.clone()),
            ("TIDINGS_JWT_SECRET", SECRET.to_string()),
            ("TIDINGS_PUBLISH_TOKEN", PUBLISH_TOKEN.to_string()),
            ("TIDINGS_ARGOCD_WEBHOOK_TOKEN", ARGOCD_TOKEN.to_string()),
            ("TIDINGS_DRAIN_SECS", DRAIN.as_secs().to_string()),
            ("TIDINGS_INSTANCE_ID", name.to_string()),
            // TIDINGS_CHAOS_LOG=debug shows each connection's close reason.
            ("RUST_LOG", std::env::var("TIDINGS_CHAOS_LOG").unwrap_or_else(|_| "info".to_string())),
        ]
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.generation += 1;
        self.logs.path().join(format!("{name}-{}.log", self.generation))
    }

    /// Starts gateway `i` (`gw-0`, `gw-1`) on its port and waits until it is ready.
    pub fn start_gateway(&mut self, i: usize) {
        let name = format!("gw-{i}");
        let log = self.log(&name);
        let process = ServerProcess::start_on("tidings-gateway", self.gateway_ports[i], &self.env(&name), Some(&log));
        self.gateways[i] = Some(process);
    }

    pub fn start_publisher(&mut self) {
        let log = self.log("publisher");
        let process = ServerProcess::start_on("tidings-publisher", self.publisher_port, &self.env("publisher"), Some(&log));
        self.publisher = Some(process);
    }

    /// SIGKILL, as an OOM kill or a node loss would.
    pub fn kill_gateway(&mut self, i: usize) {
        if let Some(mut gateway) = self.gateways[i].take() {
            gateway.kill();
        }
    }

    /// SIGTERM, then waits for the drain to finish and the process to exit 0.
    pub fn drain_gateway(&mut self, i: usize) {
        let Some(mut gateway) = self.gateways[i].take() else { return };
        signal(gateway.child.id(), "TERM");
        let until = Instant::now() + DRAIN + WAIT;
        loop {
            if let Some(status) = gateway.child.try_wait().unwrap() {
                assert!(status.success(), "a drained gateway exits 0: {status}");
                return;
            }
            assert!(Instant::now() < until, "gateway {i} did not exit after its drain");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_publisher(&mut self) {
        if let Some(mut publisher) = self.publisher.take() {
            publisher.kill();
        }
    }

    /// The process id of gateway `i`, while it runs.
    pub fn gateway_pid(&self, i: usize) -> Option<u32> {
        self.gateways[i].as_ref().map(|g| g.child.id())
    }

    pub fn gateway_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.gateway_ports[i])
    }

    /// Gateway `i` directly, bypassing the load balancer.
    pub fn gateway_ws(&self, i: usize) -> String {
        format!("ws://127.0.0.1:{}", self.gateway_ports[i])
    }

    pub fn publisher_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.publisher_port)
    }

    /// The load balancer, as clients dial it.
    pub fn lb_ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.lb_port())
    }

    /// Every WARN or ERROR line the processes logged, with the log it came from.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let name = entry.file_name().to_string_lossy().to_string();
            lines.extend(text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).map(|l| format!("{name}: {l}")));
        }
        lines
    }
}

/// A client through the load balancer with a quick backoff (tests wait on it).
pub fn client(url: &str, workspace: &str) -> Client {
    let config = ClientConfig {
        backoff: Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(1), max_attempts: None },
        ..ClientConfig::new(url, workspace)
    };
    // A user each, as browsers are: one user is capped per gateway.
    static USERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let user = USERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Client::connect(config, static_token(token_as(workspace, &format!("chaos-user-{user}"))))
}

/// What one client's application saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub ids: Vec<EventId>,
    pub reloads: usize,
    pub lagged: u64,
    /// When the client left `Connected`, and when it was back (`None`: not yet).
    pub outages: Vec<(Instant, Option<Instant>)>,
    /// The `server` of every `connected`, in order.
    pub servers: Vec<String>,
    /// `data.n` of every live-only event (they have no id), in arrival order.
    pub live: Vec<u64>,
    /// From each event's `timestamp` to its arrival here.
    pub latencies: Vec<Duration>,
    /// Every connection state the client went through, for failure reports.
    pub states: Vec<String>,
}

impl Seen {
    /// The longest time this client was not connected.
    pub fn longest_outage(&self) -> Duration {
        self.outages.iter().map(|(from, to)| to.unwrap_or_else(Instant::now).duration_since(*from)).max().unwrap_or_default()
    }
}

/// A client whose events and connection states are recorded in the background.
pub struct Recorder {
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
    reader: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

impl Recorder {
    /// Waits until the client is connected, then records.
    pub async fn start(client: Client) -> Self {
        let mut states = client.states();
        tokio::time::timeout(WAIT, states.wait_for(|s| matches!(s, ConnectionState::Connected { .. })))
            .await
            .expect("connected in time")
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        if let ConnectionState::Connected { server, .. } = &*states.borrow() {
            seen.lock().unwrap().servers.push(server.clone());
        }
        let watcher = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut connected = true;
                while states.changed().await.is_ok() {
                    let state = states.borrow_and_update().clone();
                    let mut seen = seen.lock().unwrap();
                    seen.states.push(format!("{state:?}"));
                    match state {
                        ConnectionState::Connected { server, .. } => {
                            if !connected && let Some(last) = seen.outages.last_mut() {
                                last.1 = Some(Instant::now());
                            }
                            connected = true;
                            seen.servers.push(server);
                        }
                        _ if connected => {
                            connected = false;
                            seen.outages.push((Instant::now(), None));
                        }
                        _ => {}
                    }
                }
            })
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let reader = {
            let (seen, stop) = (seen.clone(), stop.clone());
            let mut client = client;
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        next = client.next() => next,
                        () = stop.cancelled() => {
                            client.close();
                            return;
                        }
                    };
                    let Some(event) = next else { return };
                    let mut seen = seen.lock().unwrap();
                    match event {
                        ClientEvent::Event(e) => {
                            if let Some(latency) = e.timestamp.as_deref().and_then(age) {
                                seen.latencies.push(latency);
                            }
                            match e.id {
                                Some(id) => seen.ids.push(id),
                                None => seen.live.extend(e.data["n"].as_u64()),
                            }
                        }
                        ClientEvent::Reload => seen.reloads += 1,
                        ClientEvent::Lagged(n) => seen.lagged += n,
                        ClientEvent::Reply(_) => {}
                    }
                }
            })
        };
        Self { seen, stop, reader, watcher }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().ids.len()
    }

    /// Waits until the client has seen every id in `ids` (and returns what it saw).
    pub async fn wait_for_all(&self, ids: &[EventId]) -> Seen {
        let want: std::collections::BTreeSet<EventId> = ids.iter().copied().collect();
        let until = Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            let got: std::collections::BTreeSet<EventId> = seen.ids.iter().copied().collect();
            if want.is_subset(&got) {
                return seen;
            }
            assert!(Instant::now() < until, "timed out: {} of {} events seen", seen.ids.len(), want.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn close(self) -> Seen {
        // The watcher first: the client's own `Stopped(Closed)` is no outage.
        self.watcher.abort();
        let _ = self.watcher.await;
        self.stop.cancel();
        let _ = self.reader.await;
        self.seen.lock().unwrap().clone()
    }
}

/// Waits until every recorder has seen `n` more events than it has now.
pub async fn flowing(recorders: &[Recorder], n: usize) {
    let base: Vec<usize> = recorders.iter().map(Recorder::count).collect();
    tidings_testkit::eventually("events flowing to every client", WAIT, || recorders.iter().zip(&base).all(|(r, b)| r.count() >= b + n))
        .await;
}

/// How long ago an RFC 3339 timestamp was.
fn age(timestamp: &str) -> Option<Duration> {
    let at = tidings_protocol::timestamp::parse_rfc3339(timestamp)?;
    let nanos = u64::try_from(at.unix_timestamp_nanos()).ok()?;
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH + Duration::from_nanos(nanos)).ok()
}

/// Durable events published at a steady rate straight to Redis (the SPEC §4
/// script), retried through outages, as any service would.
pub struct Publishing {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<u64>,
}

impl Publishing {
    pub fn start(redis_url: &str, workspace: &str, every: Duration) -> Self {
        Self::spawn(redis_url, workspace, every, true, 0)
    }

    /// Durable events on a Redis Cluster (`seeds`: comma-separated node URLs).
    pub fn on_cluster(seeds: &str, workspace: &str, every: Duration) -> Self {
        let config = RedisConfig::new(seeds.to_string(), 100_000).with_cluster(true);
        Self::spawn_on(config, workspace, every, true, 0)
    }

    /// Durable events with `pad` bytes of filler in their data.
    pub fn padded(redis_url: &str, workspace: &str, every: Duration, pad: usize) -> Self {
        Self::spawn(redis_url, workspace, every, true, pad)
    }

    /// Live-only events (a bare `PUBLISH`, nothing stored), `data.n` counting up.
    pub fn live(redis_url: &str, workspace: &str, every: Duration) -> Self {
        Self::spawn(redis_url, workspace, every, false, 0)
    }

    fn spawn(redis_url: &str, workspace: &str, every: Duration, durable: bool, pad: usize) -> Self {
        Self::spawn_on(RedisConfig::new(redis_url.to_string(), 100_000), workspace, every, durable, pad)
    }

    fn spawn_on(config: RedisConfig, workspace: &str, every: Duration, durable: bool, pad: usize) -> Self {
        let broker = RedisBroker::connect(config, Arc::new(PublishOnly)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workspace = workspace.to_string();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(every);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                pace.tick().await;
                let data = if pad > 0 { serde_json::json!({ "n": n, "pad": "x".repeat(pad) }) } else { serde_json::json!({ "n": n }) };
                let mut event = Event::new("tick", workspace.clone(), data);
                event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
                // Unavailable: try again; the stream is the record of what was published.
                let published = if durable { broker.publish(event).await.map(drop) } else { broker.publish_live(event).await };
                if published.is_ok() {
                    n += 1;
                }
            }
            n
        });
        Self { stop, task }
    }

    /// Stops and returns how many publishes were acknowledged.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The ids in a workspace's stream: what was durably published, whatever the
/// publishers were told (a publish that timed out may still have landed).
pub fn stream_ids(redis: &TestRedis, workspace: &str) -> Vec<EventId> {
    let key = tidings_protocol::keys::WorkspaceKeys::new(workspace, false).events;
    parse_xrange(&redis.cli(&["XRANGE", &key, "-", "+"]))
}

/// [`stream_ids`] on a Redis Cluster.
pub fn cluster_stream_ids(cluster: &tidings_testkit::TestCluster, workspace: &str) -> Vec<EventId> {
    let key = tidings_protocol::keys::WorkspaceKeys::new(workspace, true).events;
    parse_xrange(&cluster.cli(&["XRANGE", &key, "-", "+"]))
}

fn parse_xrange(out: &str) -> Vec<EventId> {
    // redis-cli prints an entry as its id line, then field and value lines.
    out.lines().filter_map(|l| l.trim().parse::<EventId>().ok()).collect()
}

/// Zero loss, no duplicate, in order: what the application saw is exactly the stream.
pub fn assert_exactly(seen: &Seen, published: &[EventId], who: &str) {
    assert!(seen.ids.windows(2).all(|w| w[0] < w[1]), "{who}: ids in order and once each");
    let got: std::collections::BTreeSet<&EventId> = seen.ids.iter().collect();
    let want: std::collections::BTreeSet<&EventId> = published.iter().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(missing.is_empty(), "{who}: lost {} of {} events, first {:?}", missing.len(), published.len(), missing.first());
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(extra.is_empty(), "{who}: {} events that are not in the stream", extra.len());
}

/// Percentiles of durations, for the figures a scenario prints.
pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    kib * 1024
}

/// One sample of a gateway's `/metrics`: the value of the series named `series` exactly.
pub async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
