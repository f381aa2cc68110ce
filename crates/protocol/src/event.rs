//! The event envelope of SPEC §2 and the rules each field must follow.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::EventId;
use crate::payloads;

/// One event, identical on Redis, on the wire and over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EventId>,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// The routing fields of an event, read without materialising `data`: what the
/// gateway needs to filter, order and conflate a message it only forwards.
#[derive(Debug, Clone, Deserialize)]
pub struct EventHeader {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub id: Option<EventId>,
    pub workspace_id: String,
    #[serde(default)]
    pub entity_ref: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    /// The W3C `traceparent` the publisher left, continued by the gateway's spans.
    #[serde(default)]
    pub trace: Option<String>,
}

/// Why an event breaks SPEC §2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("type must be 1-64 characters of a-z 0-9 _ . : - (got {0:?})")]
    EventType(String),
    #[error("workspace_id must be 1-128 characters of A-Z a-z 0-9 _ . - (got {0:?})")]
    WorkspaceId(String),
    #[error("entity_ref must look like kind:namespace/name (got {0:?})")]
    EntityRef(String),
    #[error("timestamp must be RFC 3339 (got {0:?})")]
    Timestamp(String),
    #[error("trace must be a W3C traceparent (got {0:?})")]
    Trace(String),
    #[error("workspace_id {found:?} does not match the workspace {expected:?} it is published to")]
    WorkspaceMismatch { expected: String, found: String },
    #[error("data of a {event_type} event: {reason}")]
    Data { event_type: String, reason: String },
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks an event type: 1–64 chars of `a-z 0-9 _ . : -`.
pub fn validate_event_type(t: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok { Ok(()) } else { Err(ValidationError::EventType(clip(t))) }
}

/// Checks a workspace id: 1–128 chars of `A-Z a-z 0-9 _ . -`.
pub fn validate_workspace_id(w: &str) -> Result<(), ValidationError> {
    let ok = (1..=128).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(ValidationError::WorkspaceId(clip(w))) }
}

/// Checks `kind:namespace/name` and returns it lower-cased, the stored form
/// (refs compare case-insensitively). Each part is non-empty and free of
/// whitespace, `:` and `/` beyond the two separators; at most 512 bytes in all.
pub fn normalize_entity_ref(r: &str) -> Result<String, ValidationError> {
    let bad = || ValidationError::EntityRef(clip(r));
    if r.len() > 512 {
        return Err(bad());
    }
    let (kind, rest) = r.split_once(':').ok_or_else(bad)?;
    let (namespace, name) = rest.split_once('/').ok_or_else(bad)?;
    let part_ok = |p: &str| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/');
    if !(part_ok(kind) && part_ok(namespace) && part_ok(name)) {
        return Err(bad());
    }
    Ok(r.to_lowercase())
}

fn validate_traceparent(t: &str) -> Result<(), ValidationError> {
    // version-traceid-parentid-flags, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.len() >= 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2);
    if ok { Ok(()) } else { Err(ValidationError::Trace(clip(t))) }
}

impl Event {
    /// A new live event with no id and no timestamp.
    pub fn new(event_type: impl Into<String>, workspace_id: impl Into<String>, data: Value) -> Self {
        Self {
            event_type: event_type.into(),
            id: None,
            workspace_id: workspace_id.into(),
            entity_ref: None,
            timestamp: None,
            data,
            trace: None,
        }
    }

    /// Validates every field, lower-cases `entity_ref`, and checks the `data` of
    /// well-known types against their typed payloads. Unknown types pass with any `data`.
    pub fn validate(&mut self) -> Result<(), ValidationError> {
        validate_event_type(&self.event_type)?;
        validate_workspace_id(&self.workspace_id)?;
        if let Some(r) = &self.entity_ref {
            self.entity_ref = Some(normalize_entity_ref(r)?);
        }
        if let Some(ts) = &self.timestamp
            && crate::timestamp::parse_rfc3339(ts).is_none()
        {
            return Err(ValidationError::Timestamp(clip(ts)));
        }
        if let Some(t) = &self.trace {
            validate_traceparent(t)?;
        }
        payloads::validate_data(&self.event_type, &self.data)
            .map_err(|reason| ValidationError::Data { event_type: self.event_type.clone(), reason })
    }

    /// Serialises the event; an `Event` always serialises.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("Event holds only JSON-representable values"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_example_round_trips() {
        let text = r#"{"type":"deployment_update","id":"1764000000000-0","workspace_id":"acme","entity_ref":"component:default/checkout","timestamp":"2026-11-24T12:00:00.000Z","data":{"deployment":{"id":"deploy-123","version":"v1.2.3","environment":"production","status":"in_progress","start_time":"2026-11-24T11:59:00Z"}}}"#;
        let mut e: Event = serde_json::from_str(text).unwrap();
        e.validate().unwrap();
        assert_eq!(e.id, Some(EventId::new(1764000000000, 0)));
        assert_eq!(e.to_json(), text);
    }

    #[test]
    fn live_events_omit_id_and_trace() {
        let e = Event::new("alert", "acme", json!({"type":"x","message":"m","priority":"low"}));
        assert_eq!(e.to_json(), r#"{"type":"alert","workspace_id":"acme","data":{"type":"x","message":"m","priority":"low"}}"#);
    }

    #[test]
    fn field_rules() {
        assert!(validate_event_type("a.b:c-d_9").is_ok());
        for bad in ["", "Upper", "sp ace", "é", &"x".repeat(65)] {
            assert!(validate_event_type(bad).is_err(), "{bad:?}");
        }
        assert!(validate_workspace_id("Acme_1.2-3").is_ok());
        for bad in ["", "a:b", "a/b", "a b", &"w".repeat(129)] {
            assert!(validate_workspace_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_entity_ref("Component:Default/Checkout").unwrap(), "component:default/checkout");
        for bad in ["component", "component:default", ":a/b", "a:/b", "a:b/", "a:b/c/d", "a b:c/d"] {
            assert!(normalize_entity_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validate_normalises_and_checks_everything() {
        let mut e = Event::new("custom_thing", "acme", json!(42));
        e.entity_ref = Some("Host:Default/Box".into());
        e.timestamp = Some("2026-11-24T12:00:00Z".into());
        e.trace = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.validate().unwrap();
        assert_eq!(e.entity_ref.as_deref(), Some("host:default/box"));

        let mut e = Event::new("x", "acme", Value::Null);
        e.timestamp = Some("noon".into());
        assert!(matches!(e.validate(), Err(ValidationError::Timestamp(_))));
        let mut e = Event::new("x", "acme", Value::Null);
        e.trace = Some("nope".into());
        assert!(matches!(e.validate(), Err(ValidationError::Trace(_))));
        let mut e = Event::new("metrics_update", "acme", json!({"metrics": {"cpu": "high"}}));
        assert!(matches!(e.validate(), Err(ValidationError::Data { .. })));
    }

    #[test]
    fn header_reads_routing_fields_only() {
        let h: EventHeader = serde_json::from_str(r#"{"type":"t","workspace_id":"w","data":{"huge":[1,2,3]},"id":"5-1"}"#).unwrap();
        assert_eq!((h.event_type.as_str(), h.workspace_id.as_str(), h.id), ("t", "w", Some(EventId::new(5, 1))));
    }
}
