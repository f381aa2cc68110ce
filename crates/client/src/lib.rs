//! A reconnecting Tidings client (SPEC §3): it connects to `/ws` with a token
//! and a filter, and keeps its place across lost connections — it reconnects
//! with backoff and full jitter, resumes with `since=<last id>`, drops ids it
//! has already delivered, re-applies the filter, and tells the application when
//! history no longer reaches back (`recovered: false`). It follows the close
//! codes of SPEC §3.4: 1012 reconnects at once, 1013 / 503 wait (`Retry-After`),
//! 4001 asks the application for a new token, 4003 stops, 4008 / 4009 back off.
//!
//! The application reads [`ClientEvent`]s from [`Client::next`] and watches
//! [`ConnectionState`] through [`Client::states`]; messages it sends while
//! disconnected wait in a bounded queue.

pub mod backoff;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tidings_protocol::codes::close;
use tidings_protocol::messages::SERVER_MESSAGE_TYPES;
use tidings_protocol::{ClientMessage, Event, EventId, Filter, Selection, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;

/// Why the application is asked for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRequest {
    /// For the first connection.
    Initial,
    /// The last one expired (close 4001, or 401 `token_expired`).
    Expired,
}

/// Gives the client a token; `None` stops the client.
pub type TokenProvider = Arc<dyn Fn(TokenRequest) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// A provider that always answers the same token.
pub fn static_token(token: impl Into<String>) -> TokenProvider {
    let token = token.into();
    Arc::new(move |_| {
        let token = token.clone();
        Box::pin(async move { Some(token) })
    })
}

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway, e.g. `ws://127.0.0.1:8080` (`/ws` is appended).
    pub url: String,
    pub workspace_id: String,
    pub filter: Filter,
    pub backoff: Backoff,
    /// How often the client sends `{"type":"ping"}`.
    pub ping_every: Duration,
    /// A connection whose `pong` is this late is given up.
    pub pong_timeout: Duration,
    /// Messages kept while disconnected; [`Client::send`] refuses beyond it.
    pub outgoing_queue: usize,
    /// Where to resume from on the first connection (e.g. an id the
    /// application stored); afterwards the client tracks it itself.
    pub since: Option<EventId>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, workspace_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            workspace_id: workspace_id.into(),
            filter: Filter::default(),
            backoff: Backoff::default(),
            ping_every: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            outgoing_queue: 100,
            since: None,
        }
    }
}

/// What the application receives.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// An event, at most once per id, in id order for durable events.
    Event(Event),
    /// History no longer reaches back to where the client was (trimmed, or
    /// lost by the server): reload the state, then carry on with what follows.
    Reload,
    /// The gateway dropped this many events for this client (it was too slow).
    Lagged(u64),
    /// Any other server message (replies to what the application sent).
    Reply(Value),
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    Connecting {
        attempt: u32,
    },
    Connected {
        connection_id: String,
        server: String,
    },
    /// Waiting `delay` before attempt `attempt`.
    Reconnecting {
        attempt: u32,
        delay: Duration,
    },
    /// The client will not connect again.
    Stopped(StopReason),
}

/// Why the client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// [`Client::close`], or the client was dropped.
    Closed,
    /// The token was revoked or lost the workspace (4003, 403).
    Forbidden,
    /// The token provider had no token.
    NoToken,
    /// A refusal that retrying cannot fix (400, 401 other than expiry, 429 after retries).
    Refused(u16),
    /// `max_attempts` failures in a row.
    GaveUp,
}

/// [`Client::send`] could not queue the message.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the outgoing queue is full")]
    Full,
    #[error("the client has stopped")]
    Stopped,
}

/// A running client; dropping it stops the connection.
#[derive(Debug)]
pub struct Client {
    events: mpsc::UnboundedReceiver<ClientEvent>,
    states: watch::Receiver<ConnectionState>,
    outgoing: mpsc::Sender<ClientMessage>,
    stop: CancellationToken,
}

impl Client {
    /// Starts connecting in the background (inside a tokio runtime).
    pub fn connect(config: ClientConfig, tokens: TokenProvider) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (states_tx, states) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let (outgoing, outgoing_rx) = mpsc::channel(config.outgoing_queue.max(1));
        let stop = CancellationToken::new();
        let worker = Worker {
            last_id: config.since,
            filter: config.filter.clone(),
            config,
            tokens,
            events: events_tx,
            states: states_tx,
            outgoing: outgoing_rx,
            stop: stop.clone(),
        };
        tokio::spawn(worker.run());
        Self { events, states, outgoing, stop }
    }

    /// The next event, or `None` once the client stopped and everything was read.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Connection states, newest first.
    pub fn states(&self) -> watch::Receiver<ConnectionState> {
        self.states.clone()
    }

    /// Queues a message for the server; it waits while disconnected. Filter
    /// changes (`subscribe`, `unsubscribe`, `update_filter`) are remembered and
    /// re-applied after every reconnect.
    pub fn send(&self, message: ClientMessage) -> Result<(), SendError> {
        self.outgoing.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
        })
    }

    /// Closes the connection (1000) and stops reconnecting.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How one connection ended, and so what to do next.
