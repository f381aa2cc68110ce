//! The WebSocket transport (SPEC §3.2–3.4): checks before the upgrade, then one
//! task reading client messages and one writing the connection's outbox.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tidings_protocol::codes::{close, error};
use tidings_protocol::messages::{encode_batch, encode_history, parse_client_message};
use tidings_protocol::timestamp::now_rfc3339;
use tidings_protocol::{ClientMessage, EventId, Filter, ServerMessage};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use crate::access::{Access, authorize, bearer, check_origin, expires_at, parse_filter, parse_since};
use crate::error::ApiError;
use crate::hub::{Connection, Transport, prepare};
use crate::node::{Admission, Node, Registration, Slot};
use crate::outbox::{Outgoing, PreparedEvent};
use crate::rate::TokenBucket;
use crate::replay::Replay;
use tidings_broker::BrokerError;

/// Most events in one `batch` frame.
const MAX_BATCH: usize = 100;
/// Default and largest `limit` of `request_history`.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 1000;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a client closed 4009 gets to read its `lagged` and the close
/// frame: it stopped reading, so they wait behind what already fills its
/// socket; a client that was only frozen for a while (a background tab)
/// still learns why it was cut off. Its queue is already freed meanwhile.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The longest timer armed for a token's `exp`: an absurd `exp` (year 9999,
/// `u64::MAX`) must not overflow `Instant`, and no connection lives this long.
const MAX_TOKEN_TIMER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

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
                    tasks.track_future(serve_socket(node, socket, setup, identity).instrument(span))
                })
        }
        Err(e) => {
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
    let admission = node.attach(slot, &access.claims.sub)?;
    // Registered before the upgrade, so a broker that cannot serve the
    // workspace is a 503 with Retry-After, not a socket closed right after it.
    let joined = join(node, &setup, access, admission).await.map_err(|e| ApiError::unavailable(format!("broker unavailable: {e}")))?;
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

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

async fn serve_socket(node: Arc<Node>, socket: WebSocket, setup: Setup, identity: Identity) {
    let (mut sink, mut stream) = socket.split();
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
    stream: &mut Stream,
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

async fn send_close(sink: &mut Sink, code: u16, reason: impl Into<Utf8Bytes>) {
    let grace = if code == close::TOO_SLOW { SLOW_CLOSE_GRACE } else { CLOSE_GRACE };
    let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let _ = timeout(grace, sink.send(frame)).await;
}

/// The replay a connection asked for with `since`, and the filter it applies.
struct Opening {
    replay: Replay,
    filter: Filter,
}

async fn run_connection(mut session: Box<Session>, sink: Sink, stream: Stream, batch: bool, opening: Option<Box<Opening>>) {
    if session.node.is_draining() {
        session.conn.outbox.close(close::DRAINING, "draining");
    }
    let done = CancellationToken::new();
    // The writer and the reader are two futures of one task, polled together:
    // an idle connection pays for one task, not two.
    let (node, conn) = (session.node.clone(), session.conn.clone());
    tokio::join!(write_loop(node, conn, sink, batch, done.clone()), read_side(&mut session, stream, opening, &done));
    // The registration goes with the session, after the writer stopped.
    drop(session);
}

/// The connection's reader: the replay asked for by `since` (while the writer
/// sends it), then client messages until the connection ends, then the close
/// handshake's tail.
async fn read_side(session: &mut Session, mut stream: Stream, opening: Option<Box<Opening>>, done: &CancellationToken) {
    // Boxed, here and below: cold paths whose futures are large would
    // otherwise be part of every idle connection's task.
    if let Some(opening) = opening {
        // The replay runs while the writer sends, so it waits for room instead
        // of piling up; live events published meanwhile wait in the held lane.
        let Opening { replay, filter } = *opening;
        let keep = |e: &PreparedEvent| filter.matches(&e.event_type, e.entity_ref.as_deref());
        let (node, conn) = (&session.node, &session.conn);
        Box::pin(async {
            tokio::select! {
                _ = done.cancelled() => {}
                () = replay.run(node, conn, keep) => {}
            }
        })
        .await;
    }
    let ended = if done.is_cancelled() { ReadEnd::Done } else { read_loop(session, &mut stream, done).await };
    Box::pin(linger(ended, &mut stream, done)).await;
    done.cancel();
    tracing::debug!(?ended, "connection ended");
}

/// Lets the writer finish a close handshake it started, then lets the peer
/// answer it, so the close code reaches the client before the TCP close.
async fn linger(ended: ReadEnd, stream: &mut Stream, done: &CancellationToken) {
    if timeout(CLOSE_GRACE, done.cancelled()).await.is_ok() {
        if ended == ReadEnd::Unread {
            // Bytes of a refused frame may still be unread in the socket;
            // closing now would send a TCP reset that can overtake our close
            // frame. Linger instead, so the peer reads the code and closes first.
            tokio::time::sleep(CLOSE_GRACE).await;
        } else {
            let _ = timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = stream.next().await {} }).await;
        }
    }
}

