//! `POST /v1/revocations`: revokes a token id on every gateway (SPEC §4, §5).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::Publisher;
use crate::publish::{PublishError, authorized};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocation {
    jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until a minute
    /// after it (30 days without it).
    exp: Option<u64>,
}

/// `{"jti":"…","exp":UNIX}` → 202 `{"revoked":"…"}`: new connections with the
/// token are refused (401) and live ones closed 4003, on every gateway.
pub async fn revoke(State(publisher): State<Arc<Publisher>>, headers: HeaderMap, body: Bytes) -> Response {
    match revoke_inner(&publisher, &headers, &body).await {
        Ok(jti) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "revoked": jti }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(publisher: &Publisher, headers: &HeaderMap, body: &[u8]) -> Result<String, PublishError> {
    if !authorized(publisher, headers) {
        return Err(PublishError::Unauthorized);
    }
    let request: Revocation =
        serde_json::from_slice(body).map_err(|e| PublishError::BadBody(format!("body must be {{\"jti\":\"…\",\"exp\":UNIX}}: {e}")))?;
    tidings_protocol::keys::validate_jti(&request.jti).map_err(PublishError::BadBody)?;
    publisher
        .broker
        .revoke(&request.jti, request.exp)
        .await
        .map_err(|e| PublishError::Unavailable { message: e.to_string(), published: Vec::new() })?;
    tracing::info!(jti = %request.jti, "token revoked");
    Ok(request.jti)
}