#[derive(Debug)]
enum Ended {
    /// The server closed with this code (or the socket failed: `None`).
    Closed(Option<u16>),
    /// Refused before the upgrade with this status (and `Retry-After`).
    Refused {
        status: u16,
        retry_after: Option<Duration>,
        expired: bool,
    },
    /// No pong in time.
    Silent,
    Stopped,
}

struct Worker {
    config: ClientConfig,
    tokens: TokenProvider,
    events: mpsc::UnboundedSender<ClientEvent>,
    states: watch::Sender<ConnectionState>,
    outgoing: mpsc::Receiver<ClientMessage>,
    stop: CancellationToken,
    /// Newest durable id delivered to the application.
    last_id: Option<EventId>,
    /// The filter as the application last set it.
    filter: Filter,
}

impl Worker {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut request = TokenRequest::Initial;
        let reason = loop {
            if self.stop.is_cancelled() {
                break StopReason::Closed;
            }
            let _ = self.states.send(ConnectionState::Connecting { attempt: failures });
            let Some(token) = (self.tokens)(request).await else { break StopReason::NoToken };
            request = TokenRequest::Initial;
            let (ended, was_connected) = self.connect_once(&token).await;
            if was_connected {
                failures = 0;
            }
            let delay = match ended {
                Ended::Stopped => break StopReason::Closed,
                Ended::Closed(Some(close::FORBIDDEN)) => break StopReason::Forbidden,
                // Draining: another gateway is ready now; jitter spreads the herd.
                Ended::Closed(Some(close::DRAINING)) => Duration::from_secs(1).mul_f64(rand::random::<f64>()),
                Ended::Closed(Some(close::TOKEN_EXPIRED)) | Ended::Refused { expired: true, .. } => {
                    request = TokenRequest::Expired;
                    Duration::ZERO
                }
                Ended::Refused { status: 403, .. } => break StopReason::Forbidden,
                Ended::Refused { status: status @ (400 | 401), .. } => break StopReason::Refused(status),
                Ended::Refused { retry_after: Some(after), .. } => after.max(self.config.backoff.delay(failures)),
                Ended::Closed(_) | Ended::Refused { .. } | Ended::Silent => self.config.backoff.delay(failures),
            };
            failures += 1;
            if self.config.backoff.exhausted(failures) {
                break StopReason::GaveUp;
            }
            let _ = self.states.send(ConnectionState::Reconnecting { attempt: failures, delay });
            tokio::select! {
                _ = self.stop.cancelled() => break StopReason::Closed,
                _ = sleep(delay) => {}
            }
        };
        let _ = self.states.send(ConnectionState::Stopped(reason));
    }

    fn url(&self, token: &str) -> String {
        let mut url = format!(
            "{}/ws?token={}&workspace_id={}",
            self.config.url.trim_end_matches('/'),
            encode(token),
            encode(&self.config.workspace_id)
        );
        for (name, selection) in [("event_types", &self.filter.event_types), ("entity_refs", &self.filter.entity_refs)] {
            if let Selection::Only(items) = selection
                && !items.is_empty()
            {
                let list: Vec<String> = items.iter().map(|i| encode(i)).collect();
                url.push_str(&format!("&{name}={}", list.join(",")));
            }
        }
        if let Some(since) = self.last_id {
            url.push_str(&format!("&since={since}"));
        }
        url
    }

    /// One connection: returns how it ended and whether it got as far as `connected`.
    async fn connect_once(&mut self, token: &str) -> (Ended, bool) {
        let url = self.url(token);
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let mut ws = tokio::select! {
            _ = self.stop.cancelled() => return (Ended::Stopped, false),
            result = timeout(Duration::from_secs(10), connecting) => match result {
                Err(_) => return (Ended::Closed(None), false),
                Ok(Ok((ws, _))) => ws,
                Ok(Err(tungstenite::Error::Http(response))) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    let expired = status == 401 && body.contains(tidings_protocol::codes::error::TOKEN_EXPIRED);
                    return (Ended::Refused { status, retry_after, expired }, false);
                }
                Ok(Err(_)) => return (Ended::Closed(None), false),
            },
        };
        // The first message is `connected`.
        let hello = match timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ServerMessage>(&text).ok(),
            Ok(Some(Ok(Message::Close(frame)))) => return (Ended::Closed(frame.map(|f| u16::from(f.code))), false),
            _ => None,
        };
        let Some(ServerMessage::Connected { connection_id, server, recovered, .. }) = hello else {
            return (Ended::Closed(None), false);
        };
        if recovered == Some(false) {
            let _ = self.events.send(ClientEvent::Reload);
        }
        let _ = self.states.send(ConnectionState::Connected { connection_id, server });
        if needs_explicit_filter(&self.filter) {
            let message = ClientMessage::UpdateFilter {
                id: None,
                event_types: Some(self.filter.event_types.clone()),
                entity_refs: Some(self.filter.entity_refs.clone()),
            };
            if ws.send(Message::text(serde_json::to_string(&message).unwrap_or_default())).await.is_err() {
                return (Ended::Closed(None), true);
            }
        }
        (self.session(&mut ws).await, true)
    }

    async fn session(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> Ended {
        let mut ping = tokio::time::interval_at(Instant::now() + self.config.ping_every, self.config.ping_every);
        let mut awaiting_pong: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ended::Stopped;
                }
                _ = ping.tick() => {
                    if awaiting_pong.is_some_and(|sent| sent.elapsed() > self.config.pong_timeout) {
                        return Ended::Silent;
                    }
                    if awaiting_pong.is_none() {
                        awaiting_pong = Some(Instant::now());
                        let ping = serde_json::to_string(&ClientMessage::Ping { id: None }).unwrap_or_default();
                        if ws.send(Message::text(ping)).await.is_err() {
                            return Ended::Closed(None);
                        }
                    }
                }
                message = self.outgoing.recv() => {
                    let Some(message) = message else { continue };
                    self.remember_filter(&message);
                    if ws.send(Message::text(serde_json::to_string(&message).unwrap_or_default())).await.is_err() {
                        return Ended::Closed(None);
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if self.handle_text(&text) {
                            awaiting_pong = None;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return Ended::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ended::Closed(None),
                }
            }
            if awaiting_pong.is_some_and(|sent| sent.elapsed() > self.config.pong_timeout) {
                return Ended::Silent;
            }
        }
    }

    /// Hands one frame to the application; true when it was a `pong`.
    fn handle_text(&mut self, text: &str) -> bool {
        let Ok(value) = serde_json::from_str::<Value>(text) else { return false };
        let kind = value["type"].as_str().unwrap_or_default();
        if !SERVER_MESSAGE_TYPES.contains(&kind) {
            self.deliver(value);
            return false;
        }
        match kind {
            "pong" => {
                // The client's own heartbeat pings carry no id; the application's do.
                if !value["id"].is_null() {
                    let _ = self.events.send(ClientEvent::Reply(value));
                }
                return true;
            }
            "batch" => {
                if let Value::Array(events) = value["events"].clone() {
                    events.into_iter().for_each(|e| self.deliver(e));
                }
            }
            "lagged" => {
                let _ = self.events.send(ClientEvent::Lagged(value["dropped"].as_u64().unwrap_or(0)));
            }
            "subscribed" if value["recovered"] == false => {
                let _ = self.events.send(ClientEvent::Reload);
                let _ = self.events.send(ClientEvent::Reply(value));
            }
            _ => {
                let _ = self.events.send(ClientEvent::Reply(value));
            }
        }
        false
    }

    /// An event, unless its id was delivered already (a replay after a
    /// reconnect overlaps what the last connection sent).
    fn deliver(&mut self, value: Value) {
        let Ok(event) = serde_json::from_value::<Event>(value) else { return };
        if let Some(id) = event.id {
            if self.last_id.is_some_and(|last| id <= last) {
                return;
            }
            self.last_id = Some(id);
        }
        let _ = self.events.send(ClientEvent::Event(event));
    }

    fn remember_filter(&mut self, message: &ClientMessage) {
        let mut filter = self.filter.clone();
        let applied = match message.clone() {
            ClientMessage::Subscribe { event_types, entity_refs, .. } => filter.subscribe(event_types, entity_refs),
            ClientMessage::Unsubscribe { event_types, entity_refs, .. } => filter.unsubscribe(event_types, entity_refs),
            ClientMessage::UpdateFilter { event_types, entity_refs, .. } => filter.replace(event_types, entity_refs),
            _ => return,
        };
        if applied.is_ok() {
            self.filter = filter;
        }
    }
}

/// A dimension emptied by `unsubscribe` cannot be said in the URL.
fn needs_explicit_filter(filter: &Filter) -> bool {
    [&filter.event_types, &filter.entity_refs].iter().any(|s| matches!(s, Selection::Only(items) if items.is_empty()))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("component:default/a b"), "component%3Adefault%2Fa%20b");
        assert_eq!(encode("abc-_.~"), "abc-_.~");
    }
}
