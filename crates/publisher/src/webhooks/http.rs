//! The HTTP edge of the webhook sources: credential check on the raw bytes,
//! parse, route, exactly-once claim, publish (SPEC §5).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tidings_broker::{DeliveryClaim, PublishedOnce};
use tidings_process::http::error_response;
use tidings_protocol::Event;
use tidings_protocol::codes::error;
use tracing::Instrument;
use tracing::field::Empty;

use super::{Draft, Parsed, WebhookError, argocd, backstage, github, gitlab};
use crate::Publisher;
use crate::routes::Destination;

#[derive(Debug, Default, Deserialize)]
pub struct WebhookQuery {
    /// Routes the delivery to this workspace, whatever the routes file says.
    pub workspace_id: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request parts every webhook endpoint takes.
type Request = (State<Arc<Publisher>>, Result<Query<WebhookQuery>, QueryRejection>, HeaderMap, Bytes);

/// The common edge of a source: 404 when its credential is unset, the query,
/// then `parse` (which checks the credential on the raw bytes), then [`handle`].
async fn webhook(
    (State(publisher), query, headers, body): Request,
    source: &'static str,
    name: &str,
    credential: impl FnOnce(&crate::PublisherConfig) -> Option<String>,
    parse: impl FnOnce(&str, &HeaderMap, &[u8]) -> Result<(Parsed, Option<String>), WebhookError>,
) -> Response {
    let Some(credential) = credential(&publisher.config) else {
        return error_response(StatusCode::NOT_FOUND, error::NOT_FOUND, format!("the {name} webhook is not configured"));
    };
    let Ok(Query(query)) = query else {
        return error_response(StatusCode::BAD_REQUEST, error::BAD_REQUEST, "malformed query string");
    };
    // The root of a delivery's trace, or a child of the sender's `traceparent`.
    let span = tracing::info_span!("webhook", source, result = Empty, trace_id = Empty);
    tidings_process::telemetry::continue_trace(&span, header_str(&headers, "traceparent"));
    let (result, response) = handle(&publisher, source, query, &headers, &body, |headers, body| parse(&credential, headers, body))
        .instrument(span.clone())
        .await;
    span.record("result", result);
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "webhook handled"));
    publisher.metrics.webhooks.with_label_values(&[source, result]).inc();
    response
}

/// `POST /webhooks/github`.
pub async fn github(
    state: State<Arc<Publisher>>,
    query: Result<Query<WebhookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    webhook(
        (state, query, headers, body),
        "github",
        "GitHub",
        |c| c.github_secret.clone(),
        |secret, headers, body| {
            github::verify(secret, header_str(headers, "x-hub-signature-256"), body)?;
            let event = header_str(headers, "x-github-event").ok_or_else(|| WebhookError::BadRequest("missing X-GitHub-Event".into()))?;
            Ok((github::parse(event, body)?, header_str(headers, "x-github-delivery").map(String::from)))
        },
    )
    .await
}

/// `POST /webhooks/gitlab`.
pub async fn gitlab(
    state: State<Arc<Publisher>>,
    query: Result<Query<WebhookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    webhook(
        (state, query, headers, body),
        "gitlab",
        "GitLab",
        |c| c.gitlab_token.clone(),
        |token, headers, body| {
            gitlab::verify(token, header_str(headers, "x-gitlab-token"))?;
            let event = header_str(headers, "x-gitlab-event").ok_or_else(|| WebhookError::BadRequest("missing X-Gitlab-Event".into()))?;
            // Idempotency-Key survives retries; older GitLab only has the event UUID.
            let delivery = header_str(headers, "idempotency-key").or_else(|| header_str(headers, "x-gitlab-event-uuid"));
            Ok((gitlab::parse(event, body)?, delivery.map(String::from)))
        },
    )
    .await
}

