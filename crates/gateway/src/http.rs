//! The HTTP fallbacks of SPEC §3.1: polling, Server-Sent Events, latest state.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Map, Value};
use tidings_protocol::ServerMessage;

use tidings_process::http::bearer;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::access::{authorize, check_origin, parse_filter, parse_since};
use crate::error::ApiError;
use crate::hub::{Connection, Transport, prepare};
use crate::node::{Admission, Node, Registration};
use crate::outbox::Outgoing;

const POLL_DEFAULT_LIMIT: usize = 100;
const POLL_MAX_LIMIT: usize = 1000;

/// Query parameters of the polling and SSE endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct EventsParams {
    pub token: Option<String>,
    pub since: Option<String>,
    pub limit: Option<String>,
    pub event_types: Option<String>,
    pub entity_refs: Option<String>,
}

fn params(query: Result<Query<EventsParams>, QueryRejection>) -> Result<EventsParams, ApiError> {
    query.map(|Query(p)| p).map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `GET /v1/workspaces/{id}/events`: `{"events":[…],"next":"ID","recovered":bool}`.
pub async fn poll(
    State(node): State<Arc<Node>>,
    Path(workspace_id): Path<String>,
    query: Result<Query<EventsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = params(query)?;
    let access = authorize(&node, bearer(&headers), Some(&workspace_id)).await?;
    let since = parse_since(params.since.as_deref())?;
    let filter = parse_filter(params.event_types.as_deref(), params.entity_refs.as_deref())?;
    let limit = match params.limit.as_deref() {
        None => POLL_DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=POLL_MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1..={POLL_MAX_LIMIT}")))?,
    };
    let page = node.broker.history(&access.workspace_id, since, limit).await?;
    // `next` follows the last event scanned, matched or not, so filtered polls advance.
    let next = page.events.last().map(|e| e.id).or(since).or(page.last_id).unwrap_or_default();
    let mut body = String::from(r#"{"events":["#);
    let mut first = true;
    for event in page.events.iter().filter_map(|e| prepare(&access.workspace_id, e.json.clone())) {
        if filter.matches(&event.event_type, event.entity_ref.as_deref()) {
            if !first {
                body.push(',');
            }
            first = false;
            body.push_str(event.text.as_str());
        }
    }
    body.push_str(&format!(r#"],"next":"{next}","recovered":{}}}"#, page.recovered));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// What an SSE stream holds for its life; dropping the stream unregisters it.
struct SseGuard {
    node: Arc<Node>,
    conn: Arc<Connection>,
    _registration: Registration,
    _admission: Admission,
    /// Counts in the node's task tracker while the stream lives: the stream
    /// is polled by hyper, not by a task of ours, and shutdown waits on the tracker.
    _task: TaskTrackerToken,
}

/// `GET /v1/workspaces/{id}/events/stream`: replay after `Last-Event-ID` or
/// `since`, then live events; a first `connected` event mirrors the WebSocket one.
pub async fn sse(
    State(node): State<Arc<Node>>,
    Path(workspace_id): Path<String>,
    query: Result<Query<EventsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let refused = |e: ApiError| {
        node.metrics.connections_refused.with_label_values(&[crate::ws::refusal_label(&e)]).inc();
        e
    };
    sse_stream(node.clone(), workspace_id, query, headers).await.map_err(refused)
}

async fn sse_stream(
    node: Arc<Node>,
    workspace_id: String,
    query: Result<Query<EventsParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    if node.is_draining() {
        return Err(ApiError::unavailable("the gateway is draining; reconnect to another instance"));
    }
    // Held from before the stream joins the hub, so shutdown never sees it registered but untracked.
    let task = node.tasks.token();
    check_origin(&node, &headers)?;
    let params = params(query)?;
    let token = bearer(&headers).or(params.token.as_deref());
    let access = authorize(&node, token, Some(&workspace_id)).await?;
    let _turn = node.join_turn().await?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let since = parse_since(last_event_id.or(params.since.as_deref()))?;
    let filter = parse_filter(params.event_types.as_deref(), params.entity_refs.as_deref())?;
    let admission = node.admit(&access.claims.sub)?;

    let conn = node.new_connection(&access.workspace_id, &access.claims.sub, access.claims.jti.clone(), Transport::Sse, filter.clone());
    let connected = |recovered| {
        ServerMessage::Connected {
            connection_id: conn.connection_id.clone(),
            workspace_id: access.workspace_id.clone(),
            user_id: access.claims.sub.clone(),
            server: node.config.instance_id.clone(),
            heartbeat_ms: node.config.heartbeat.as_millis() as u64,
            expires_at: crate::access::expires_at(access.claims.exp),
            recovered,
        }
        .to_json()
    };
    let (registration, replay) = crate::replay::join(&node, &conn, since, connected).await?;
    if let Some(replay) = replay {
        // The stream is read as the replay queues (it waits for room); dropping
        // the stream closes the outbox, which ends the replay.
        let (node, conn) = (node.clone(), conn.clone());
        node.tasks.clone().spawn(async move {
            replay.run(&node, &conn, |e| filter.matches(&e.event_type, e.entity_ref.as_deref())).await;
        });
    }
    if node.is_draining() {
        conn.outbox.close(tidings_protocol::codes::close::DRAINING, "draining");
    }
    let guard = SseGuard { node: node.clone(), conn: conn.clone(), _registration: registration, _admission: admission, _task: task };
    // EventSource cannot send a fresh token, so the stream ends at `exp` (the
    // browser reconnects with a new one and `Last-Event-ID`).
    let expiring = Arc::downgrade(&conn);
    let ttl = crate::ws::until_unix(access.claims.exp);
    let draining = node.draining.clone();
    node.tasks.spawn(async move {
        // Ends at a drain too, so shutdown never waits out a token's lifetime.
        // (Not on the outbox's `closed`: that shares the stream's wake-ups.)
        tokio::select! {
            () = tokio::time::sleep(ttl) => {
                if let Some(conn) = expiring.upgrade() {
                    conn.outbox.close(tidings_protocol::codes::close::TOKEN_EXPIRED, "token expired");
                }
            }
            () = draining.cancelled() => {}
        }
    });

    let stream = futures_util::stream::unfold(Some(guard), |guard| async move {
        let guard = guard?;
        let event = match guard.conn.outbox.pop().await {
            Outgoing::Event(e) => {
                let _delivering = e.trace.as_ref().and_then(|t| t.deliver_span(&guard.conn.connection_id));
                guard.node.metrics.messages_delivered.with_label_values(&[Transport::Sse.label()]).inc();
                if let Some(seconds) = e.published_at.and_then(crate::hub::latency_since) {
                    guard.node.metrics.delivery_latency.observe(seconds);
                }
                let sse = SseEvent::default().event(e.event_type.as_str()).data(e.text.as_str());
                match e.id {
                    Some(id) => sse.id(id.to_string()),
                    None => sse,
                }
            }
            Outgoing::Control(text) => SseEvent::default().event("connected").data(text.as_str()),
            Outgoing::Lagged(dropped) => SseEvent::default().event("lagged").data(ServerMessage::Lagged { dropped }.to_json()),
            // Only a direct write queues a flush, and a stream has none.
            Outgoing::Flush => SseEvent::default().comment(""),
            Outgoing::Close(code, reason) => {
                guard.node.metrics.connections_closed.with_label_values(&[&code.to_string()]).inc();
                let data = serde_json::json!({"type": "close", "code": code, "reason": reason}).to_string();
                return Some((Ok(SseEvent::default().event("close").data(data)), None));
            }
        };
        Some((Ok(event), Some(guard)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(node.config.heartbeat)))
}

/// `GET /v1/workspaces/{id}/latest`:
/// `{"workspace_id":…,"entities":{"<entity_ref>":{"metrics_update":{…},"health_update":{…}}}}`.
pub async fn latest(State(node): State<Arc<Node>>, Path(workspace_id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let access = authorize(&node, bearer(&headers), Some(&workspace_id)).await?;
    let mut entities: Map<String, Value> = Map::new();
    for entry in node.broker.latest(&access.workspace_id).await? {
        let Ok(event) = serde_json::from_slice::<Value>(&entry.json) else { continue };
        let slot = entities.entry(entry.entity_ref).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(by_type) = slot {
            by_type.insert(entry.event_type, event);
        }
    }
    Ok(Json(serde_json::json!({ "workspace_id": access.workspace_id, "entities": entities })))
}
