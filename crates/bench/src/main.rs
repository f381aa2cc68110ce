//! `tidings-bench`: parse the scenario, run it on one thread (the load is
//! pinned to one core by the scripts), print its result line.

use clap::{Parser, Subcommand};
use tidings_bench::{ceiling, connect, fanout, idle, reconnect, report};

#[derive(Debug, Parser)]
#[command(name = "tidings-bench", version, about = "Load generator for Tidings and the servers it is compared with")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N connections over W workspaces, E events each at R/s: CPU per delivery, loss, order, latency.
    Fanout(fanout::FanoutArgs),
    /// `fanout` at a fixed rate, reported for its latency percentiles.
    Latency(fanout::FanoutArgs),
    /// Server RSS per idle authenticated connection (slope between two counts).
    Idle(idle::IdleArgs),
    /// Authenticated connections per second.
    Connect(connect::ConnectArgs),
    /// A gateway killed under durable events: recovery time, loss, duplicates.
    Reconnect(reconnect::ReconnectArgs),
    /// Serve as the raw writer that bounds every result (run it, then point `fanout` at it).
    Ceiling(ceiling::CeilingArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Scenario::Ceiling(c) = args.scenario {
        return ceiling::run(c);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async move {
        match args.scenario {
            Scenario::Fanout(a) => fanout::run(a).await,
            Scenario::Latency(mut a) => {
                if a.label == "fanout" {
                    a.label = "latency".into();
                }
                fanout::run(a).await
            }
            Scenario::Idle(a) => idle::run(a).await,
            Scenario::Connect(a) => connect::run(a).await,
            Scenario::Reconnect(a) => reconnect::run(a).await,
            Scenario::Ceiling(_) => unreachable!("handled above"),
        }
    })?;
    report::emit(&result);
    Ok(())
}
