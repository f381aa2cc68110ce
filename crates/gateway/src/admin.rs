//! Liveness, readiness and metrics endpoints.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::Registry;
use tidings_protocol::codes::error;

use crate::error::ApiError;
use crate::node::Node;

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response()
}

/// `GET /readyz`: 200 when the broker answers and the process is not draining.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        return ApiError::unavailable("draining").into_response();
    }
    if !node.broker.is_ready().await {
        return ApiError::unavailable("broker unreachable").into_response();
    }
    (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"}))).into_response()
}

/// `GET /metrics`: Prometheus text exposition. Gathering reads /proc (the
/// process collector), blocking file I/O, so it runs off the runtime's workers.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    match tokio::task::spawn_blocking(move || crate::metrics::render(&registry)).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error::INTERNAL, format!("gathering metrics failed: {e}")).into_response()
        }
    }
}
