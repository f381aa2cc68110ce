//! Argo CD notifications (webhook service with the template documented in
//! `docs/webhooks.md`) → `deployment_update` for the sync and `health_update`
//! for the application's health.

use serde_json::{Value, json};

use super::{Draft, Parsed, WebhookError};
use crate::routes::Subject;

fn text(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().filter(|s| !s.is_empty()).map(String::from)
}

/// Sync operation phase → the spec's deployment status.
pub fn deployment_status(phase: Option<&str>) -> &'static str {
    match phase {
        Some("Running") => "in_progress",
        Some("Succeeded") => "success",
        Some("Failed") | Some("Error") => "failed",
        Some("Terminating") => "cancelled",
        _ => "queued",
    }
}

/// Application health → the spec's health level.
pub fn health_level(health: &str) -> &'static str {
    match health {
        "Healthy" | "Progressing" | "Suspended" => "info",
        "Degraded" | "Missing" => "error",
        _ => "warning", // Unknown
    }
}

pub fn parse(body: &[u8]) -> Result<Parsed, WebhookError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::BadRequest(format!("body is not JSON (is the template's body valid JSON?): {e}")))?;
    let app = text(&v, "app").ok_or_else(|| WebhookError::BadRequest("missing app".into()))?;
    let revision = text(&v, "revision").or_else(|| text(&v, "targetRevision")).unwrap_or_default();
    let phase = text(&v, "operationPhase");
    let status = deployment_status(phase.as_deref());
    let started = text(&v, "startedAt").unwrap_or_else(tidings_protocol::timestamp::now_rfc3339);
    let mut deployment = json!({
        "id": format!("{app}@{}", if revision.is_empty() { started.as_str() } else { revision.as_str() }),
        "version": text(&v, "targetRevision").map_or_else(|| revision.clone(), |t| if t == "HEAD" { revision.clone() } else { t }),
        // Argo CD has no environment; the destination namespace is the closest thing.
        "environment": text(&v, "destinationNamespace").unwrap_or_else(|| "default".into()),
        "status": status,
        "start_time": started,
        "commit": revision,
    });
    if let Some(finished) = text(&v, "finishedAt").filter(|_| matches!(status, "success" | "failed" | "cancelled")) {
        deployment["end_time"] = json!(finished);
    }
    if let Some(url) = text(&v, "url") {
        deployment["url"] = json!(url);
    }
    let mut events = vec![Draft { event_type: "deployment_update", data: json!({ "deployment": deployment }) }];
    if let Some(health) = text(&v, "healthStatus") {
        let sync = text(&v, "syncStatus").unwrap_or_else(|| "Unknown".into());
        let when = text(&v, "finishedAt").or_else(|| text(&v, "startedAt")).unwrap_or_else(tidings_protocol::timestamp::now_rfc3339);
        events.push(Draft {
            event_type: "health_update",
            data: json!({ "health": { "level": health_level(&health), "message": format!("{app} is {health} (sync: {sync})"), "timestamp": when } }),
        });
    }
    Ok(Parsed::Events { subject: Subject { argocd_app: Some(app), ..Subject::default() }, events })
}
