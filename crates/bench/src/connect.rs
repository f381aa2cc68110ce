//! `connect`: authenticated WebSocket connections per second (upgrade, token
//! check, registration, and the first `connected` message received).

use serde_json::{Value, json};

use crate::connections;
use crate::target::TargetArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    #[arg(long, default_value_t = 10)]
    pub workspaces: usize,
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<Value> {
    let pids = &args.target.server_pid;
    let cpu_before = crate::server_stats::cpu_seconds(pids);
    let (conns, took) = connections::open(&args.target, args.conns, args.workspaces.max(1), 0).await?;
    let cpu = crate::server_stats::cpu_seconds(pids) - cpu_before;
    let per_s = conns.len() as f64 / took.as_secs_f64().max(1e-9);
    Ok(json!({
        "scenario": "connect",
        "conns": conns.len(),
        "seconds": (took.as_secs_f64() * 1000.0).round() / 1000.0,
        "connects_per_s": per_s.round(),
        "server_cpu_us_per_connect": if pids.is_empty() { Value::Null } else { json!((cpu * 1e6 / conns.len() as f64).round()) },
    }))
}
