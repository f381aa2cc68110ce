//! The HTTP publish API: validate every event of the request, then publish them
//! in order through the durable path and answer their ids.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tidings_protocol::Event;
use tidings_protocol::codes::error;
use tracing::Instrument;
use tracing::field::Empty;

use crate::{MAX_EVENTS_PER_REQUEST, Publisher};

/// Why a publish request was refused; `status` is the HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// An event of the body is not valid (`invalid_event`).
    #[error("{0}")]
    BadRequest(String),
    /// The body is not what the endpoint takes (`bad_request`).
    #[error("{0}")]
    BadBody(String),
    #[error("broker unavailable: {message}")]
    Unavailable { message: String, published: Vec<String> },
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            PublishError::Unauthorized => (StatusCode::UNAUTHORIZED, error::UNAUTHORIZED),
            PublishError::BadRequest(_) => (StatusCode::BAD_REQUEST, error::INVALID_EVENT),
            PublishError::BadBody(_) => (StatusCode::BAD_REQUEST, error::BAD_REQUEST),
            PublishError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, error::UNAVAILABLE),
        };
        let mut body = tidings_process::http::error_body(code, self.to_string());
        if let PublishError::Unavailable { published, .. } = &self {
            // Events before the failure were stored; say which, so a retry can skip them.
            body["ids"] = serde_json::json!(published);
        }
        let mut response = tidings_process::http::error_json(status, body);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(crate) fn authorized(publisher: &Publisher, headers: &HeaderMap) -> bool {
    tidings_process::http::bearer_is(headers, &publisher.config.publish_token)
}

/// Parses and validates the body: one event or an array of them, for `workspace_id`.
/// A missing `workspace_id` takes the path's; a different one is refused.
pub fn parse_events(workspace_id: &str, body: &[u8]) -> Result<Vec<Event>, PublishError> {
    tidings_protocol::event::validate_workspace_id(workspace_id).map_err(|e| PublishError::BadRequest(e.to_string()))?;
    let value: Value = serde_json::from_slice(body).map_err(|e| PublishError::BadRequest(format!("body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        item @ Value::Object(_) => vec![item],
        _ => return Err(PublishError::BadRequest("body must be an event object or an array of events".into())),
    };
    if items.is_empty() {
        return Err(PublishError::BadRequest("no events in the body".into()));
    }
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(PublishError::BadRequest(format!("at most {MAX_EVENTS_PER_REQUEST} events per request")));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let at = |msg: String| PublishError::BadRequest(format!("event {i}: {msg}"));
            let Value::Object(fields) = &mut item else { return Err(at("not a JSON object".into())) };
            if fields.contains_key("id") {
                return Err(at("id is assigned by the broker; leave it out".into()));
            }
            fields.entry("workspace_id").or_insert_with(|| Value::String(workspace_id.to_string()));
            let mut event: Event = serde_json::from_value(item).map_err(|e| at(e.to_string()))?;
            if event.workspace_id != workspace_id {
                return Err(at(format!("workspace_id {:?} differs from the URL's {workspace_id:?}", event.workspace_id)));
            }
            if event.timestamp.is_none() {
                event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
            }
            event.validate().map_err(|e| at(e.to_string()))?;
            Ok(event)
        })
        .collect()
}

/// `POST /v1/workspaces/{id}/events` → 202 `{"ids":[…]}`.
pub async fn publish(
    State(publisher): State<Arc<Publisher>>,
    Path(workspace_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = publish_inner(&publisher, &workspace_id, &headers, &body).await;
    let label = match &result {
        Ok(_) => "accepted",
        Err(PublishError::Unauthorized) => "unauthorized",
        Err(PublishError::BadRequest(_) | PublishError::BadBody(_)) => "invalid",
        Err(PublishError::Unavailable { .. }) => "unavailable",
    };
    publisher.metrics.publish_requests.with_label_values(&[label]).inc();
    match result {
        Ok(ids) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "ids": ids }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn publish_inner(publisher: &Publisher, workspace_id: &str, headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, PublishError> {
    if !authorized(publisher, headers) {
        return Err(PublishError::Unauthorized);
    }
    let mut events = parse_events(workspace_id, body)?;
    // Continues the caller's trace (its `traceparent` header, else the first
    // event's `trace`); events without a `trace` of their own carry this span's.
    let span = tracing::info_span!("publish", workspace_id, events = events.len(), trace_id = Empty);
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).or_else(|| events.first().and_then(|e| e.trace.as_deref()));
    tidings_process::telemetry::continue_trace(&span, parent);
    if let Some(traceparent) = tidings_process::telemetry::traceparent(&span) {
        for event in events.iter_mut().filter(|e| e.trace.is_none()) {
            event.trace = Some(traceparent.clone());
        }
    }
    publish_events(publisher, events).instrument(span).await
}

async fn publish_events(publisher: &Publisher, events: Vec<Event>) -> Result<Vec<String>, PublishError> {
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        let event_type = event.event_type.clone();
        let started = Instant::now();
        match publisher.broker.publish(event).await {
            Ok(stored) => {
                publisher.metrics.publish_latency.observe(started.elapsed().as_secs_f64());
                publisher.metrics.count_published(&event_type);
                ids.push(stored.id.map(|id| id.to_string()).unwrap_or_default());
            }
            Err(e) => return Err(PublishError::Unavailable { message: e.to_string(), published: ids }),
        }
    }
    Ok(ids)
}

/// `GET /readyz` of the publisher: its broker, as [`Readiness`](crate::Readiness) checks it.
pub async fn readyz(State(publisher): State<Arc<Publisher>>) -> Response {
    let ready = publisher.readiness.check(publisher.broker.as_ref()).await;
    tidings_process::http::readiness((!ready).then_some("broker unreachable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fills_workspace_and_timestamp_and_refuses_bad_events() {
        let events = parse_events("acme", br#"[{"type":"a"},{"type":"b","workspace_id":"acme","entity_ref":"Host:Default/X"}]"#).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].workspace_id, "acme");
        assert!(events[0].timestamp.is_some());
        assert_eq!(events[1].entity_ref.as_deref(), Some("host:default/x"));

        let bad: [(&[u8], &str); 8] = [
            (b"not json", "not JSON"),
            (b"42", "event object"),
            (b"[]", "no events"),
            (br#"[{"type":"a"}, 5]"#, "event 1: not a JSON object"),
            (br#"{"type":"Bad Type"}"#, "type must be"),
            (br#"{"type":"a","workspace_id":"other"}"#, "differs"),
            (br#"{"type":"a","id":"1-0"}"#, "assigned by the broker"),
            (br#"{"type":"metrics_update","data":{"metrics":{}}}"#, "data of a metrics_update"),
        ];
        for (body, want) in bad {
            let err = parse_events("acme", body).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        assert!(parse_events("bad ws", br#"{"type":"a"}"#).is_err());
    }
}
