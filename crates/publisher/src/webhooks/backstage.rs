//! Backstage catalog history events (`@backstage/plugin-catalog-backend-module-history`)
//! → `entity_update`. Accepts the events-bus envelope `{topic, eventPayload, metadata}`
//! or a bare `CatalogHistoryEvent`, both spellings of the id (`eventId`, `id`),
//! and `entityJson` as an object or a JSON string. Catalog processing errors
//! become an `error` `health_update` of the entity; location events are not mapped.

use serde_json::{Value, json};

use super::{Draft, Parsed, WebhookError};
use crate::routes::Subject;

/// The delivery's Backstage event id, for de-duplication.
pub fn event_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let event = if v.get("eventPayload").is_some() { &v["eventPayload"] } else { &v };
    match event.get("eventId").or_else(|| event.get("id"))? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The catalog's processing errors for an entity (a broken `catalog-info.yaml`).
const CATALOG_ERRORS_TOPIC: &str = "experimental.catalog.errors";

/// Catalog errors → an `error` `health_update` of the entity, so the dashboard
/// shows a broken descriptor where the entity is shown.
fn catalog_errors(payload: &Value) -> Result<Parsed, WebhookError> {
    let entity = payload["entity"].as_str().ok_or_else(|| WebhookError::BadRequest("catalog errors without an entity".into()))?;
    let entity_ref = tidings_protocol::event::normalize_entity_ref(entity).map_err(|e| WebhookError::BadRequest(e.to_string()))?;
    let messages: Vec<&str> =
        payload["errors"].as_array().map(|errors| errors.iter().filter_map(|e| e["message"].as_str()).collect()).unwrap_or_default();
    let message = if messages.is_empty() { "the catalog could not process this entity".to_string() } else { messages.join("; ") };
    let health = json!({ "health": { "level": "error", "message": message, "timestamp": tidings_protocol::timestamp::now_rfc3339() } });
    let subject = Subject { backstage_entity: Some(entity_ref), ..Subject::default() };
    Ok(Parsed::Events { subject, events: vec![Draft { event_type: "health_update", data: health }] })
}

/// Events-bus topics that carry catalog history events (current and early name).
const HISTORY_TOPICS: &[&str] = &["backstage.catalog.history.event", "catalog.history"];

pub fn parse(body: &[u8]) -> Result<Parsed, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| WebhookError::BadRequest(format!("body is not JSON: {e}")))?;
    if v.get("items").is_some() {
        return Err(WebhookError::BadRequest("post one history event per request (each item of the history API's page)".into()));
    }
    if v["topic"] == CATALOG_ERRORS_TOPIC {
        return catalog_errors(&v["eventPayload"]);
    }
    if let Some(topic) = v["topic"].as_str().filter(|t| !HISTORY_TOPICS.contains(t)) {
        // Another events-bus topic (catalog errors, conflicts…): acknowledged, not mapped.
        return Ok(Parsed::Ignored { kind: topic.to_string() });
    }
    let event = if v.get("eventPayload").is_some() { &v["eventPayload"] } else { &v };
    let event_type = event["eventType"].as_str().ok_or_else(|| WebhookError::BadRequest("missing eventType".into()))?;
    let change_type = match event_type {
        "entity_created" => "created",
        "entity_updated" => "updated",
        "entity_deleted" => "deleted",
        other => return Ok(Parsed::Ignored { kind: other.to_string() }),
    };
    let entity = match &event["entityJson"] {
        Value::String(s) => serde_json::from_str(s).map_err(|e| WebhookError::BadRequest(format!("entityJson is not JSON: {e}")))?,
        other => other.clone(),
    };
    let entity_ref = event["entityRef"]
        .as_str()
        .map(String::from)
        .or_else(|| {
            let kind = entity["kind"].as_str()?;
            let namespace = entity["metadata"]["namespace"].as_str().unwrap_or("default");
            Some(format!("{kind}:{namespace}/{}", entity["metadata"]["name"].as_str()?))
        })
        .ok_or_else(|| WebhookError::BadRequest("neither entityRef nor entityJson names the entity".into()))?;
    let entity_ref = tidings_protocol::event::normalize_entity_ref(&entity_ref).map_err(|e| WebhookError::BadRequest(e.to_string()))?;
    let (kind, rest) = entity_ref.split_once(':').unwrap_or_default();
    let (namespace, name) = rest.split_once('/').unwrap_or_default();
    // The entity's own casing where the body has it (refs are stored lower-case).
    let data = json!({
        "kind": entity["kind"].as_str().unwrap_or(kind),
        "namespace": entity["metadata"]["namespace"].as_str().unwrap_or(namespace),
        "name": entity["metadata"]["name"].as_str().unwrap_or(name),
        "change_type": change_type,
        "entity": entity,
    });
    let annotation = |key: &str| entity["metadata"]["annotations"][key].as_str().map(String::from);
    let subject = Subject {
        backstage_entity: Some(entity_ref),
        repository: annotation("github.com/project-slug"),
        gitlab_project: annotation("gitlab.com/project-slug"),
        ..Subject::default()
    };
    Ok(Parsed::Events { subject, events: vec![Draft { event_type: "entity_update", data }] })
}
