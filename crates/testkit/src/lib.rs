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
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
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
