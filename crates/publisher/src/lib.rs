//! The Tidings publisher: turns HTTP publishes, webhooks (GitHub, GitLab,
//! Backstage, Argo CD) and host metrics into durable events on the broker.
//!
//! Entry points: [`Publisher::new`], [`api_router`] (the publish endpoints alone,
//! which `tidings dev` mounts beside the gateway), [`router`] (with admin
//! endpoints), and [`host_metrics::run`].

pub mod host_metrics;
pub mod metrics;
pub mod publish;
pub mod revoke;
pub mod routes;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tidings_broker::{Broker, DeliveryStore, RedisBroker};
use tower_http::timeout::TimeoutLayer;

pub use metrics::PublisherMetrics;

/// Largest publish request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most events in one publish request.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Bearer token of the HTTP publish API.
    pub publish_token: String,
    pub max_body_bytes: usize,
    /// `TIDINGS_GITHUB_WEBHOOK_SECRET`; unset = `/webhooks/github` answers 404.
    pub github_secret: Option<String>,
    /// `TIDINGS_GITLAB_WEBHOOK_TOKEN`; unset = `/webhooks/gitlab` answers 404.
    pub gitlab_token: Option<String>,
    /// `TIDINGS_BACKSTAGE_WEBHOOK_TOKEN`; unset = `/webhooks/backstage` answers 404.
    pub backstage_token: Option<String>,
    /// `TIDINGS_ARGOCD_WEBHOOK_TOKEN`; unset = `/webhooks/argocd` answers 404.
    pub argocd_token: Option<String>,
    /// `TIDINGS_ROUTES_FILE`, parsed.
    pub routes: routes::Routes,
}

/// Webhook options, shared by `tidings-publisher` and `tidings dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Secret of the GitHub webhook (`X-Hub-Signature-256`); unset = the endpoint answers 404.
    #[arg(long, env = "TIDINGS_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,
    /// Token GitLab sends in `X-Gitlab-Token`; unset = the endpoint answers 404.
    #[arg(long, env = "TIDINGS_GITLAB_WEBHOOK_TOKEN", hide_env_values = true)]
    pub gitlab_webhook_token: Option<String>,
    /// Bearer token the Backstage forwarder sends; unset = the endpoint answers 404.
    #[arg(long, env = "TIDINGS_BACKSTAGE_WEBHOOK_TOKEN", hide_env_values = true)]
    pub backstage_webhook_token: Option<String>,
    /// Bearer token Argo CD notifications send; unset = the endpoint answers 404.
    #[arg(long, env = "TIDINGS_ARGOCD_WEBHOOK_TOKEN", hide_env_values = true)]
    pub argocd_webhook_token: Option<String>,
    /// TOML file: which workspace receives which webhook's events.
    #[arg(long, env = "TIDINGS_ROUTES_FILE")]
    pub routes_file: Option<std::path::PathBuf>,
}

impl WebhookArgs {
    /// The publisher config these options describe; a bad routes file is an error naming its place.
    pub fn to_config(&self, publish_token: String) -> Result<PublisherConfig, routes::RoutesError> {
        let routes = match &self.routes_file {
            Some(path) => routes::Routes::load(path)?,
            None => routes::Routes::default(),
        };
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Ok(PublisherConfig {
            github_secret: set(&self.github_webhook_secret),
            gitlab_token: set(&self.gitlab_webhook_token),
            backstage_token: set(&self.backstage_webhook_token),
            argocd_token: set(&self.argocd_webhook_token),
            routes,
            ..PublisherConfig::new(publish_token)
        })
    }
}

impl PublisherConfig {
    /// The publish API alone, no webhooks.
    pub fn new(publish_token: impl Into<String>) -> Self {
        Self {
            publish_token: publish_token.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            github_secret: None,
            gitlab_token: None,
            backstage_token: None,
            argocd_token: None,
            routes: routes::Routes::default(),
        }
    }
}

/// What `/readyz` asks.
#[derive(Clone, Default)]
pub enum Readiness {
    /// [`Broker::is_ready`] (the in-memory broker of `tidings dev`, tests).
    #[default]
    Broker,
    /// Only the Redis command connection: publishing needs no pub/sub, so a
    /// pub/sub connection that is down (or not permitted) must not make the
    /// publisher unready.
    RedisCommands(RedisBroker),
}

