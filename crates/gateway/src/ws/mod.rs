//! The WebSocket transport (SPEC §3.2–3.4): checks before the upgrade, the
//! handshake (a token on the upgrade or in a first `auth` message), then one
//! task per connection whose writer ([`writer`]) drains the outbox and whose
//! reader ([`reader`]) handles client messages. The session runs on any
//! [`FrameSink`]/[`FrameStream`], so it is tested over channels too
//! ([`tests`](self)) as well as on real sockets (`tests/it`).

mod frames;
mod join;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tidings_broker::BrokerError;
use tidings_process::http::bearer;
use tidings_protocol::codes::close;
use tidings_protocol::messages::parse_client_message;
use tidings_protocol::{ClientMessage, EventId, Filter, ServerMessage};
use tokio::time::timeout;
use tracing::Instrument;
use tracing::field::Empty;

use self::frames::{FrameSink, FrameStream, send_close};
pub(crate) use self::frames::{text_frame, until_unix};
use self::reader::{FrameError, Opening, Session, read_side};
use self::writer::{WRITE_COALESCE_BYTES, write_loop};
use crate::access::{Access, authorize, check_origin, expires_at, parse_filter, parse_since};
use crate::deadline::Peer;
use crate::error::ApiError;
use crate::hub::Transport;
use crate::node::{Admission, Node, Registration, Slot};
use crate::outbox::DirectWriter;
use crate::rate::TokenBucket;
use crate::replay::Replay;

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectParams {
    pub token: Option<String>,
    pub workspace_id: Option<String>,
    pub since: Option<String>,
    pub event_types: Option<String>,
    pub entity_refs: Option<String>,
    pub batch: Option<String>,
}

/// Who the socket belongs to, as far as it was settled before the upgrade.
enum Identity {
    /// The token came with the upgrade request: registered already.
    Joined(Box<Joined>),
    /// First-message auth: the socket holds a place under the connection cap
    /// while it waits, and is counted against its user once that is known.
    Pending(Slot),
}

/// What was settled before the upgrade.
struct Setup {
    requested_workspace: Option<String>,
    since: Option<EventId>,
    filter: Filter,
    batch: bool,
}

/// `GET /ws`.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    version: axum::http::Version,
    query: Result<Query<ConnectParams>, QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match prepare_upgrade(&node, query, &headers).await {
        Ok((setup, identity)) => {
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => return ApiError::bad_request(format!("not a WebSocket upgrade: {e}")).into_response(),
            };
            let limit = node.config.max_message_bytes;
            // The fan-out writes a `batch=1` connection's events through its
            // writer (it frames several at once), everyone else's directly:
            // over HTTP/1.1 the upgraded socket carries this WebSocket alone.
            let direct = peer
                .filter(|_| !setup.batch && version == axum::http::Version::HTTP_11)
                .map(|Extension(ConnectInfo(peer))| peer.socket as Arc<dyn DirectWriter>);
            // Clients send little (pings, filter changes): a small read chunk
            // saves ~4 KiB per idle connection over 4 KiB, and the buffer still
            // grows for a large message (BENCHMARKS.md, idle memory).
            ws.read_buffer_size(256)
                // Frames gather here until the writer's one flush per wake-up
                // (or this much is waiting), so a backlog is one write(2).
                .write_buffer_size(WRITE_COALESCE_BYTES)
                .max_write_buffer_size(64 * 1024 * 1024)
                .max_message_size(limit)
                .max_frame_size(limit)
                .on_upgrade(move |socket| {
                    let tasks = node.tasks.clone();
                    // Every log line of the session names its connection.
                    let span = tracing::info_span!("connection", connection_id = Empty, workspace_id = Empty, user_id = Empty);
                    tasks.track_future(serve_socket(node, socket, setup, identity, direct).instrument(span))
                })
        }
        Err(e) => {
            tracing::debug!(status = e.status.as_u16(), reason = %e.message, "connection refused before the upgrade");
            node.metrics.connections_refused.with_label_values(&[refusal_label(&e)]).inc();
            e.into_response()
        }
    }
}

/// The `reason` label of a refused connection, by status.
pub(crate) fn refusal_label(e: &ApiError) -> &'static str {
    match e.status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        429 => "max_connections_per_user",
        503 => "unavailable",
        _ => "other",
    }
}

