//! Request checks shared by every transport: token lookup, what the token
//! grants, origin, and the list/id query parameters.

use axum::http::{HeaderMap, header};
use tidings_protocol::event::validate_workspace_id;
use tidings_protocol::{EventId, Filter};

use tidings_token::Claims;

use crate::auth::AuthError;
use crate::config::split_list;
use crate::error::ApiError;
use crate::node::Node;

/// A verified token and the workspace it was used for.
#[derive(Debug, Clone)]
pub struct Access {
    pub claims: Claims,
    pub workspace_id: String,
}

/// Verifies `token`, refuses a revoked one, and checks it grants `requested`
/// (or, without one, the token's own `workspace_id`).
pub async fn authorize(node: &Node, token: Option<&str>, requested: Option<&str>) -> Result<Access, ApiError> {
    let claims = verify_live(node, token.ok_or(AuthError::Missing)?).await?;
    let workspace_id = match requested.or(claims.workspace_id.as_deref()) {
        Some(w) => w.to_string(),
        None => return Err(ApiError::bad_request("workspace_id is required: the token names none")),
    };
    validate_workspace_id(&workspace_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !claims.allows(&workspace_id) {
        return Err(ApiError::forbidden_workspace(&workspace_id));
    }
    Ok(Access { claims, workspace_id })
}

/// Verifies a token and checks it is not revoked. Without Redis answering, a
/// token with a `jti` cannot be checked and is refused with 503 (fail closed).
pub async fn verify_live(node: &Node, token: &str) -> Result<Claims, ApiError> {
    let claims = node.verifier.verify(token).await?;
    if let Some(jti) = &claims.jti
        && node.broker.is_revoked(jti).await?
    {
        return Err(AuthError::Revoked.into());
    }
    Ok(claims)
}

/// 403 unless the browser's `Origin` is allowed. Requests without `Origin`
/// (servers, CLIs) are not browsers and pass.
pub fn check_origin(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let (Some(allowed), Some(origin)) = (&node.config.allowed_origins, headers.get(header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            tidings_protocol::codes::error::ORIGIN_FORBIDDEN,
            format!("origin {origin:?} is not allowed"),
        ))
    }
}

/// `since=` as an event id.
pub fn parse_since(since: Option<&str>) -> Result<Option<EventId>, ApiError> {
    since.filter(|s| !s.is_empty()).map(|s| s.parse::<EventId>().map_err(|e| ApiError::bad_request(format!("since: {e}")))).transpose()
}

/// `event_types=a,b&entity_refs=x,y` as a filter.
pub fn parse_filter(event_types: Option<&str>, entity_refs: Option<&str>) -> Result<Filter, ApiError> {
    Filter::from_lists(event_types.map(split_list), entity_refs.map(split_list)).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A token's `exp` as the RFC 3339 `expires_at` of `connected` and `authenticated`.
pub fn expires_at(exp: u64) -> String {
    // Clamp to year 9999 so an absurd `exp` still formats.
    time::OffsetDateTime::from_unix_timestamp(exp.min(253_402_300_799) as i64)
        .map(tidings_protocol::timestamp::format_rfc3339)
        .unwrap_or_default()
}