/// The reader's per-connection state.
struct Session {
    node: Arc<Node>,
    conn: Arc<Connection>,
    claims: crate::auth::Claims,
    limiter: TokenBucket,
    rate_strikes: u32,
    /// Set by a successful `auth` refresh: the new `exp` to arm.
    refreshed_exp: Option<u64>,
    /// The connection's place in the hub and under the caps, for its life
    /// (dropped in this order, as fields are).
    _registration: Registration,
    _admission: Admission,
}

/// How the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    Done,
    /// A frame was refused (over the size limit, not UTF-8, against the
    /// protocol): the socket may still hold unread bytes of it.
    Unread,
}

/// Reads client messages until the connection ends. A panic while handling
/// one (a bug here or in a broker) closes the connection 1011 instead of
/// leaving its socket open with nobody reading.
async fn read_loop(session: &mut Session, stream: &mut Stream, done: &CancellationToken) -> ReadEnd {
    let conn = session.conn.clone();
    match AssertUnwindSafe(read_messages(session, stream, done)).catch_unwind().await {
        Ok(end) => end,
        Err(_) => {
            tracing::error!(connection_id = %conn.connection_id, "panic in the connection reader; closing 1011");
            conn.outbox.close(close::INTERNAL, "internal error");
            ReadEnd::Done
        }
    }
}

