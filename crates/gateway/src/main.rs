//! `tidings-gateway`: options → logging → Redis broker → serve until SIGTERM.

use clap::Parser;
use tidings_gateway::config::{GatewayArgs, ProcessArgs, init_logging, parse_args_or_exit};

/// Holds client connections for a scaled-out Tidings deployment.
#[derive(Debug, Parser)]
#[command(name = "tidings-gateway", version)]
struct Args {
    #[command(flatten)]
    process: ProcessArgs,
    /// Redis URL (`redis://host:port/db`, `rediss://` for TLS).
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    redis_url: Option<String>,
    /// Treat the Redis URL as a comma-separated list of cluster seed nodes.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", default_value_t = false)]
    redis_cluster: bool,
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn main() {
    let args: Args = parse_args_or_exit("tidings-gateway");
    init_logging(&args.process.log_format);
    if args.redis_url.is_none() {
        eprintln!("tidings-gateway: TIDINGS_REDIS_URL is required (for a single process without Redis, run `tidings dev`)");
        std::process::exit(2);
    }
    // The Redis broker is the next milestone (issue 3); until then the only
    // runnable gateway is the one inside `tidings dev`.
    eprintln!("tidings-gateway: the Redis broker is not available in this build yet; run `tidings dev`");
    std::process::exit(2);
}
