//! The HTTP pieces every Tidings server shares, each with one definition: the
//! JSON error body (SPEC §3.1), the bearer token of a request, the
//! `/healthz`, `/readyz` and `/metrics` answers, the process metrics, and the
//! JSON shape given to errors produced below the handlers ([`json_errors`]).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::Registry;
use serde_json::Value;
use tidings_protocol::codes::error;

/// `{"error":{"code":…,"message":…}}`; callers may add fields (the publish
/// API names the ids it stored before a failure).
pub fn error_body(code: &str, message: impl Into<String>) -> Value {
    serde_json::json!({ "error": { "code": code, "message": message.into() } })
}

/// An error answer with `body`; a 503 says `Retry-After: 1` (the caller may
/// replace it).
pub fn error_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The SPEC §3.1 error answer.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_json(status, error_body(code, message))
}

/// The token of an `Authorization: Bearer …` header (the scheme in any case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Does the request carry `Authorization: Bearer <expected>`? Compared in
/// constant time.
pub fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    bearer(headers).is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()))
}

/// Compares without an early exit, so timing does not reveal how much of a secret matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))).into_response()
}

/// The `/readyz` answer: 200 `{"status":"ready"}`, or 503 `unavailable` saying why not.
pub fn readiness(not_ready_because: Option<&str>) -> Response {
    match not_ready_because {
        None => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"}))).into_response(),
        Some(why) => error_response(StatusCode::SERVICE_UNAVAILABLE, error::UNAVAILABLE, why),
    }
}

/// `GET /metrics`: Prometheus text exposition. Gathering reads /proc (the
/// process collector), blocking file I/O, so it runs off the runtime's workers.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    match tokio::task::spawn_blocking(move || render_metrics(&registry)).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, error::INTERNAL, format!("gathering metrics failed: {e}")),
    }
}

/// The registry's families in the text exposition format.
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// Adds `tidings_process_*` CPU, memory, descriptors and threads of this process to `registry`.
pub fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "tidings")))
}

/// Gives error answers produced below the handlers (a body over the limit:
/// 413; a request timeout: 503; an unknown route: 404) the JSON shape of every
/// other error, `{"error":{"code":"…","message":"…"}}`. Answers that are
/// already JSON pass untouched. Use with `axum::middleware::map_response`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is larger than allowed"),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the request took too long; try again"),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this endpoint does not take that method"),
        _ => ("bad_request", "the request could not be read"),
    };
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let mut json = error_response(status, code, message);
    if let Some(retry_after) = retry_after.filter(|_| status == StatusCode::SERVICE_UNAVAILABLE) {
        json.headers_mut().insert(header::RETRY_AFTER, retry_after);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_scheme_in_any_case_and_nothing_else() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert!(bearer_is(&with("Bearer abc"), "abc"));
        assert!(!bearer_is(&with("Bearer abd"), "abc"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn a_503_says_when_to_retry() {
        let r = error_response(StatusCode::SERVICE_UNAVAILABLE, error::UNAVAILABLE, "down");
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let r = error_response(StatusCode::BAD_REQUEST, error::BAD_REQUEST, "no");
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
