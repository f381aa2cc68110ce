//! `reconnect`: a gateway killed (SIGKILL) under a steady stream of durable
//! events. Half the connections were on it; each reconnects to the other
//! gateway with `since=<last id>` after a full-jitter backoff (first ceiling
//! 1 s, as the clients do), drops ids it has seen, and the run reports how
//! long until every client was back, and what was lost or duplicated.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::connections::{self, workspace_name};
use crate::events::{event_json, first_id, seqs};
use crate::report::percentiles;
use crate::target::{TargetArgs, source_for};
use crate::wire::{self, Frame};

/// `scripts/publish.lua`, the durable publish every Tidings publisher uses.
const PUBLISH_SCRIPT: &str = include_str!("../../../scripts/publish.lua");

#[derive(Debug, Clone, clap::Args)]
pub struct ReconnectArgs {
    /// Two or more gateways; connections are spread over them, the first is killed.
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Process id of the gateway to kill (the first URL's).
    #[arg(long)]
    pub kill_pid: u32,
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Durable events per second (one workspace).
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    #[arg(long, default_value_t = 500)]
    pub events: u64,
    /// When to kill it, after the first event.
    #[arg(long, default_value_t = 1000)]
    pub kill_after_ms: u64,
}

struct State {
    seen: Vec<Vec<bool>>,
    duplicates: u64,
    cut: usize,
    recovered: Vec<Instant>,
}

pub async fn run(args: ReconnectArgs) -> anyhow::Result<Value> {
    let endpoints = Rc::new(args.target.endpoints()?);
    anyhow::ensure!(endpoints.len() >= 2, "reconnect needs at least two gateways (--url a,b)");
    let (conns, _) = connections::open(&args.target, args.conns, 1, 0).await?;
    let state = Rc::new(RefCell::new(State {
        seen: vec![vec![false; args.events as usize + 1]; conns.len()],
        duplicates: 0,
        cut: 0,
        recovered: Vec::new(),
    }));
    let workspace = workspace_name(0);
    for (index, conn) in conns.into_iter().enumerate() {
        let state = state.clone();
        let endpoints = endpoints.clone();
        let target = args.target.clone();
        let workspace = workspace.clone();
        tokio::task::spawn_local(async move {
            let mut socket = conn.socket;
            let mut last: Option<(u64, u64)> = None;
            let mut attempt = 0u32;
            let mut endpoint = index % endpoints.len();
            loop {
                let _ = socket
                    .read_frames(|frame| {
                        if let Frame::Text(text) = frame {
                            let id = first_id(text);
                            let mut s = state.borrow_mut();
                            if id.is_some() && id <= last {
                                s.duplicates += 1;
                                return true;
                            }
                            if id.is_some() {
                                last = id;
                            }
                            seqs(text, |seq| {
                                if let Some(slot) = s.seen[index].get_mut(seq as usize) {
                                    *slot = true;
                                }
                            });
                        }
                        true
                    })
                    .await;
                // Cut off: back off, then the next gateway, resuming after the last id.
                state.borrow_mut().cut += 1;
                loop {
                    let ceiling = 1000u64.saturating_mul(1 << attempt.min(5)).min(30_000);
                    tokio::time::sleep(Duration::from_millis(jitter(index as u64, attempt, ceiling))).await;
                    attempt += 1;
                    endpoint = (endpoint + 1) % endpoints.len();
                    let e = &endpoints[endpoint];
                    let Ok(token) = target.token(&workspace, index) else { return };
                    let since = last.map(|(ms, seq)| format!("&since={ms}-{seq}")).unwrap_or_default();
                    let path = format!("/ws?token={token}&workspace_id={workspace}{since}");
                    let Ok(mut s) = wire::connect(e.addr, &e.host, &path, source_for(index, &e.addr)).await else { continue };
                    if s.first_text().await.is_ok() {
                        socket = s;
                        attempt = 0;
                        state.borrow_mut().recovered.push(Instant::now());
                        break;
                    }
                }
            }
        });
    }

    let client = redis::Client::open(args.redis.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let script = redis::Script::new(PUBLISH_SCRIPT);
    let keys = tidings_protocol::keys::WorkspaceKeys::new(&workspace, false);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut killed_at = None;
    for seq in 1..=args.events {
        let due = started + interval.mul_f64((seq - 1) as f64);
        tokio::time::sleep_until(due.into()).await;
        if killed_at.is_none() && started.elapsed() >= Duration::from_millis(args.kill_after_ms) {
            let status = std::process::Command::new("kill").args(["-KILL", &args.kill_pid.to_string()]).status().context("running kill")?;
            anyhow::ensure!(status.success(), "kill -KILL {} failed", args.kill_pid);
            killed_at = Some(Instant::now());
        }
        let _: String = script
            .key(&keys.events)
            .key(&keys.latest)
            .key(&keys.channel)
            .arg(event_json(&workspace, seq, 200))
            .arg(10_000)
            .arg("")
            .arg("0")
            .invoke_async(&mut redis)
            .await?;
    }
    let killed_at = killed_at.context("the run ended before the kill: raise --events or lower --kill-after-ms")?;
    // Until every connection has every event, or nothing changes for 5 s.
    let mut last_progress = (0usize, Instant::now());
    loop {
        let complete = state.borrow().seen.iter().filter(|s| s[1..].iter().all(|x| *x)).count();
        if complete == args.conns {
            break;
        }
        if complete != last_progress.0 {
            last_progress = (complete, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = state.borrow();
    let lost: u64 = s.seen.iter().map(|v| v[1..].iter().filter(|x| !**x).count() as u64).sum();
    let mut recovery = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for at in &s.recovered {
        let _ = recovery.record(at.duration_since(killed_at).as_micros().max(1) as u64);
    }
    Ok(json!({
        "scenario": "reconnect",
        "conns": args.conns,
        "events": args.events,
        "rate": args.rate,
        "cut_off": s.cut,
        "recovered": s.recovered.len(),
        "expected": args.conns as u64 * args.events,
        "lost": lost,
        "duplicates_dropped": s.duplicates,
        "recovery_ms": percentiles(&recovery),
    }))
}

/// A deterministic full-jitter draw in `0..ceiling` ms per connection and attempt.
fn jitter(index: u64, attempt: u32, ceiling: u64) -> u64 {
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    x % ceiling.max(1)
}
