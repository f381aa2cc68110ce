//! The gateway's router and its serve loop with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use tidings_protocol::codes::error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::deadline::{DeadlineListener, Peer};
use crate::error::ApiError;
use crate::node::Node;
use crate::{admin, http, ws};

/// Time allowed, past the drain period, for the last close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest a plain request (not a stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body a gateway endpoint reads (they are all GETs).
pub const MAX_REQUEST_BODY: usize = 16 * 1024;

/// Every gateway endpoint of SPEC §3.1. `registry` backs `/metrics`.
pub fn router(node: Arc<Node>, registry: Registry) -> Router {
    // Plain request/response endpoints get a deadline; the WebSocket and SSE
    // streams live as long as their connection.
    let plain = Router::new()
        .route("/v1/workspaces/{id}/events", get(http::poll))
        .route("/v1/workspaces/{id}/latest", get(http::latest))
        .route("/healthz", get(tidings_process::http::healthz))
        .route("/readyz", get(admin::readyz))
        .with_state(node.clone())
        .merge(Router::new().route("/metrics", get(tidings_process::http::metrics)).with_state(registry))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT));
    let dashboard = node.config.dashboard;
    let streams = Router::new().route("/ws", get(ws::upgrade)).route("/v1/workspaces/{id}/events/stream", get(http::sse)).with_state(node);
    let router = plain.merge(streams);
    let router = if dashboard { router.merge(crate::dashboard::router()) } else { router };
    router
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY))
        .fallback(not_found)
        .layer(axum::middleware::map_response(tidings_process::http::json_errors))
}

/// JSON 404 for unknown paths.
pub async fn not_found() -> impl IntoResponse {
    ApiError::new(StatusCode::NOT_FOUND, error::NOT_FOUND, "no such endpoint")
}

/// Serves `router` on `listener` until `shutdown` completes, then drains: readyz
/// turns 503, new connections are refused, live ones are closed with 1012 over
/// the drain period, and this returns once they are gone (or the period is over).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let stop_http = CancellationToken::new();
    let stop = stop_http.clone();
    // Writes to a peer that stopped reading fail after two heartbeats, as the
    // WebSocket writer's sends do; that is what ends a stalled SSE stream.
    let listener = DeadlineListener::new(listener, node.config.heartbeat * 2);
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move { stop.cancelled().await });
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        result = &mut server => return result.map_err(std::io::Error::other)?,
        _ = shutdown => {}
    }
    tracing::info!(connections = node.hub.total(), drain = ?node.config.drain, "draining");
    node.start_drain();
    node.tasks.close();
    // Every connection holds the tracker while it lives (a WebSocket as its
    // task, an SSE stream by a token), and so does every timer and replay.
    if tokio::time::timeout(node.config.drain + SHUTDOWN_GRACE, node.tasks.wait()).await.is_err() {
        tracing::warn!(remaining = node.hub.total(), "drain period over; closing the rest");
    }
    stop_http.cancel();
    let served = match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.map_err(std::io::Error::other)?,
        Err(_) => Ok(()),
    };
    // Last: the pub/sub connection fed the connections until they were gone.
    if tokio::time::timeout(SHUTDOWN_GRACE, node.broker.close()).await.is_err() {
        tracing::warn!("broker tasks still running at exit");
    }
    served
}