impl Readiness {
    pub async fn check(&self, broker: &dyn Broker) -> bool {
        match self {
            Readiness::Broker => broker.is_ready().await,
            Readiness::RedisCommands(redis) => redis.commands_ready().await,
        }
    }
}

/// Shared state of the publish endpoints.
pub struct Publisher {
    pub config: PublisherConfig,
    pub broker: Arc<dyn Broker>,
    /// Webhook deliveries published at most once, and entity links.
    pub deliveries: Arc<dyn DeliveryStore>,
    pub metrics: PublisherMetrics,
    pub readiness: Readiness,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher on one store that is both the broker and the delivery store
    /// (the Redis or the in-memory broker).
    pub fn new<S: Broker + DeliveryStore>(config: PublisherConfig, store: Arc<S>, metrics: PublisherMetrics) -> Arc<Self> {
        Self::with_stores(config, store.clone(), store, metrics, Readiness::Broker)
    }

    pub fn with_stores(
        config: PublisherConfig,
        broker: Arc<dyn Broker>,
        deliveries: Arc<dyn DeliveryStore>,
        metrics: PublisherMetrics,
        readiness: Readiness,
    ) -> Arc<Self> {
        Arc::new(Self { config, broker, deliveries, metrics, readiness })
    }
}

/// `POST /v1/workspaces/{id}/events`.
pub fn api_router(publisher: Arc<Publisher>) -> Router {
    let limit = publisher.config.max_body_bytes;
    Router::new()
        .route("/v1/workspaces/{id}/events", post(publish::publish))
        .route("/v1/revocations", post(revoke::revoke))
        .route("/webhooks/github", post(webhooks::http::github))
        .route("/webhooks/gitlab", post(webhooks::http::gitlab))
        .route("/webhooks/backstage", post(webhooks::http::backstage))
        .route("/webhooks/argocd", post(webhooks::http::argocd))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(axum::middleware::map_response(tidings_process::http::json_errors))
        .with_state(publisher)
}

/// Longest a publish request may take (reading the body and storing every event).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The publish API plus `/healthz`, `/readyz` and `/metrics`.
pub fn router(publisher: Arc<Publisher>, registry: prometheus::Registry) -> Router {
    let admin = Router::new()
        .route("/healthz", get(tidings_process::http::healthz))
        .route("/readyz", get(publish::readyz))
        .with_state(publisher.clone())
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT));
    let metrics = Router::new().route("/metrics", get(tidings_process::http::metrics)).with_state(registry);
    // An unknown path answers the JSON 404 too (`tidings dev` gets the gateway's).
    api_router(publisher)
        .merge(admin)
        .merge(metrics)
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::map_response(tidings_process::http::json_errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn client_chosen_types_share_one_other_series() {
        let registry = prometheus::Registry::new();
        let metrics = PublisherMetrics::register(&registry).unwrap();
        let broker = Arc::new(tidings_broker::MemoryBroker::new(100));
        let app = router(Publisher::new(PublisherConfig::new("t"), broker, metrics), registry);
        let mut events: Vec<serde_json::Value> = (0..50).map(|i| serde_json::json!({"type": format!("whim_{i}")})).collect();
        events.push(serde_json::json!({"type": "notification", "data": {"title": "t", "message": "m", "level": "info"}}));
        let publish = Request::post("/v1/workspaces/acme/events")
            .header("authorization", "Bearer t")
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&events).unwrap()))
            .unwrap();
        assert_eq!(app.clone().oneshot(publish).await.unwrap().status(), StatusCode::ACCEPTED);
        let response = app.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tidings_events_published_total{")).collect();
        assert_eq!(series.len(), tidings_protocol::payloads::WELL_KNOWN_TYPES.len() + 1, "one series per known type and other: {text}");
        let counted: Vec<&str> = series.iter().copied().filter(|l| !l.ends_with(" 0")).collect();
        assert_eq!(
            counted,
            ["tidings_events_published_total{type=\"notification\"} 1", "tidings_events_published_total{type=\"other\"} 50"],
            "{text}"
        );
    }
}
