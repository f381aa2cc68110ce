//! `tidings dev`: the whole system in one process on the in-memory broker, with
//! the live dashboard at `/`. Gateway and publisher endpoints share one listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tidings_broker::{Broker, MemoryBroker, MessageHandler};
use tidings_gateway::config::GatewayArgs;
use tidings_gateway::metrics::GatewayMetrics;
use tidings_gateway::{Node, server};
use tidings_process::http::register_process_metrics;
use tidings_process::shutdown_signal;
use tidings_publisher::{Publisher, PublisherMetrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Lifetime of the token printed on start.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Where host metrics go when `--metrics-workspace` is not given.
const DEV_METRICS_WORKSPACE: &str = "dev";

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub serve: tidings_process::options::ServeArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub webhooks: tidings_publisher::WebhookArgs,
    /// Bearer token of the publish API (default: a random one, printed on start).
    #[arg(long, env = "TIDINGS_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    #[command(flatten)]
    pub host_metrics: tidings_publisher::host_metrics::HostMetricsArgs,
}

impl DevArgs {
    /// Checks what clap cannot, so that bad values stop the program before it binds.
    pub fn validate(&self) -> Result<(), crate::UsageError> {
        self.gateway.key_source(Some("placeholder".into())).map_err(crate::UsageError)?;
        self.webhooks.to_config(String::new()).map_err(|e| crate::UsageError(e.to_string()))?;
        self.metrics_workspace().map(drop)
    }

    /// Where `tidings dev` publishes host metrics: `dev` unless told otherwise.
    pub fn metrics_workspace(&self) -> Result<String, crate::UsageError> {
        let workspace = self.host_metrics.workspace_or(Some(DEV_METRICS_WORKSPACE)).map_err(crate::UsageError)?;
        Ok(workspace.unwrap_or_else(|| DEV_METRICS_WORKSPACE.to_string()))
    }
}

fn random_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// What a running dev server tells its user.
#[derive(Debug, Clone)]
pub struct DevInfo {
    pub base_url: String,
    pub jwt_secret: String,
    pub publish_token: String,
    pub token: String,
}

impl DevInfo {
    pub fn banner(&self) -> String {
        let ws_url = self.base_url.replacen("http", "ws", 1);
        format!(
            "\nTidings dev is running: gateway + publisher + host metrics, in-memory broker (no Redis).\n\n  \
             Dashboard   {base}/#token={token}\n  \
             WebSocket   websocat '{ws_url}/ws?token={token}'\n  \
             Publish     curl -X POST {base}/v1/workspaces/dev/events -H 'Authorization: Bearer {pt}' -H 'Content-Type: application/json' -d '{{\"type\":\"notification\",\"data\":{{\"title\":\"Hello\",\"message\":\"from curl\",\"level\":\"info\"}}}}'\n  \
             Token       {token}\n              (workspace dev, valid 24 h; mint others with TIDINGS_JWT_SECRET={secret} tidings token --workspace W)\n",
            base = self.base_url,
            token = self.token,
            pt = self.publish_token,
            secret = self.jwt_secret,
        )
    }
}

/// Serves everything on `listener` until `shutdown`, then drains. `on_ready`
/// receives the URLs and secrets once the listener serves.
pub async fn run(
    args: DevArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(&DevInfo),
) -> anyhow::Result<()> {
    args.validate()?;
    let jwt_keys = args.gateway.key_source(Some(random_secret())).map_err(crate::UsageError)?;
    let publish_token = args.publish_token.clone().unwrap_or_else(random_secret);
    let mut config = args.gateway.to_config(jwt_keys.clone());
    config.dashboard = args.gateway.dashboard.unwrap_or(true);

    let registry = prometheus::Registry::new();
    let gateway_metrics = GatewayMetrics::register(&registry)?;
    let publisher_metrics = PublisherMetrics::register(&registry)?;
    register_process_metrics(&registry)?;

    let memory = Arc::new(MemoryBroker::new(config.history_size));
    let node = Node::new(config, gateway_metrics, |hub: Arc<dyn MessageHandler>| {
        memory.set_handler(hub);
        Ok(memory.clone() as Arc<dyn Broker>)
    })?;
    let publisher = Publisher::new(
        args.webhooks.to_config(publish_token.clone()).map_err(|e| crate::UsageError(e.to_string()))?,
        memory.clone(),
        publisher_metrics,
    );
    let app = server::router(node.clone(), registry).merge(tidings_publisher::api_router(publisher));

    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    node.verifier.warm_up().await;
    // A ready-made token only when Tidings holds the signing secret; with a PEM
    // key or JWKS, tokens come from the identity provider.
    let (jwt_secret, token) = match &jwt_keys {
        tidings_gateway::keys::KeySource::Secret(secret) => {
            let claims = crate::token::claims("dev", "dev-user", DEV_TOKEN_TTL, None);
            (secret.clone(), tidings_token::sign_hs256(secret, &claims).context("signing the dev token")?)
        }
        _ => (String::new(), "<a token from your identity provider>".to_string()),
    };
    on_ready(&DevInfo { base_url: format!("http://{host}:{}", addr.port()), jwt_secret, publish_token, token });

    let stop_metrics = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(tidings_publisher::host_metrics::run(
        node.broker.clone(),
        args.metrics_workspace()?,
        args.host_metrics.interval(),
        stop_metrics.clone(),
    ));
    tasks.close();
    let served = server::serve(listener, app, node, shutdown).await;
    stop_metrics.cancel();
    tasks.wait().await;
    served.context("serving")
}

pub fn main(args: DevArgs) -> anyhow::Result<()> {
    args.validate()?;
    let _telemetry = tidings_process::telemetry::init("tidings", &args.serve.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listen = args.serve.listen_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let listener = tidings_process::listen(listen).with_context(|| format!("cannot listen on {listen}"))?;
        run(args, listener, shutdown_signal(), |info| {
            // A closed stdout (piped into `head`, say) must not stop the server.
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{}", info.banner());
        })
        .await
    })?;
    tracing::info!("stopped");
    Ok(())
}
