//! `idle`: the servers' resident memory per idle authenticated connection, as
//! the slope between two connection counts (so the process's fixed cost and
//! allocator warm-up fall out).

use std::time::Duration;

use serde_json::{Value, json};

use crate::connections::{self, Conn};
use crate::server_stats::rss_bytes;
use crate::target::TargetArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value_t = 200)]
    pub from: usize,
    #[arg(long, default_value_t = 9000)]
    pub to: usize,
    #[arg(long, default_value_t = 1)]
    pub workspaces: usize,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(!args.target.server_pid.is_empty(), "idle needs --server-pid");
    anyhow::ensure!(args.to > args.from, "--to must be above --from");
    let pids = &args.target.server_pid;
    let (mut conns, _) = connections::open(&args.target, args.from, args.workspaces, 0).await?;
    let low = settled_rss(pids, &mut conns).await;
    let (more, took) = connections::open(&args.target, args.to - args.from, args.workspaces, args.from).await?;
    conns.extend(more);
    let high = settled_rss(pids, &mut conns).await;
    let slope = (high as f64 - low as f64) / (args.to - args.from) as f64;
    Ok(json!({
        "scenario": "idle",
        "from": args.from,
        "to": args.to,
        "rss_from_mib": (low as f64 / 1048576.0 * 10.0).round() / 10.0,
        "rss_to_mib": (high as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kib_per_conn": (slope / 1024.0 * 100.0).round() / 100.0,
        "connect_s": (took.as_secs_f64() * 1000.0).round() / 1000.0,
    }))
}

/// RSS once two readings 500 ms apart agree within 1 %.
async fn settled_rss(pids: &[u32], conns: &mut [Conn]) -> u64 {
    for c in conns.iter_mut() {
        c.socket.shrink();
    }
    let mut last = rss_bytes(pids);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_bytes(pids);
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}
