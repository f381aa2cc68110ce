//! Client and server messages of the WebSocket protocol (SPEC §3.2–3.3).
//!
//! Events themselves travel as bare event objects (see [`crate::Event`]); every
//! other frame is one of these messages. Unknown extra fields in a client
//! message are ignored, so clients may send newer fields to older gateways.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codes::error;
use crate::filter::{Filter, Selection};
use crate::id::EventId;

/// A message from the client. `id`, when given, is echoed in the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity_refs: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<EventId>,
    },
    Unsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity_refs: Option<Vec<String>>,
    },
    UpdateFilter {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Selection>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity_refs: Option<Selection>,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    RequestMetrics {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity_refs: Option<Vec<String>>,
    },
    RequestHistory {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<EventId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
    },
    Auth {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        token: String,
    },
}

/// The `type` names of client messages.
pub const CLIENT_MESSAGE_TYPES: &[&str] =
    &["subscribe", "unsubscribe", "update_filter", "ping", "request_metrics", "request_history", "auth"];

impl ClientMessage {
    /// The wire `type`, also the label of the client-messages metric.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::UpdateFilter { .. } => "update_filter",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::RequestMetrics { .. } => "request_metrics",
            ClientMessage::RequestHistory { .. } => "request_history",
            ClientMessage::Auth { .. } => "auth",
        }
    }

    /// The request id to echo.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::UpdateFilter { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::RequestMetrics { id, .. }
            | ClientMessage::RequestHistory { id, .. }
            | ClientMessage::Auth { id, .. } => id.as_ref(),
        }
    }
}

/// Why a client frame was not understood; becomes an `error` message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
    /// The frame's `id`, when it had a readable one.
    pub id: Option<Value>,
}

/// Parses one text frame from a client, telling unknown types from malformed ones.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: error::INVALID_MESSAGE,
        message: format!("not valid JSON: {e}"),
        id: None,
    })?;
    let Value::Object(object) = &value else {
        return Err(ParseError { code: error::INVALID_MESSAGE, message: "a message must be a JSON object".into(), id: None });
    };
    let id = object.get("id").filter(|v| v.is_string() || v.is_number()).cloned();
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(ParseError { code: error::INVALID_MESSAGE, message: "\"type\" must be a string".into(), id }),
        None => return Err(ParseError { code: error::INVALID_MESSAGE, message: "missing \"type\"".into(), id }),
    };
    if !CLIENT_MESSAGE_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(64).collect();
        return Err(ParseError { code: error::UNKNOWN_TYPE, message: format!("unknown message type {shown:?}"), id });
    }
    if object.get("id").is_some() && id.is_none() {
        return Err(ParseError { code: error::INVALID_MESSAGE, message: "\"id\" must be a string or a number".into(), id: None });
    }
    serde_json::from_value(value).map_err(|e| ParseError { code: error::INVALID_MESSAGE, message: e.to_string(), id })
}

/// A message from the server (events aside).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Connected {
        connection_id: String,
        workspace_id: String,
        user_id: String,
        server: String,
        heartbeat_ms: u64,
        expires_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Subscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        filter: Filter,
        /// Only when the subscribe carried `since`: as in `connected`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Unsubscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        filter: Filter,
    },
    FilterUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        filter: Filter,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        timestamp: String,
    },
    Metrics {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        data: Map<String, Value>,
    },
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        events: Vec<Value>,
        recovered: bool,
    },
    Authenticated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        expires_at: String,
    },
    Batch {
        events: Vec<Value>,
    },
    Lagged {
        dropped: u64,
    },
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
}

/// The `type` names of server messages; any other `type` on a server frame is an event.
pub const SERVER_MESSAGE_TYPES: &[&str] = &[
    "connected",
    "subscribed",
    "unsubscribed",
    "filter_updated",
    "pong",
    "metrics",
    "history",
    "authenticated",
    "batch",
    "lagged",
    "error",
];

impl ServerMessage {
    pub fn error(code: &str, message: impl Into<String>, id: Option<Value>) -> Self {
        ServerMessage::Error { code: code.to_string(), message: message.into(), id }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("server messages hold only JSON values"))
    }
}

/// `{"type":"batch","events":[…]}` from events that are already JSON text,
/// without parsing them again (the gateway encodes each event once).
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from(r#"{"type":"batch","events":["#);
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
    out.push_str("]}");
    out
}

