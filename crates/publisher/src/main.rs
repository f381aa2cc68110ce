//! `tidings-publisher`: options → logging → Redis broker → serve until SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tidings_broker::options::{HistoryArgs, RedisArgs};
use tidings_broker::{Broker, PublishOnly, RedisBroker};
use tidings_process::options::ServeArgs;
use tidings_process::{parse_args_or_exit, shutdown_signal};
use tidings_publisher::{Publisher, PublisherMetrics, Readiness};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Turns webhooks, host metrics and HTTP publishes into Tidings events.
#[derive(Debug, Parser)]
#[command(name = "tidings-publisher", version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Bearer token of the HTTP publish API.
    #[arg(long, env = "TIDINGS_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(flatten)]
    host_metrics: tidings_publisher::host_metrics::HostMetricsArgs,
    #[command(flatten)]
    webhooks: tidings_publisher::WebhookArgs,
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("tidings-publisher: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Args = parse_args_or_exit("tidings-publisher");
    let redis_url = match args.redis.required_url(" (for one process without Redis, run `tidings dev`)") {
        Ok(url) => url.to_string(),
        Err(e) => return usage_error(&e),
    };
    let Some(publish_token) = args.publish_token.clone().filter(|t| !t.is_empty()) else {
        return usage_error("TIDINGS_PUBLISH_TOKEN is required");
    };
    let metrics_workspace = match args.host_metrics.workspace_or(None) {
        Ok(workspace) => workspace,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = args.redis.check() {
        return usage_error(&e);
    }
    let config = match args.webhooks.to_config(publish_token) {
        Ok(config) => config,
        Err(e) => return usage_error(&e.to_string()),
    };
    let _telemetry = tidings_process::telemetry::init("tidings-publisher", &args.serve.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidings-publisher: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let metrics = PublisherMetrics::register(&registry)?;
        tidings_process::http::register_process_metrics(&registry)?;
        let redis = RedisBroker::connect(args.redis.config(&redis_url, args.history.events()), Arc::new(PublishOnly))?;
        let store = Arc::new(redis.clone());
        let broker: Arc<dyn Broker> = store.clone();
        // Ready when Redis answers commands; the pub/sub connection is not ours to need.
        let publisher = Publisher::with_stores(config, broker.clone(), store, metrics, Readiness::RedisCommands(redis));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        if let Some(workspace) = metrics_workspace {
            tasks.spawn(tidings_publisher::host_metrics::run(broker.clone(), workspace, args.host_metrics.interval(), stop.clone()));
        }
        tasks.close();
        let listen = args.serve.listen_or(SocketAddr::from(([0, 0, 0, 0], 8090)));
        let listener = tidings_process::listen(listen).map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "publisher listening");
        axum::serve(listener, tidings_publisher::router(publisher, registry)).with_graceful_shutdown(shutdown_signal()).await?;
        stop.cancel();
        tasks.wait().await;
        broker.close().await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings-publisher: {e:#}");
            ExitCode::FAILURE
        }
    }
}
