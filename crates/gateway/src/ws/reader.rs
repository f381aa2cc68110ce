//! The connection's reader: the replay asked for by `since`, client messages
//! (subscribe, history, ping, token refresh) with their rate limit, and the
//! tail of the close handshake.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::extract::ws::Message;
use futures_util::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tidings_protocol::codes::{close, error};
use tidings_protocol::messages::{encode_history, parse_client_message};
use tidings_protocol::timestamp::now_rfc3339;
use tidings_protocol::{ClientMessage, Filter, ServerMessage};
use tokio::time::{Instant, sleep, timeout};

use super::frames::{CLOSE_GRACE, FrameStream, until_unix};
use super::join::Done;
use crate::access::expires_at;
use crate::hub::{Connection, prepare};
use crate::node::{Admission, Node, Registration};
use crate::outbox::PreparedEvent;
use crate::rate::TokenBucket;
use crate::replay::Replay;

/// Default and largest `limit` of `request_history`.
const HISTORY_DEFAULT_LIMIT: usize = 100;
const HISTORY_MAX_LIMIT: usize = 1000;

/// The replay a connection asked for with `since`, and the filter it applies.
pub(super) struct Opening {
    pub(super) replay: Replay,
    pub(super) filter: Filter,
}

/// The connection's reader: the replay asked for by `since` (while the writer
/// sends it), then client messages until the connection ends, then the close
/// handshake's tail.
pub(super) async fn read_side(session: &mut Session, mut stream: impl FrameStream, opening: Option<Box<Opening>>, done: &Done) {
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
async fn linger(ended: ReadEnd, stream: &mut impl FrameStream, done: &Done) {
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
pub(super) struct Session {
    pub(super) node: Arc<Node>,
    pub(super) conn: Arc<Connection>,
    pub(super) claims: tidings_token::Claims,
    pub(super) limiter: TokenBucket,
    pub(super) rate_strikes: u32,
    /// Set by a successful `auth` refresh: the new `exp` to arm.
    pub(super) refreshed_exp: Option<u64>,
    /// The connection's place in the hub and under the caps, for its life
    /// (dropped in this order, as fields are).
    pub(super) _registration: Registration,
    pub(super) _admission: Admission,
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
async fn read_loop(session: &mut Session, stream: &mut impl FrameStream, done: &Done) -> ReadEnd {
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

async fn read_messages(session: &mut Session, stream: &mut impl FrameStream, done: &Done) -> ReadEnd {
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

/// Why reading a frame failed, as far as the close code is concerned (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameError {
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
    pub(super) fn of(e: &axum::Error) -> Self {
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
