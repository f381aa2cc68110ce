//! The gateway's readiness; `/healthz` and `/metrics` are the shared
//! [`tidings_process::http`] handlers.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use tidings_process::http::readiness;

use crate::node::Node;

/// `GET /readyz`: 200 when the broker answers and the process is not draining.
pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        return readiness(Some("draining"));
    }
    readiness((!node.broker.is_ready().await).then_some("broker unreachable"))
}
