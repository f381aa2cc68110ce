//! HTTP errors as SPEC §3.1 shapes them: `{"error":{"code":"…","message":"…"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tidings_protocol::codes::error;

use crate::auth::AuthError;
use crate::node::Refusal;

/// An error answered over HTTP.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_secs: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error::BAD_REQUEST, message)
    }

    pub fn forbidden_workspace(workspace_id: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, error::WORKSPACE_FORBIDDEN, format!("the token does not grant workspace {workspace_id:?}"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { retry_after_secs: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error::UNAVAILABLE, message) }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UserCap => {
                Self { retry_after_secs: Some(5), ..Self::new(StatusCode::TOO_MANY_REQUESTS, error::TOO_MANY_CONNECTIONS, r.to_string()) }
            }
            Refusal::Draining | Refusal::AtCapacity | Refusal::Busy => Self::unavailable(r.to_string()),
        }
    }
}

impl From<tidings_broker::BrokerError> for ApiError {
    fn from(e: tidings_broker::BrokerError) -> Self {
        Self::unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = tidings_process::http::error_response(self.status, self.code, self.message);
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