async fn read_messages(session: &mut Session, stream: &mut Stream, done: &CancellationToken) -> ReadEnd {
    let expiry = sleep(until_unix(session.claims.exp));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = done.cancelled() => return ReadEnd::Done,
            _ = &mut expiry => {
                session.conn.outbox.close(close::TOKEN_EXPIRED, "token expired");
                return ReadEnd::Done;
            }
            frame = stream.next() => {
                session.conn.mark_seen();
                match frame {
                    None => { done.cancel(); return ReadEnd::Done; }
                    Some(Err(e)) => {
                        let (code, reason) = match FrameError::of(&e) {
                            FrameError::TooBig => (close::MESSAGE_TOO_BIG, "message too big"),
                            FrameError::InvalidUtf8 => (close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
                            FrameError::Protocol => (close::PROTOCOL_ERROR, "WebSocket protocol error"),
                            FrameError::Transport => {
                                done.cancel();
                                return ReadEnd::Done;
                            }
                        };
                        session.conn.outbox.close(code, reason);
                        return ReadEnd::Unread;
                    }
                    Some(Ok(Message::Text(text))) => {
                        match session.admit_message() {
                            Admit::Handle => {}
                            Admit::Skip => continue,
                            Admit::Closing => return ReadEnd::Done,
                        }
                        Box::pin(session.handle_text(&text)).await;
                        if let Some(new_exp) = session.refreshed_exp.take() {
                            expiry.as_mut().reset(Instant::now() + until_unix(new_exp));
                        }
                        if session.conn.outbox.is_closing() {
                            // The message ended the connection (e.g. 4003 on a refresh).
                            return ReadEnd::Done;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        match session.admit_message() {
                            Admit::Handle => {}
                            Admit::Skip => continue,
                            Admit::Closing => return ReadEnd::Done,
                        }
                        session.node.metrics.client_messages.with_label_values(&["binary"]).inc();
                        session.reply(ServerMessage::error(error::UNSUPPORTED, "binary frames are not supported; send JSON text", None));
                    }
                    Some(Ok(Message::Close(_))) => {
                        session.conn.outbox.close_after_queued(close::NORMAL, "");
                        return ReadEnd::Done;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    }
}

/// Time left until the Unix time `exp`, at most [`MAX_TOKEN_TIMER`] so that
/// `Instant::now() + until_unix(exp)` cannot overflow.
pub(crate) fn until_unix(exp: u64) -> Duration {
    Duration::from_secs(exp.saturating_sub(crate::auth::unix_now())).min(MAX_TOKEN_TIMER)
}

/// Why reading a frame failed, as far as the close code is concerned (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameError {
    /// Over `TIDINGS_MAX_MESSAGE_BYTES`: 1009.
    TooBig,
    /// A text frame that is not UTF-8: 1007.
    InvalidUtf8,
    /// Broken framing (unmasked, reserved bits or opcodes, stray continuation): 1002.
    Protocol,
    /// The connection itself failed or ended: nobody to send a close to.
    Transport,
}

impl FrameError {
    fn of(e: &axum::Error) -> Self {
        use std::error::Error as _;
        use tokio_tungstenite::tungstenite::Error as WsError;
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(ws_error) = s.downcast_ref::<WsError>() {
                return match ws_error {
                    WsError::Capacity(_) => FrameError::TooBig,
                    WsError::Utf8(_) => FrameError::InvalidUtf8,
                    WsError::Protocol(
                        ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing | ProtocolError::ReceivedAfterClosing,
                    ) => FrameError::Transport,
                    WsError::Protocol(_) => FrameError::Protocol,
                    _ => FrameError::Transport,
                };
            }
            source = s.source();
        }
        let text = e.to_string();
        if text.contains("too long") || text.contains("Space limit exceeded") { FrameError::TooBig } else { FrameError::Transport }
    }
}

enum Admit {
    Handle,
    Skip,
    Closing,
}

/// Consecutive rate-limited messages after which the connection is closed 4008.
const RATE_STRIKES_BEFORE_CLOSE: u32 = 10;

impl Session {
    fn reply(&self, message: ServerMessage) {
        self.conn.outbox.push_control(message.to_json());
    }

    /// Applies the message rate: a message over it is answered `rate_limited`
    /// and not processed; too many in a row close the connection with 4008.
    fn admit_message(&mut self) -> Admit {
        if self.limiter.try_take() {
            self.rate_strikes = 0;
            return Admit::Handle;
        }
        self.rate_strikes += 1;
        self.node.metrics.client_messages.with_label_values(&["rate_limited"]).inc();
        if self.rate_strikes > RATE_STRIKES_BEFORE_CLOSE {
            self.conn.outbox.close_after_queued(close::RATE_LIMITED, "too many messages");
            return Admit::Closing;
        }
        self.reply(ServerMessage::error(
            error::RATE_LIMITED,
            format!("more than {} messages per second", self.node.config.client_rate),
            None,
        ));
        Admit::Skip
    }

    async fn handle_text(&mut self, text: &str) {
        let message = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                let label = if e.code == error::UNKNOWN_TYPE { "unknown" } else { "invalid" };
                self.node.metrics.client_messages.with_label_values(&[label]).inc();
                self.reply(ServerMessage::error(e.code, e.message, e.id));
                return;
            }
        };
        self.node.metrics.client_messages.with_label_values(&[message.type_name()]).inc();
        let conn = self.conn.clone();
        match message {
            ClientMessage::Subscribe { id, event_types, entity_refs, since } => {
                let old = conn.filter();
                let mut filter = old.clone();
                if let Err(e) = filter.subscribe(event_types, entity_refs) {
                    return self.reply(ServerMessage::error(error::INVALID_MESSAGE, e.to_string(), id));
                }
                let Some(since) = since else {
                    conn.set_filter(filter.clone());
                    return self.reply(ServerMessage::Subscribed { id, filter, recovered: None });
                };
                // Live events (and those queued but not yet sent) wait while
                // the missed ones are read; after `subscribed`, events restart
                // from `since` in id order.
                conn.outbox.hold();
                conn.set_filter(filter.clone());
                let last_sent = conn.outbox.last_sent();
                let replay = match Replay::begin(&self.node, &conn.workspace_id, since).await {
                    Ok(replay) => replay,
                    Err(e) => {
                        tracing::warn!(error = %e, "history read failed for subscribe since");
                        conn.set_filter(old);
                        conn.outbox.release_without_replay();
                        return self.reply(ServerMessage::error(error::UNAVAILABLE, "history is unavailable; subscribe again", id));
                    }
                };
                self.reply(ServerMessage::Subscribed { id, filter: filter.clone(), recovered: Some(replay.recovered()) });
                // Skip what this connection already received under its old filter.
                let keep = |e: &PreparedEvent| {
                    let matches_new = filter.matches(&e.event_type, e.entity_ref.as_deref());
                    let already_sent = e.id.is_some_and(|id| last_sent.is_some_and(|last| id <= last))
                        && old.matches(&e.event_type, e.entity_ref.as_deref());
                    matches_new && !already_sent
                };
                replay.run(&self.node, &conn, keep).await;
            }
            ClientMessage::Unsubscribe { id, event_types, entity_refs } => {
                let mut filter = conn.filter();
                match filter.unsubscribe(event_types, entity_refs) {
                    Ok(()) => {
                        conn.set_filter(filter.clone());
                        self.reply(ServerMessage::Unsubscribed { id, filter });
                    }
                    Err(e) => self.reply(ServerMessage::error(error::INVALID_MESSAGE, e.to_string(), id)),
                }
            }
            ClientMessage::UpdateFilter { id, event_types, entity_refs } => {
                let mut filter = conn.filter();
                match filter.replace(event_types, entity_refs) {
                    Ok(()) => {
                        conn.set_filter(filter.clone());
                        self.reply(ServerMessage::FilterUpdated { id, filter });
                    }
                    Err(e) => self.reply(ServerMessage::error(error::INVALID_MESSAGE, e.to_string(), id)),
                }
            }
            ClientMessage::Ping { id } => self.reply(ServerMessage::Pong { id, timestamp: now_rfc3339() }),
            ClientMessage::RequestMetrics { id, entity_refs } => {
                let wanted: Option<Vec<String>> = entity_refs.map(|r| r.iter().map(|r| r.to_lowercase()).collect());
                match self.node.broker.latest(&conn.workspace_id).await {
                    Ok(latest) => {
                        let mut data = Map::new();
                        for entry in latest.into_iter().filter(|l| l.event_type == "metrics_update") {
                            if wanted.as_ref().is_some_and(|w| !w.contains(&entry.entity_ref)) {
                                continue;
                            }
                            if let Ok(event) = serde_json::from_slice::<Value>(&entry.json) {
                                data.insert(entry.entity_ref, event);
                            }
                        }
                        self.reply(ServerMessage::Metrics { id, data });
                    }
                    Err(e) => self.reply(ServerMessage::error(error::UNAVAILABLE, e.to_string(), id)),
                }
            }
            ClientMessage::RequestHistory { id, since, limit, event_types } => {
                let limit = limit.unwrap_or(HISTORY_DEFAULT_LIMIT).clamp(1, HISTORY_MAX_LIMIT);
                match self.node.broker.history(&conn.workspace_id, since, limit).await {
                    Ok(page) => {
                        let events = page
                            .events
                            .iter()
                            .filter_map(|e| prepare(&conn.workspace_id, e.json.clone()))
                            .filter(|e| event_types.as_ref().is_none_or(|types| types.contains(&e.event_type)));
                        let events: Vec<PreparedEvent> = events.collect();
                        let text = encode_history(id.as_ref(), events.iter().map(|e| e.text.as_str()), page.recovered);
                        self.conn.outbox.push_control(text);
                    }
                    Err(e) => self.reply(ServerMessage::error(error::UNAVAILABLE, e.to_string(), id)),
                }
            }
            ClientMessage::Auth { id, token } => match crate::access::verify_live(&self.node, &token).await {
                Ok(claims) if claims.sub == self.claims.sub && claims.allows(&conn.workspace_id) => {
                    self.refreshed_exp = Some(claims.exp);
                    let expires_at = expires_at(claims.exp);
                    self.claims = claims;
                    self.reply(ServerMessage::Authenticated { id, expires_at });
                }
                // SPEC §3.4: the connection lost access to its workspace.
                Ok(_) => conn.outbox.close(close::FORBIDDEN, "the new token does not grant this connection (workspace or sub)"),
                // The current token stands until its own `exp` (then 4001).
                Err(e) => self.reply(ServerMessage::error(e.code, e.message, id)),
            },
        }
    }
}

