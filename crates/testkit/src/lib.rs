//! Test support shared by the crates' integration tests: real `redis-server`
//! processes on free ports, stopped when dropped. Tests never share a server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until `cond` holds, polling; panics with `what` after `deadline`.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-cli -p port args…`, its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out =
        Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli (scripts/test installs redis)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One `redis-server` process with nothing persisted.
#[derive(Debug)]
pub struct TestRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TestRedis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = Self { port: free_port(), child: None, dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        // A free port can be taken between `free_port` and the bind (by any
        // process's outgoing connection, or a cluster bus port at +10,000):
        // the server then exits at once, and another port is tried.
        for _ in 0..5 {
            if redis.spawn_once() {
                return redis;
            }
            redis.port = free_port();
        }
        redis.spawn();
        redis
    }

    /// Starts the server; false if it exited before answering (its port was taken).
    fn spawn_once(&mut self) -> bool {
        let mut child = self.command().spawn().expect("redis-server (scripts/test installs it)");
        let port = self.port;
        let until = Instant::now() + START_DEADLINE;
        while Instant::now() < until {
            if redis_cli(port, &["PING"]) == "PONG" {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("timed out waiting for redis-server on {port} to answer PING");
    }

    fn command(&self) -> Command {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = self.command().spawn().expect("redis-server (scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("redis-server to answer PING", START_DEADLINE, || redis_cli(port, &["PING"]) == "PONG");
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The server's process id (for SIGSTOP/SIGCONT), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again on the same port, with nothing of what it held: a
    /// server replaced by an empty one, whatever its persistence.
    pub fn restart_empty(&mut self) {
        self.kill();
        let fresh = tempfile::tempdir().expect("temp dir");
        self.dir = fresh;
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sibling binary of the running test in the same target directory (cargo
/// builds every workspace binary for `cargo test --workspace`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built: run the tests through scripts/test (cargo test --workspace)", path.display());
    path
}

/// `start-end:port` of each slot range in a redis-cli CLUSTER SLOTS dump, sorted.
fn slot_owners(dump: &str) -> Vec<String> {
    let lines: Vec<&str> = dump.lines().collect();
    let mut owners = Vec::new();
    let mut i = 0;
    while i + 3 < lines.len() {
        if let (Ok(start), Ok(end), Ok(port)) = (lines[i].parse::<u32>(), lines[i + 1].parse::<u32>(), lines[i + 3].parse::<u16>())
            && start <= end
            && end < 16384
            && lines[i + 2].contains('.')
        {
            owners.push(format!("{start}-{end}:{port}"));
            i += 4;
        } else {
            i += 1;
        }
    }
    owners.sort();
    owners
}

/// A real Redis Cluster: `masters` primaries, each with `replicas` replicas,
/// every node a `redis-server` on a free port.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<TestRedis>,
}

impl TestCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        let expected_replicas = masters * replicas;
        let total = masters * (1 + replicas);
        let nodes: Vec<TestRedis> = (0..total)
            .map(|_| {
                TestRedis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-allow-pubsubshard-when-down",
                    "yes",
                    // An idle replica hears from its master only every
                    // repl-ping-replica-period (10 s): with a 1 s node timeout
                    // the default factor would refuse to promote it after a crash.
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes };
        cluster.wait_healthy();
        for node in &cluster.nodes {
            let port = node.port;
            wait_for("every node to see every replica", START_DEADLINE, || {
                redis_cli(port, &["CLUSTER", "NODES"]).lines().filter(|l| l.contains("slave") && !l.contains("fail")).count()
                    == expected_replicas
            });
        }
        cluster
    }

    /// Waits until every node sees the cluster as `ok` and the replicas are in sync.
    pub fn wait_healthy(&self) {
        for node in self.live() {
            let port = node.port;
            wait_for("cluster_state:ok", START_DEADLINE, || redis_cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
        }
        // Every node agrees on who serves each slot range (no stale view of a
        // failover or slot move left anywhere).
        let until = Instant::now() + START_DEADLINE;
        loop {
            let views: Vec<String> = self.live().map(|n| redis_cli(n.port, &["CLUSTER", "SLOTS"])).collect();
            let normalized: Vec<Vec<String>> = views.iter().map(|v| slot_owners(v)).collect();
            if normalized.windows(2).all(|w| w[0] == w[1]) && !normalized[0].is_empty() {
                return;
            }
            assert!(Instant::now() < until, "cluster views never converged: {views:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs, comma-separated, as `TIDINGS_REDIS_URL` takes them in cluster mode.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    pub fn any_port(&self) -> u16 {
        self.live().next().expect("a live node").port
    }

    /// The nodes that run (not killed).
    fn live(&self) -> impl Iterator<Item = &TestRedis> {
        self.nodes.iter().filter(|n| n.pid().is_some())
    }

    /// SIGKILLs the master at `master_port`, as a crash would (no `CLUSTER
    /// FAILOVER`), and waits until the cluster promoted its replica and
    /// serves again; returns the new master's port.
    pub fn kill_master(&mut self, master_port: u16) -> u16 {
        let topology = self.topology();
        let master_id = topology.iter().find(|n| n.1 == master_port).map(|n| n.0.clone()).expect("master known");
        let replica = topology.iter().find(|n| !n.2 && n.3 == master_id).map(|n| n.1).expect("the master has a replica");
        self.nodes.iter_mut().find(|n| n.port == master_port).expect("a node of this cluster").kill();
        wait_for("the replica to promote itself", START_DEADLINE, || redis_cli(replica, &["ROLE"]).starts_with("master"));
        self.wait_healthy();
        replica
    }

    /// `redis-cli -c` against any node (follows redirects).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-c", "-p", &self.any_port().to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn keyslot(&self, key: &str) -> u16 {
        redis_cli(self.any_port(), &["CLUSTER", "KEYSLOT", key]).parse().expect("a slot number")
    }

    /// `(node id, port, is master, master id, slots)` of every node, from CLUSTER NODES.
    pub fn topology(&self) -> Vec<(String, u16, bool, String, String)> {
        redis_cli(self.any_port(), &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let master = f.get(2)?.contains("master");
                Some((f[0].to_string(), port, master, f.get(3)?.to_string(), f.get(8..).map(|s| s.join(" ")).unwrap_or_default()))
            })
            .collect()
    }

    /// Ports of the nodes that are masters now (asked of each node itself).
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| redis_cli(n.port, &["ROLE"]).starts_with("master")).map(|n| n.port).collect()
    }

    /// The port of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        let slots = redis_cli(self.any_port(), &["CLUSTER", "SLOTS"]);
        // CLUSTER SLOTS through redis-cli prints start, end, ip, port, id, … per range.
        let lines: Vec<&str> = slots.lines().collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && start <= slot
                && slot <= end
                && let Ok(port) = lines[i + 3].parse()
            {
                return port;
            }
            i += 1;
        }
        panic!("no master for slot {slot}: {slots}")
    }

    /// Promotes a replica of the master at `master_port` (CLUSTER FAILOVER) and
    /// waits until it serves; returns the new master's port.
    pub fn failover(&self, master_port: u16) -> u16 {
        let topology = self.topology();
        let master_id = topology.iter().find(|n| n.1 == master_port).map(|n| n.0.clone()).expect("master known");
        let replica = topology.iter().find(|n| !n.2 && n.3 == master_id).map(|n| n.1).expect("the master has a replica");
        assert_eq!(redis_cli(replica, &["CLUSTER", "FAILOVER"]), "OK");
        wait_for("the replica to become master", START_DEADLINE, || redis_cli(replica, &["ROLE"]).starts_with("master"));
        wait_for("the old master to become a replica", START_DEADLINE, || redis_cli(master_port, &["ROLE"]).starts_with("slave"));
        self.wait_healthy();
        replica
    }

    /// Moves `slot` (and its keys) to the master at `to_port`, the way
    /// `redis-cli --cluster reshard` does it, one slot at a time.
    pub fn move_slot(&self, slot: u16, to_port: u16) {
        let from_port = self.master_of(slot);
        assert_ne!(from_port, to_port, "slot already there");
        let id_of = |port: u16| redis_cli(port, &["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id_of(from_port), id_of(to_port));
        let slot_s = slot.to_string();
        assert_eq!(redis_cli(to_port, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]), "OK");
        assert_eq!(redis_cli(from_port, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]), "OK");
        loop {
            let keys = redis_cli(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", "", "", "0", "5000", "KEYS"];
            let port_s = to_port.to_string();
            args[2] = &port_s;
            let key_list: Vec<&str> = keys.lines().collect();
            args.extend(key_list.iter());
            let out = redis_cli(from_port, &args);
            assert!(out == "OK" || out == "NOKEY", "MIGRATE answered {out}");
        }
        for node in self.topology().iter().filter(|n| n.2) {
            redis_cli(node.1, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
        wait_for("the slot to move", START_DEADLINE, || self.master_of(slot) == to_port);
    }
}

/// The status code of `GET url` (plain `http://host:port/path`), or None when
/// nothing answers within two seconds. Raw HTTP/1.1, so tests need no client.
pub fn http_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host).ok()?.next()?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A server process of the workspace on a free port, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `binary` with `TIDINGS_LISTEN` on a free port plus `env`, and
    /// waits until `/readyz` answers 200. `log` receives stderr when given.
    pub fn start(binary: &str, env: &[(&str, String)], log: Option<&Path>) -> Self {
        Self::start_on(binary, free_port(), env, log)
    }

    /// The same on a given port (e.g. to restart a killed server where its clients look).
    pub fn start_on(binary: &str, port: u16, env: &[(&str, String)], log: Option<&Path>) -> Self {
        let mut cmd = Command::new(workspace_binary(binary));
        cmd.env("TIDINGS_LISTEN", format!("127.0.0.1:{port}")).env_remove("TIDINGS_JWT_SECRET").stdout(Stdio::null());
        match log {
            Some(path) => cmd.stderr(Stdio::from(std::fs::File::create(path).expect("log file"))),
            None => cmd.stderr(Stdio::null()),
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Self { child: cmd.spawn().expect("spawn server"), port };
        let ready = format!("{}/readyz", process.base());
        wait_for(&format!("{binary} ready"), START_DEADLINE, || http_status(&ready) == Some(200));
        process
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Async tests: polls `cond` until it holds; panics naming `what` after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`], with `report` saying what was still missing when it timed out.
pub async fn eventually_or_report(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool, report: impl FnOnce() -> String) {
    let until = tokio::time::Instant::now() + deadline;
    while !cond() {
        if tokio::time::Instant::now() >= until {
            panic!("timed out waiting for {what}: {}", report());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Async tests: retries `attempt` until it yields a value; panics naming `what` after `deadline`.
pub async fn retry<T, F, Fut>(what: &str, deadline: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`, …) to a process, with `kill(1)`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill(1)");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// nginx (Debian's package) running the project's `deploy/nginx/nginx.conf`
/// on a free port, its upstreams pointed at local gateways and a publisher;
/// stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    pub port: u16,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    pub fn start(gateways: &[u16], publisher: u16) -> Self {
        Self::start_logging(gateways, publisher, None)
    }

    /// The same, with nginx's access log and its error log (at `warn`, not
    /// the config's `crit`) written to `log` when given.
    pub fn start_logging(gateways: &[u16], publisher: u16, log: Option<&Path>) -> Self {
        let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nginx/nginx.conf"))
            .expect("deploy/nginx/nginx.conf");
        let port = free_port();
        let [a, b] = gateways else { panic!("deploy/nginx/nginx.conf balances two gateways") };
        let rewrites = [
            ("server gateway-1:8080", format!("server 127.0.0.1:{a}")),
            ("server gateway-2:8080", format!("server 127.0.0.1:{b}")),
            ("server publisher:8090", format!("server 127.0.0.1:{publisher}")),
            ("listen 8080;", format!("listen 127.0.0.1:{port};")),
        ];
        let mut conf = conf;
        for (from, to) in rewrites {
            assert_eq!(conf.matches(from).count(), 1, "deploy/nginx/nginx.conf has one `{from}`");
            conf = conf.replace(from, &to);
        }
        if log.is_some() {
            conf = conf.replace("error_log stderr crit;", "error_log stderr warn;");
        }
        let output = || match log {
            Some(path) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path).expect("nginx log file")),
            None => Stdio::null(),
        };
        let prefix = tempfile::tempdir().expect("temp dir");
        // nginx's workers drop root; they must reach the temp paths under the prefix.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(prefix.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let conf_path = prefix.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("nginx (Debian's package; scripts/test installs it)");
        let nginx = Self { child, port, _prefix: prefix };
        let ready = format!("http://127.0.0.1:{port}/healthz");
        wait_for("nginx forwarding /healthz", START_DEADLINE, || http_status(&ready) == Some(200));
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its workers down with it.
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}