/// `{"type":"history","events":[…],"recovered":…}` from pre-encoded events.
pub fn encode_history<'a>(id: Option<&Value>, events: impl IntoIterator<Item = &'a str>, recovered: bool) -> String {
    let mut out = String::from(r#"{"type":"history""#);
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&id.to_string());
    }
    out.push_str(r#","events":["#);
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e);
    }
    out.push_str(r#"],"recovered":"#);
    out.push_str(if recovered { "true}" } else { "false}" });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every client message of SPEC §3.3 parses from its documented form and
    /// serialises back to the same JSON.
    #[test]
    fn client_messages_round_trip() {
        let frames = [
            json!({"type":"subscribe","id":1,"event_types":["deployment_update"],"entity_refs":["component:default/checkout"],"since":"1764000000000-0"}),
            json!({"type":"unsubscribe","id":"u","event_types":["a"],"entity_refs":["x:y/z"]}),
            json!({"type":"update_filter","event_types":"*","entity_refs":["x:y/z"]}),
            json!({"type":"ping"}),
            json!({"type":"request_metrics","entity_refs":["host:default/a"]}),
            json!({"type":"request_history","since":"5-0","limit":10,"event_types":["a"]}),
            json!({"type":"auth","token":"t"}),
        ];
        assert_eq!(frames.len(), CLIENT_MESSAGE_TYPES.len());
        for frame in frames {
            let msg = parse_client_message(&frame.to_string()).unwrap();
            assert_eq!(serde_json::to_value(&msg).unwrap(), frame);
            assert_eq!(msg.type_name(), frame["type"]);
            assert_eq!(msg.request_id(), frame.get("id"));
        }
    }

    #[test]
    fn bad_frames_get_the_right_code_and_keep_the_id() {
        let cases: [(&str, &str, Option<Value>); 9] = [
            ("not json", error::INVALID_MESSAGE, None),
            ("[1,2]", error::INVALID_MESSAGE, None),
            (r#"{"id":3}"#, error::INVALID_MESSAGE, Some(json!(3))),
            (r#"{"type":7}"#, error::INVALID_MESSAGE, None),
            (r#"{"type":"dance","id":"d"}"#, error::UNKNOWN_TYPE, Some(json!("d"))),
            (r#"{"type":"subscribe","event_types":"a","id":"x"}"#, error::INVALID_MESSAGE, Some(json!("x"))),
            (r#"{"type":"subscribe","since":"yesterday"}"#, error::INVALID_MESSAGE, None),
            (r#"{"type":"auth"}"#, error::INVALID_MESSAGE, None),
            (r#"{"type":"ping","id":{"a":1}}"#, error::INVALID_MESSAGE, None),
        ];
        for (frame, code, id) in cases {
            let err = parse_client_message(frame).expect_err(frame);
            assert_eq!((err.code, err.id), (code, id), "{frame}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_client_message(&deep).unwrap_err().code, error::INVALID_MESSAGE);
    }

    /// Every server message serialises to the exact JSON of the spec's examples.
    #[test]
    fn server_messages_serialise_as_specified() {
        let raw = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let cases = [
            (
                ServerMessage::Connected {
                    connection_id: "c1".into(),
                    workspace_id: "acme".into(),
                    user_id: "u1".into(),
                    server: "gw-1".into(),
                    heartbeat_ms: 25000,
                    expires_at: "2026-11-24T13:00:00.000Z".into(),
                    recovered: Some(true),
                },
                r#"{"type":"connected","connection_id":"c1","workspace_id":"acme","user_id":"u1","server":"gw-1","heartbeat_ms":25000,"expires_at":"2026-11-24T13:00:00.000Z","recovered":true}"#,
            ),
            (
                ServerMessage::Subscribed { id: Some(json!(1)), filter: Filter::default(), recovered: None },
                r#"{"type":"subscribed","id":1,"filter":{"event_types":"*","entity_refs":"*"}}"#,
            ),
            (
                ServerMessage::Unsubscribed { id: None, filter: Filter::default() },
                r#"{"type":"unsubscribed","filter":{"event_types":"*","entity_refs":"*"}}"#,
            ),
            (
                ServerMessage::FilterUpdated { id: None, filter: Filter::default() },
                r#"{"type":"filter_updated","filter":{"event_types":"*","entity_refs":"*"}}"#,
            ),
            (ServerMessage::Pong { id: None, timestamp: "t".into() }, r#"{"type":"pong","timestamp":"t"}"#),
            (ServerMessage::Metrics { id: None, data: Map::new() }, r#"{"type":"metrics","data":{}}"#),
            (
                ServerMessage::History { id: Some(json!("h")), events: vec![raw(r#"{"type":"a"}"#)], recovered: false },
                r#"{"type":"history","id":"h","events":[{"type":"a"}],"recovered":false}"#,
            ),
            (ServerMessage::Authenticated { id: None, expires_at: "t".into() }, r#"{"type":"authenticated","expires_at":"t"}"#),
            (ServerMessage::Batch { events: vec![raw("{}"), raw("{}")] }, r#"{"type":"batch","events":[{},{}]}"#),
            (ServerMessage::Lagged { dropped: 3 }, r#"{"type":"lagged","dropped":3}"#),
            (
                ServerMessage::error(error::UNKNOWN_TYPE, "m", Some(json!(2))),
                r#"{"type":"error","code":"unknown_type","message":"m","id":2}"#,
            ),
        ];
        assert_eq!(cases.len(), SERVER_MESSAGE_TYPES.len());
        for (msg, want) in cases {
            assert_eq!(msg.to_json(), want);
            let back: ServerMessage = serde_json::from_str(want).unwrap();
            assert_eq!(back.to_json(), want, "deserialises back");
        }
    }

    #[test]
    fn hand_encoded_frames_equal_serde() {
        let events = [r#"{"type":"a","workspace_id":"w","data":null}"#, r#"{"type":"b","workspace_id":"w","data":[1]}"#];
        let parsed = || events.iter().map(|e| serde_json::from_str::<Value>(e).unwrap()).collect();
        let via_serde = ServerMessage::Batch { events: parsed() };
        assert_eq!(encode_batch(events), via_serde.to_json());
        let via_serde = ServerMessage::History { id: Some(json!("x")), events: parsed(), recovered: true };
        assert_eq!(encode_history(Some(&json!("x")), events, true), via_serde.to_json());
        assert_eq!(encode_history(None, [], false), r#"{"type":"history","events":[],"recovered":false}"#);
    }
}
