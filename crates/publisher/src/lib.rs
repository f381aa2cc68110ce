//! The Tidings publisher: turns HTTP publishes (and, next, webhooks) and host
//! metrics into durable events on the broker.
//!
//! Entry points: [`Publisher::new`], [`api_router`] (the publish endpoints alone,
//! which `tidings dev` mounts beside the gateway), [`router`] (with admin
//! endpoints), and [`host_metrics::run`].

pub mod host_metrics;
pub mod metrics;
pub mod publish;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tidings_broker::Broker;
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
}

/// Shared state of the publish endpoints.
pub struct Publisher {
    pub config: PublisherConfig,
    pub broker: Arc<dyn Broker>,
    pub metrics: PublisherMetrics,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(config: PublisherConfig, broker: Arc<dyn Broker>, metrics: PublisherMetrics) -> Arc<Self> {
        Arc::new(Self { config, broker, metrics })
    }
}

/// `POST /v1/workspaces/{id}/events`.
pub fn api_router(publisher: Arc<Publisher>) -> Router {
    let limit = publisher.config.max_body_bytes;
    Router::new()
        .route("/v1/workspaces/{id}/events", post(publish::publish))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .with_state(publisher)
}

/// Longest a publish request may take (reading the body and storing every event).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The publish API plus `/healthz`, `/readyz` and `/metrics`.
pub fn router(publisher: Arc<Publisher>, registry: prometheus::Registry) -> Router {
    let admin = Router::new().route("/healthz", get(publish::healthz)).route("/readyz", get(publish::readyz)).with_state(publisher.clone());
    let metrics = Router::new().route("/metrics", get(publish::metrics)).with_state(registry);
    api_router(publisher).merge(admin).merge(metrics)
}
