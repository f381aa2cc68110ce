//! `fanout` and `latency`: N connections over W workspaces; E events per
//! workspace published by bare `PUBLISH` at R events/s per workspace; every
//! delivery counted and checked for order, the latency taken from each
//! event's own timestamp. The headline is the servers' CPU time per delivery.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::connections::{self, workspace_name};
use crate::events::{event_json, first_timestamp_micros, now_micros, seqs};
use crate::report::percentiles;
use crate::server_stats::{cpu_seconds, rss_bytes};
use crate::target::TargetArgs;
use crate::wire::Frame;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Redis the servers read (events are published here).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    #[arg(long, default_value_t = 1)]
    pub workspaces: usize,
    /// Events per second per workspace.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Events per workspace.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Approximate event size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Connect with `batch=1` (Tidings only).
    #[arg(long)]
    pub batch: bool,
    /// Give up waiting for deliveries after this long without progress.
    #[arg(long, default_value_t = 3000)]
    pub quiet_ms: u64,
    /// Name of this run in the results.
    #[arg(long, default_value = "fanout")]
    pub label: String,
}

#[derive(Default)]
struct Tally {
    received: u64,
    out_of_order: u64,
    probes: u64,
    latency: Option<Histogram<u64>>,
    last_receipt: Option<Instant>,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<Value> {
    let mut target = args.target.clone();
    if args.batch {
        target.extra_query.push_str("&batch=1");
    }
    let (conns, connect_time) = connections::open(&target, args.conns, args.workspaces.max(1), 0).await?;
    let per_workspace: Vec<usize> = (0..args.workspaces.max(1)).map(|w| conns.iter().filter(|c| c.workspace == w).count()).collect();
    let tally = Rc::new(RefCell::new(Tally { latency: Some(Histogram::new_with_bounds(1, 600_000_000, 3)?), ..Tally::default() }));
    let probes_seen = Rc::new(RefCell::new(vec![false; conns.len()]));

    for (index, mut conn) in conns.into_iter().enumerate() {
        let tally = tally.clone();
        let probes_seen = probes_seen.clone();
        tokio::task::spawn_local(async move {
            let mut last_seq = 0u64;
            let _ = conn
                .socket
                .read_frames(|frame| {
                    if let Frame::Text(text) = frame {
                        let mut t = tally.borrow_mut();
                        let mut got_event = false;
                        seqs(text, |seq| {
                            if seq == 0 {
                                t.probes += 1;
                                probes_seen.borrow_mut()[index] = true;
                                return;
                            }
                            got_event = true;
                            t.received += 1;
                            if seq <= last_seq {
                                t.out_of_order += 1;
                            }
                            last_seq = seq;
                        });
                        if got_event {
                            if let (Some(sent), Some(h)) = (first_timestamp_micros(text), t.latency.as_mut()) {
                                let _ = h.record(now_micros().saturating_sub(sent).max(1));
                            }
                            t.last_receipt = Some(Instant::now());
                        }
                    }
                    true
                })
                .await;
        });
    }

    let client = redis::Client::open(args.redis.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    // Until every connection saw a probe, its server may not be subscribed yet.
    let probe_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if probes_seen.borrow().iter().all(|s| *s) {
            break;
        }
        anyhow::ensure!(Instant::now() < probe_deadline, "not every connection received a probe within 30 s");
        let mut pipe = redis::pipe();
        for w in 0..args.workspaces.max(1) {
            pipe.cmd("PUBLISH").arg(format!("workspace:{}", workspace_name(w))).arg(event_json(&workspace_name(w), 0, 0)).ignore();
        }
        pipe.query_async::<()>(&mut redis).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late probes must not count as deliveries: wait for them to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pids = &args.target.server_pid;
    let cpu_before = cpu_seconds(pids);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut published = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while published < args.events {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64 + 1).min(args.events);
        if due <= published {
            continue;
        }
        let mut pipe = redis::pipe();
        for seq in published + 1..=due {
            for w in 0..args.workspaces.max(1) {
                pipe.cmd("PUBLISH")
                    .arg(format!("workspace:{}", workspace_name(w)))
                    .arg(event_json(&workspace_name(w), seq, args.payload))
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut redis).await?;
        published = due;
    }
    let publish_time = started.elapsed();
    let expected: u64 = per_workspace.iter().map(|n| *n as u64 * args.events).sum();
    let mut last_progress = (0u64, Instant::now());
    loop {
        let received = tally.borrow().received;
        if received >= expected {
            break;
        }
        if received != last_progress.0 {
            last_progress = (received, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_millis(args.quiet_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = cpu_seconds(pids) - cpu_before;
    // With the connections still open: what the run left the servers holding.
    let rss_after = rss_bytes(pids);
    let t = tally.borrow();
    let span = t.last_receipt.map(|l| l.duration_since(started)).unwrap_or(publish_time);
    let deliveries = t.received;
    Ok(json!({
        "scenario": args.label,
        "conns": args.conns,
        "workspaces": args.workspaces,
        "rate": args.rate,
        "events": args.events,
        "payload": args.payload,
        "batch": args.batch,
        "expected": expected,
        "delivered": deliveries,
        "lost": expected.saturating_sub(deliveries),
        "out_of_order": t.out_of_order,
        "connect_s": round(connect_time.as_secs_f64()),
        "publish_s": round(publish_time.as_secs_f64()),
        "deliver_s": round(span.as_secs_f64()),
        "deliveries_per_s": (deliveries as f64 / span.as_secs_f64().max(1e-9)).round(),
        "server_cpu_s": round(cpu),
        "server_rss_mib": if pids.is_empty() { Value::Null } else { json!((rss_after as f64 / 1048576.0 * 10.0).round() / 10.0) },
        "cpu_us_per_delivery": if deliveries > 0 && !pids.is_empty() { json!(round(cpu * 1e6 / deliveries as f64)) } else { Value::Null },
        "latency_ms": t.latency.as_ref().map(percentiles).unwrap_or(Value::Null),
    }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