/// Most frames written per wake-up before one flush: enough to turn a backlog
/// into one `write(2)`, few enough that a reply is never held back long.
const MAX_COALESCE: usize = 256;
/// Bytes of frames gathered before they are written even without a flush. The
/// write buffer keeps its largest size for the connection's life, so this is
/// also what a connection that once saw a burst holds (64 KiB cost 54 KB per
/// connection after a burst for no measurable CPU gain over 16 KiB).
const WRITE_COALESCE_BYTES: usize = 16 * 1024;

/// The connection's writer: pops what is queued, encodes nothing (event frames
/// are shared, encoded once in the hub), and writes everything already waiting
/// with one flush, so a backlog costs one syscall per wake-up instead of one per
/// event. Stalled writes are ended by the socket's write deadline
/// ([`crate::deadline`]), so no timer is armed per send.
async fn write_loop(node: Arc<Node>, conn: Arc<Connection>, mut sink: Sink, batch: bool, done: CancellationToken) {
    // One timer per connection, at half the heartbeat: every tick checks the
    // client's liveness (the reader marks what it receives), every other
    // tick sends the ping.
    let heartbeat = node.config.heartbeat;
    let mut tick = tokio::time::interval_at(Instant::now() + heartbeat / 2, heartbeat / 2);
    let mut odd_tick = false;
    // Resolved once: a label lookup per delivery is a hash and a lock.
    let delivered = node.metrics.messages_delivered.with_label_values(&[conn.transport.label()]);
    let mut frames: Vec<Message> = Vec::new();
    let mut events: Vec<Arc<PreparedEvent>> = Vec::new();
    loop {
        frames.clear();
        events.clear();
        // Freed before waiting: an idle connection holds no scratch space
        // (one allocation per wake-up costs less than 1 % of a delivery).
        frames.shrink_to(0);
        events.shrink_to(0);
        let first = tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {
                if conn.silent_for() > heartbeat * 2 {
                    tracing::debug!(connection_id = %conn.connection_id, "no sign of life for two heartbeats; dropping");
                    break;
                }
                odd_tick = !odd_tick;
                if odd_tick {
                    continue;
                }
                None
            }
            item = conn.outbox.pop() => Some(item),
        };
        let mut close = None;
        match first {
            None => frames.push(Message::Ping(Default::default())),
            Some(item) => close = collect(item, batch, &conn, &mut frames, &mut events),
        }
        while close.is_none() && frames.len() < MAX_COALESCE {
            let Some(item) = conn.outbox.try_pop() else { break };
            close = collect(item, batch, &conn, &mut frames, &mut events);
        }
        if !frames.is_empty() {
            // Open while the frames are written; only traced events have them.
            let delivering: Vec<tracing::Span> =
                events.iter().filter_map(|e| e.trace.as_ref()?.deliver_span(&conn.connection_id)).collect();
            let write = async {
                for frame in frames.drain(..) {
                    sink.feed(frame).await?;
                }
                sink.flush().await
            };
            let written = tokio::select! {
                // Biased: a write that completes at once never touches the outbox.
                biased;
                written = write => written.is_ok(),
                // Closed (e.g. condemned 4009) while the write to a client that
                // does not read is stuck: give the frames up, send the close.
                () = conn.outbox.closed() => continue,
            };
            drop(delivering);
            if !written {
                break;
            }
            if !events.is_empty() {
                delivered.inc_by(events.len() as u64);
                // One clock read per write, not per event.
                let now = std::time::SystemTime::now();
                for published_at in events.iter().filter_map(|e| e.published_at) {
                    if let Ok(latency) = now.duration_since(published_at) {
                        node.metrics.delivery_latency.observe(latency.as_secs_f64());
                    }
                }
            }
        }
        if let Some((code, reason)) = close {
            node.metrics.connections_closed.with_label_values(&[&code.to_string()]).inc();
            let dropped = conn.outbox.dropped_pending();
            if code == close::TOO_SLOW && dropped > 0 {
                // What it lost, for a client that reads again before the close.
                let _ = timeout(SLOW_CLOSE_GRACE, sink.send(Message::Text(ServerMessage::Lagged { dropped }.to_json().into()))).await;
            }
            send_close(&mut sink, code, reason).await;
            break;
        }
    }
    done.cancel();
    // Nothing sends any more: wake a replay waiting for room, and refuse pushes.
    conn.outbox.close(close::NORMAL, "");
}

/// Turns one queued item into frames; `Some` for a close, which ends the round.
fn collect(
    item: Outgoing,
    batch: bool,
    conn: &Connection,
    frames: &mut Vec<Message>,
    events: &mut Vec<Arc<PreparedEvent>>,
) -> Option<(u16, &'static str)> {
    match item {
        Outgoing::Event(event) if batch => {
            let first = events.len();
            events.push(event);
            conn.outbox.pop_more_events(MAX_BATCH, events);
            frames.push(Message::Text(encode_batch(events[first..].iter().map(|e| e.text.as_str())).into()));
        }
        Outgoing::Event(event) => {
            frames.push(Message::Text(event.text.clone()));
            events.push(event);
        }
        Outgoing::Control(text) => frames.push(Message::Text(text)),
        Outgoing::Lagged(dropped) => frames.push(Message::Text(ServerMessage::Lagged { dropped }.to_json().into())),
        Outgoing::Close(code, reason) => return Some((code, reason)),
    }
    None
}