async fn prepare_upgrade(
    node: &Arc<Node>,
    query: Result<Query<ConnectParams>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<(Setup, Identity), ApiError> {
    if node.is_draining() {
        return Err(ApiError::unavailable("the gateway is draining; reconnect to another instance"));
    }
    check_origin(node, headers)?;
    let Query(params) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let setup = Setup {
        since: parse_since(params.since.as_deref())?,
        filter: parse_filter(params.event_types.as_deref(), params.entity_refs.as_deref())?,
        batch: match params.batch.as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => return Err(ApiError::bad_request(format!("batch must be 1 or 0, got {other:?}"))),
        },
        requested_workspace: params.workspace_id.clone(),
    };
    if let Some(w) = &setup.requested_workspace {
        tidings_protocol::event::validate_workspace_id(w).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    // Every socket holds a place under the cap from here on, authenticated or not.
    let slot = node.reserve()?;
    let token = params.token.as_deref().or_else(|| bearer(headers));
    let Some(token) = token else {
        // First-message authentication after the upgrade.
        return Ok((setup, Identity::Pending(slot)));
    };
    let access = authorize(node, Some(token), setup.requested_workspace.as_deref()).await?;
    // After authorizing, as after first-message auth: a token check that
    // waits on a JWKS fetch must not hold up the joins of known keys.
    let _turn = node.join_turn().await?;
    let admission = node.attach(slot, &access.claims.sub)?;
    // Registered before the upgrade, so a broker that cannot serve the
    // workspace is a 503 with Retry-After, not a socket closed right after it.
    let joined = join(node, &setup, access, admission).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((setup, Identity::Joined(Box::new(joined))))
}

/// A connection that is registered, with its replay begun when `since` was given.
struct Joined {
    access: Access,
    _admission: Admission,
    registration: Registration,
    replay: Option<Replay>,
}

/// Creates and registers the connection with its `connected` message queued
/// first, and reads the first page of its replay when `since` was given.
async fn join(node: &Arc<Node>, setup: &Setup, access: Access, admission: Admission) -> Result<Joined, BrokerError> {
    let conn = node.new_connection(
        &access.workspace_id,
        &access.claims.sub,
        access.claims.jti.clone(),
        Transport::WebSocket,
        setup.filter.clone(),
    );
    let connected = |recovered| {
        ServerMessage::Connected {
            connection_id: conn.connection_id.clone(),
            workspace_id: conn.workspace_id.clone(),
            user_id: access.claims.sub.clone(),
            server: node.config.instance_id.clone(),
            heartbeat_ms: node.config.heartbeat.as_millis() as u64,
            expires_at: expires_at(access.claims.exp),
            recovered,
        }
        .to_json()
    };
    let (registration, replay) = crate::replay::join(node, &conn, setup.since, connected).await?;
    Ok(Joined { access, _admission: admission, registration, replay })
}

async fn serve_socket(node: Arc<Node>, socket: WebSocket, setup: Setup, identity: Identity, direct: Option<Arc<dyn DirectWriter>>) {
    let (sink, stream) = socket.split();
    serve(node, sink, stream, setup, identity, direct).await;
}

/// One WebSocket session on any frame sink and stream: authentication by
/// first message if the upgrade carried no token, joining, then the session's
/// task. `direct` is the socket under `sink`, for the fan-out's direct writes.
async fn serve(
    node: Arc<Node>,
    mut sink: impl FrameSink,
    mut stream: impl FrameStream,
    setup: Setup,
    identity: Identity,
    direct: Option<Arc<dyn DirectWriter>>,
) {
    let joined = match identity {
        Identity::Joined(joined) => *joined,
        Identity::Pending(slot) => {
            let auth = Box::pin(first_message_auth(&node, &mut stream, setup.requested_workspace.as_deref(), slot));
            let refused = match AssertUnwindSafe(auth).catch_unwind().await {
                Ok(Ok(identity)) => Ok(identity),
                Ok(Err(refusal)) => Err(refusal),
                Err(_) => {
                    tracing::error!("panic during first-message auth; closing 1011");
                    Err((close::INTERNAL, "internal error".to_string()))
                }
            };
            let (access, admission) = match refused {
                Ok(identity) => identity,
                Err((code, reason)) => {
                    // A full or draining gateway is not the client's fault.
                    let label = if matches!(code, close::DRAINING | close::TRY_AGAIN_LATER) { "unavailable" } else { "auth_message" };
                    node.metrics.connections_refused.with_label_values(&[label]).inc();
                    send_close(&mut sink, code, reason).await;
                    return;
                }
            };
            let Ok(_turn) = node.join_turn().await else {
                node.metrics.connections_refused.with_label_values(&["unavailable"]).inc();
                send_close(&mut sink, close::TRY_AGAIN_LATER, crate::node::Refusal::Busy.to_string()).await;
                return;
            };
            match Box::pin(join(&node, &setup, access, admission)).await {
                Ok(joined) => joined,
                Err(e) => {
                    tracing::warn!(error = %e, "broker unavailable; refusing connection");
                    node.metrics.connections_refused.with_label_values(&["unavailable"]).inc();
                    send_close(&mut sink, close::TRY_AGAIN_LATER, "broker unavailable").await;
                    return;
                }
            }
        }
    };
    let span = tracing::Span::current();
    let conn = joined.registration.connection();
    span.record("connection_id", conn.connection_id.as_str());
    span.record("workspace_id", conn.workspace_id.as_str());
    span.record("user_id", conn.user_id.as_str());
    let Joined { access, _admission, registration, replay } = joined;
    let conn = registration.connection().clone();
    if let Some(direct) = direct {
        conn.outbox.write_directly_to(direct);
    }
    let session = Box::new(Session {
        limiter: TokenBucket::new(node.config.client_rate),
        node,
        conn,
        claims: access.claims,
        rate_strikes: 0,
        refreshed_exp: None,
        _registration: registration,
        _admission,
    });
    let replay = replay.map(|replay| Box::new(Opening { replay, filter: setup.filter }));
    // The session gets a task of its own, whose state is only what a live
    // connection holds (everything large is boxed once, here). Awaiting it
    // here instead would keep this task's larger state, and the upgrade's,
    // for the connection's whole life: BENCHMARKS.md, idle memory.
    let tasks = session.node.tasks.clone();
    tasks.spawn(run_connection(session, sink, stream, setup.batch, replay).instrument(span));
}

/// Waits for `{"type":"auth","token":"…"}` within the auth timeout; `slot`
/// becomes the connection's admission once the token names its user.
async fn first_message_auth(
    node: &Node,
    stream: &mut impl FrameStream,
    requested: Option<&str>,
    slot: Slot,
) -> Result<(Access, Admission), (u16, String)> {
    let policy = |reason: String| (close::POLICY, reason);
    let frame = match timeout(node.config.auth_timeout, stream.next()).await {
        Err(_) => return Err(policy("no auth message within the deadline".into())),
        Ok(None) => return Err(policy("connection ended before auth".into())),
        Ok(Some(Err(e))) => {
            return Err(match FrameError::of(&e) {
                FrameError::TooBig => (close::MESSAGE_TOO_BIG, "message too big".into()),
                FrameError::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8".into()),
                FrameError::Protocol => (close::PROTOCOL_ERROR, "WebSocket protocol error".into()),
                FrameError::Transport => policy("connection ended before auth".into()),
            });
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let Message::Text(text) = frame else {
        return Err(policy("the first message must be an auth message".into()));
    };
    let Ok(ClientMessage::Auth { token, .. }) = parse_client_message(&text) else {
        return Err(policy("the first message must be an auth message".into()));
    };
    let access = authorize(node, Some(&token), requested).await.map_err(|e| policy(e.message))?;
    let admission = node.attach(slot, &access.claims.sub).map_err(|r| match r {
        crate::node::Refusal::Draining => (close::DRAINING, r.to_string()),
        _ => (close::TRY_AGAIN_LATER, r.to_string()),
    })?;
    Ok((access, admission))
}

async fn run_connection(
    mut session: Box<Session>,
    sink: impl FrameSink,
    stream: impl FrameStream,
    batch: bool,
    opening: Option<Box<Opening>>,
) {
    if session.node.is_draining() {
        session.conn.outbox.close(close::DRAINING, "draining");
    }
    let done = join::Done::default();
    // The writer and the reader are two futures of one task (an idle
    // connection pays for one task, not two); the reader is polled only when
    // its own waker fired.
    let (node, conn) = (session.node.clone(), session.conn.clone());
    join::writer_and_reader(
        write_loop(node, conn, sink, batch, done.clone()),
        read_side(&mut session, stream, opening, &done),
        done.clone(),
    )
    .await;
    // The registration goes with the session, after the writer stopped.
    drop(session);
}