/// The `Authorization: Bearer` token of a request, checked in constant time.
fn check_bearer(expected: &str, headers: &HeaderMap) -> Result<(), WebhookError> {
    if header_str(headers, "authorization").is_none() {
        return Err(WebhookError::Unauthorized("missing Authorization: Bearer".into()));
    }
    if !tidings_process::http::bearer_is(headers, expected) {
        return Err(WebhookError::Unauthorized("wrong bearer token".into()));
    }
    Ok(())
}

/// `POST /webhooks/backstage`.
pub async fn backstage(
    state: State<Arc<Publisher>>,
    query: Result<Query<WebhookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    webhook(
        (state, query, headers, body),
        "backstage",
        "Backstage",
        |c| c.backstage_token.clone(),
        |token, headers, body| {
            check_bearer(token, headers)?;
            Ok((backstage::parse(body)?, backstage::event_id(body)))
        },
    )
    .await
}

/// `POST /webhooks/argocd`.
pub async fn argocd(
    state: State<Arc<Publisher>>,
    query: Result<Query<WebhookQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    webhook(
        (state, query, headers, body),
        "argocd",
        "Argo CD",
        |c| c.argocd_token.clone(),
        |token, headers, body| {
            check_bearer(token, headers)?;
            // No delivery id: the body hash de-duplicates retries.
            Ok((argocd::parse(body)?, None))
        },
    )
    .await
}

/// Shared by every source once its own checks and parsing are done.
async fn handle(
    publisher: &Publisher,
    source: &str,
    query: WebhookQuery,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&HeaderMap, &[u8]) -> Result<(Parsed, Option<String>), WebhookError>,
) -> (&'static str, Response) {
    let (parsed, delivery) = match parse(headers, body) {
        Ok(p) => p,
        Err(WebhookError::Unauthorized(m)) => return ("unauthorized", error_response(StatusCode::UNAUTHORIZED, error::UNAUTHORIZED, m)),
        Err(WebhookError::BadRequest(m)) => return ("invalid", error_response(StatusCode::BAD_REQUEST, error::BAD_REQUEST, m)),
    };
    let (subject, drafts) = match parsed {
        Parsed::Ping => return ("ping", (StatusCode::OK, Json(json!({ "ok": true }))).into_response()),
        Parsed::Ignored { kind } => {
            let body = json!({ "published": 0, "reason": format!("event kind {kind:?} is not mapped") });
            return ("ignored", (StatusCode::ACCEPTED, Json(body)).into_response());
        }
        Parsed::Events { subject, events } => (subject, events),
    };
    if let Some(w) = &query.workspace_id
        && let Err(e) = tidings_protocol::event::validate_workspace_id(w)
    {
        return ("invalid", error_response(StatusCode::BAD_REQUEST, error::BAD_REQUEST, format!("workspace_id: {e}")));
    }
    let Some(mut destination) = publisher.config.routes.route(&subject, query.workspace_id.as_deref()) else {
        return ("no_route", (StatusCode::ACCEPTED, Json(json!({ "published": 0, "reason": "no route" }))).into_response());
    };
    // A repository the catalog has claimed (Backstage `github.com/project-slug`)
    // takes that entity's ref over the default template; an explicit template wins.
    if !destination.explicit_entity_ref
        && let Some((link_source, key)) = link_key(source, &subject)
        && let Ok(Some(linked)) = publisher.deliveries.linked_entity(link_source, &key).await
    {
        destination.entity_ref = Some(linked);
    }
    // Sources without a delivery id are de-duplicated by the hash of the body.
    let delivery = delivery.unwrap_or_else(|| Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect());
    let deleted = drafts.iter().any(|d| d.data["change_type"] == "deleted");
    let mut events = match routed_events(drafts, &destination) {
        Ok(events) => events,
        Err(e) => return ("invalid", error_response(StatusCode::BAD_REQUEST, error::BAD_REQUEST, e.to_string())),
    };
    // Claim and publish are one step in Redis. On an error (even a timeout
    // after the step took effect) nothing is released: the sender's retry is a
    // duplicate if the events were stored and published if not — exactly once.
    let claim = DeliveryClaim { source: source.to_string(), delivery };
    let span = tracing::info_span!("publish", workspace_id = %destination.workspace_id, events = events.len(), trace_id = Empty);
    tidings_process::telemetry::record_trace_id(&span);
    // The gateway's spans continue from here, through Redis.
    let traceparent = tidings_process::telemetry::traceparent(&span);
    for event in &mut events {
        event.trace = traceparent.clone();
    }
    let stored = match publisher.deliveries.publish_once(&claim, events).instrument(span).await {
        Ok(PublishedOnce::Published(stored)) => stored,
        Ok(PublishedOnce::Duplicate) => return ("duplicate", (StatusCode::OK, Json(json!({ "duplicate": true }))).into_response()),
        Err(e) => return ("unavailable", error_response(StatusCode::SERVICE_UNAVAILABLE, error::UNAVAILABLE, e.to_string())),
    };
    let mut ids = Vec::with_capacity(stored.len());
    for event in &stored {
        publisher.metrics.count_published(&event.event_type);
        ids.push(event.id.map(|i| i.to_string()).unwrap_or_default());
    }
    if source == "backstage" {
        learn_links(publisher, &subject, deleted).await;
    }
    ("published", (StatusCode::ACCEPTED, Json(json!({ "published": ids.len(), "ids": ids }))).into_response())
}

