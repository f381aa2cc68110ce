//! Webhook sources: each turns (headers, raw body) into events, as a pure
//! function; `http.rs` is the thin edge that verifies, routes, de-duplicates
//! and publishes.

pub mod argocd;
pub mod backstage;
pub mod github;
pub mod gitlab;
pub mod http;

use serde_json::Value;

/// What a source made of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A health check from the sender (GitHub `ping`): acknowledged, nothing published.
    Ping,
    /// A kind this source does not map: acknowledged with `published: 0`.
    Ignored { kind: String },
    /// Events to publish, without workspace and entity (routing adds them).
    Events { subject: crate::routes::Subject, events: Vec<Draft> },
}

/// An event before routing: type and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub event_type: &'static str,
    pub data: Value,
}

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
}

/// Lower-case hex decoding, for signatures.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A JSON string or number as text; empty strings count as missing (sources
/// send `""` for unset fields).
pub fn json_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The text at `path` (object keys), if any.
pub fn json_field(v: &Value, path: &[&str]) -> Option<String> {
    json_text(path.iter().fold(v, |v, k| &v[*k]))
}

/// The text at `path`, or a 400 naming it.
pub fn json_required(v: &Value, path: &[&str]) -> Result<String, WebhookError> {
    json_field(v, path).ok_or_else(|| WebhookError::BadRequest(format!("missing {}", path.join("."))))
}
