//! `tidings-gateway`: options → logging → Redis broker → serve until SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tidings_broker::options::RedisArgs;
use tidings_broker::{Broker, MessageHandler, RedisBroker};
use tidings_gateway::config::GatewayArgs;
use tidings_gateway::metrics::GatewayMetrics;
use tidings_gateway::{Node, server};
use tidings_process::http::register_process_metrics;
use tidings_process::options::ServeArgs;
use tidings_process::{parse_args_or_exit, shutdown_signal};

/// Holds client connections for a scaled-out Tidings deployment.
#[derive(Debug, Parser)]
#[command(name = "tidings-gateway", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("tidings-gateway: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Args = parse_args_or_exit("tidings-gateway");
    let redis_url = match args.redis.required_url(" (for one process without Redis, run `tidings dev`)") {
        Ok(url) => url.to_string(),
        Err(e) => return usage_error(&e),
    };
    let jwt_keys = match args.gateway.key_source(None) {
        Ok(keys) => keys,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = args.redis.check() {
        return usage_error(&e);
    }
    let _telemetry = tidings_process::telemetry::init("tidings-gateway", &args.serve.log_format);
    let listen = args.serve.listen_or(SocketAddr::from(([0, 0, 0, 0], 8080)));
    let config = args.gateway.to_config(jwt_keys);
    let history_size = config.history_size;

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidings-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let metrics = GatewayMetrics::register(&registry)?;
        register_process_metrics(&registry)?;
        let node = Node::new(config, metrics, |hub: Arc<dyn MessageHandler>| {
            Ok(Arc::new(RedisBroker::connect(args.redis.config(&redis_url, history_size), hub)?) as Arc<dyn Broker>)
        })?;
        node.verifier.warm_up().await;
        let listener = tidings_process::listen(listen).map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, server = %node.config.instance_id, "gateway listening");
        server::serve(listener, server::router(node.clone(), registry), node, shutdown_signal()).await?;
        Ok(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidings-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