/// The drafts of one delivery as events of their destination, every one
/// validated before any is published, so a 400 never follows a partial publish.
fn routed_events(drafts: Vec<Draft>, destination: &Destination) -> Result<Vec<Event>, tidings_protocol::event::ValidationError> {
    drafts
        .into_iter()
        .map(|draft| {
            let mut event = Event::new(draft.event_type, destination.workspace_id.clone(), draft.data);
            event.entity_ref = destination.entity_ref.clone();
            event.timestamp = Some(tidings_protocol::timestamp::now_rfc3339());
            event.validate()?;
            Ok(event)
        })
        .collect()
}

/// Which catalog link a source's subject would use: GitHub repositories and
/// GitLab projects, by lower-cased path.
fn link_key(source: &str, subject: &crate::routes::Subject) -> Option<(&'static str, String)> {
    match source {
        "github" => subject.repository.as_ref().map(|r| ("github", r.to_lowercase())),
        "gitlab" => subject.gitlab_project.as_ref().map(|p| ("gitlab", p.to_lowercase())),
        _ => None,
    }
}

/// Records (or, for a deleted entity, forgets) the repositories a catalog
/// entity claims through its `github.com/project-slug` / `gitlab.com/project-slug`
/// annotations. Best effort: a failure only means the default entity ref is used.
async fn learn_links(publisher: &Publisher, subject: &crate::routes::Subject, deleted: bool) {
    let Some(entity_ref) = subject.backstage_entity.as_deref() else { return };
    for (link_source, key) in [("github", &subject.repository), ("gitlab", &subject.gitlab_project)] {
        if let Some(key) = key {
            let target = (!deleted).then_some(entity_ref);
            if let Err(e) = publisher.deliveries.link_entity(link_source, &key.to_lowercase(), target).await {
                tracing::warn!(error = %e, "could not record the catalog link of {key}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_invalid_draft_refuses_the_whole_delivery() {
        let destination = Destination { workspace_id: "acme".into(), entity_ref: None, explicit_entity_ref: false };
        let good = Draft { event_type: "notification", data: json!({"title": "t", "message": "m", "level": "info"}) };
        // A well-known type whose data does not fit its schema.
        let bad = Draft { event_type: "deployment_update", data: json!({"deployment": "not an object"}) };
        assert_eq!(routed_events(vec![good.clone()], &destination).map(|e| e.len()).ok(), Some(1));
        assert!(routed_events(vec![good, bad], &destination).is_err(), "nothing of the delivery is published");
    }
}
