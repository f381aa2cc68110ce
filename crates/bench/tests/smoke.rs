//! The benchmark's smoke run, in `scripts/test`: a real gateway on a real
//! Redis and the raw-writer ceiling, each driven by the real `tidings-bench`
//! binary for about a second. It asserts correctness only — every event
//! delivered to every connection, once, in order — never speed.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tidings_testkit::{ServerProcess, TestRedis, free_port, wait_for};

const SECRET: &str = "bench-smoke-secret";

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-bench")).args(args).env("TIDINGS_JWT_SECRET", SECRET).output().unwrap();
    assert!(out.status.success(), "tidings-bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn assert_lossless(result: &Value, conns: u64, events: u64) {
    assert_eq!(result["expected"], conns * events, "{result}");
    assert_eq!(result["delivered"], result["expected"], "every event reached every connection: {result}");
    assert_eq!(result["lost"], 0, "{result}");
    assert_eq!(result["out_of_order"], 0, "once each, in order: {result}");
    assert!(result["latency_ms"]["samples"].as_u64().unwrap() > 0, "{result}");
}

#[test]
fn fanout_through_a_gateway_loses_nothing() {
    let redis = TestRedis::start();
    let gateway = ServerProcess::start(
        "tidings-gateway",
        &[("TIDINGS_REDIS_URL", redis.url()), ("TIDINGS_JWT_SECRET", SECRET.into()), ("RUST_LOG", "warn".into())],
        None,
    );
    let url = format!("ws://127.0.0.1:{}", gateway.port);
    let pid = gateway.child.id().to_string();
    let redis_url = redis.url();
    for extra in [&[][..], &["--batch"][..]] {
        let mut args = vec!["fanout", "--url", &url, "--redis", &redis_url, "--server-pid", &pid];
        args.extend(["--conns", "20", "--workspaces", "2", "--events", "300", "--rate", "1000"]);
        args.extend(extra);
        let result = bench(&args);
        assert_lossless(&result, 20, 300);
        assert!(result["server_cpu_s"].as_f64().unwrap() >= 0.0);
    }
    let connect = bench(&["connect", "--url", &url, "--conns", "50", "--server-pid", &pid]);
    assert_eq!(connect["conns"], 50, "{connect}");
    let idle = bench(&["idle", "--url", &url, "--from", "10", "--to", "60", "--server-pid", &pid]);
    assert!(idle["rss_to_mib"].as_f64().unwrap() > 0.0, "{idle}");
}

#[test]
fn a_killed_gateway_costs_its_clients_nothing_but_a_reconnect() {
    let redis = TestRedis::start();
    let env = [("TIDINGS_REDIS_URL", redis.url()), ("TIDINGS_JWT_SECRET", SECRET.into()), ("RUST_LOG", "warn".into())];
    let doomed = ServerProcess::start("tidings-gateway", &env, None);
    let survivor = ServerProcess::start("tidings-gateway", &env, None);
    let urls = format!("ws://127.0.0.1:{},ws://127.0.0.1:{}", doomed.port, survivor.port);
    let pid = doomed.child.id().to_string();
    let redis_url = redis.url();
    let args = ["reconnect", "--url", &urls, "--redis", &redis_url, "--kill-pid", &pid];
    let result = bench(&[&args[..], &["--conns", "40", "--rate", "100", "--events", "150", "--kill-after-ms", "400"]].concat());
    assert_eq!(result["cut_off"], 20, "half were on the killed gateway: {result}");
    assert_eq!(result["recovered"], 20, "{result}");
    assert_eq!(result["lost"], 0, "every durable event reached every client across the reconnect: {result}");
    drop(doomed);
}

struct Ceiling(Child);

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_ceiling_writer_delivers_the_same_way() {
    let redis = TestRedis::start();
    for coalesce in [false, true] {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings-bench"));
        cmd.args(["ceiling", "--listen", &format!("127.0.0.1:{port}"), "--redis", &format!("127.0.0.1:{}", redis.port)]);
        if coalesce {
            cmd.arg("--coalesce");
        }
        let ceiling = Ceiling(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        wait_for("the ceiling listening", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let url = format!("ws://127.0.0.1:{port}");
        let pid = ceiling.0.id().to_string();
        let result = bench(&[
            "fanout",
            "--url",
            &url,
            "--redis",
            &redis.url(),
            "--server-pid",
            &pid,
            "--conns",
            "20",
            "--events",
            "300",
            "--rate",
            "1000",
        ]);
        assert_lossless(&result, 20, 300);
    }
}
