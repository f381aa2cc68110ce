//! `tidings-publisher`: options → logging → Redis broker → serve until SIGTERM.

use std::net::SocketAddr;

use clap::Parser;

/// Turns webhooks, host metrics and HTTP publishes into Tidings events.
#[derive(Debug, Parser)]
#[command(name = "tidings-publisher", version)]
struct Args {
    /// Address to bind.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// Redis URL (`redis://host:port/db`, `rediss://` for TLS).
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    redis_url: Option<String>,
    /// Bearer token of the HTTP publish API.
    #[arg(long, env = "TIDINGS_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
}

fn main() {
    let args = Args::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        // One line and exit 2, before binding anything (SPEC §1).
        eprintln!(
            "tidings-publisher: {} (see --help)",
            e.to_string().lines().next().unwrap_or("invalid options").trim_start_matches("error: ")
        );
        std::process::exit(2);
    });
    if args.redis_url.is_none() {
        eprintln!("tidings-publisher: TIDINGS_REDIS_URL is required (for a single process without Redis, run `tidings dev`)");
        std::process::exit(2);
    }
    // The Redis durable publish path is the next milestone (issue 3); until then
    // the publisher runs inside `tidings dev` only.
    eprintln!("tidings-publisher: the Redis broker is not available in this build yet; run `tidings dev`");
    std::process::exit(2);
}
