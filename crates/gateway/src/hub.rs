//! The hub: this process's registry of live connections, by workspace, and the
//! fan-out of broker messages to them. It does no I/O and never waits on a client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tidings_broker::MessageHandler;
use tidings_protocol::{EventHeader, Filter};

use crate::metrics::GatewayMetrics;
use crate::outbox::{Outbox, PreparedEvent, Pushed};

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// One client connection as the hub sees it.
#[derive(Debug)]
pub struct Connection {
    pub key: u64,
    pub connection_id: String,
    pub workspace_id: String,
    pub user_id: String,
    pub jti: Option<String>,
    pub transport: Transport,
    /// A std mutex: read on every fan-out, changed by the client's own messages.
    pub filter: Mutex<Filter>,
    pub outbox: Outbox,
    /// When the client last sent anything, on [`clock_ms`]: its reader marks
    /// it, its writer's heartbeat tick reads it.
    pub seen_ms: AtomicU64,
}

/// Milliseconds since this process first asked, on tokio's clock (so tests
/// with paused time see it move as they advance).
pub fn clock_ms() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    EPOCH.get_or_init(tokio::time::Instant::now).elapsed().as_millis() as u64
}

impl Connection {
    pub fn filter(&self) -> Filter {
        self.filter.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_filter(&self, filter: Filter) {
        *self.filter.lock().unwrap_or_else(|p| p.into_inner()) = filter;
    }

    /// The client just showed a sign of life.
    pub fn mark_seen(&self) {
        self.seen_ms.store(clock_ms(), Ordering::Relaxed);
    }

    /// How long the client has been silent.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(clock_ms().saturating_sub(self.seen_ms.load(Ordering::Relaxed)))
    }

    fn wants(&self, event: &PreparedEvent) -> bool {
        self.filter.lock().unwrap_or_else(|p| p.into_inner()).matches(&event.event_type, event.entity_ref.as_deref())
    }

    /// The events its filter passes, in order, under one look at the filter.
    fn wanted(&self, events: &[Arc<PreparedEvent>], into: &mut Vec<Arc<PreparedEvent>>) {
        let filter = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        into.extend(events.iter().filter(|e| filter.matches(&e.event_type, e.entity_ref.as_deref())).cloned());
    }
}

/// Local connections by workspace.
#[derive(Debug)]
pub struct Hub {
    /// A std RwLock: fan-out reads it for a copy of one workspace's list;
    /// connects and disconnects write briefly.
    workspaces: RwLock<HashMap<String, HashMap<u64, Arc<Connection>>>>,
    metrics: GatewayMetrics,
    /// Resolved once: events the fan-out wrote to WebSockets itself.
    written_directly: prometheus::IntCounter,
}

impl Hub {
    pub fn new(metrics: GatewayMetrics) -> Self {
        let written_directly = metrics.messages_delivered.with_label_values(&[Transport::WebSocket.label()]);
        Self { workspaces: RwLock::new(HashMap::new()), metrics, written_directly }
    }

    /// Adds a connection; true when it is the workspace's first.
    pub fn insert(&self, conn: Arc<Connection>) -> bool {
        let mut map = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        let conns = map.entry(conn.workspace_id.clone()).or_default();
        conns.insert(conn.key, conn);
        conns.len() == 1
    }

    /// Removes a connection; true when the workspace has no local reader left.
    pub fn remove(&self, workspace_id: &str, key: u64) -> bool {
        let mut map = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = map.get_mut(workspace_id) else { return false };
        if conns.remove(&key).is_none() {
            return false;
        }
        if conns.is_empty() {
            map.remove(workspace_id);
            true
        } else {
            false
        }
    }

    /// Workspaces with at least one local connection.
    pub fn workspace_ids(&self) -> Vec<String> {
        self.workspaces.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Closes every local connection of a workspace with `code`.
    pub fn close_workspace(&self, workspace_id: &str, code: u16, reason: &'static str) -> usize {
        let map = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        let conns = map.get(workspace_id).map(|c| c.values().collect::<Vec<_>>()).unwrap_or_default();
        for conn in &conns {
            conn.outbox.close(code, reason);
        }
        conns.len()
    }

    pub fn count(&self, workspace_id: &str) -> usize {
        self.workspaces.read().unwrap_or_else(|p| p.into_inner()).get(workspace_id).map_or(0, HashMap::len)
    }

    /// Every local connection, for draining.
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.workspaces.read().unwrap_or_else(|p| p.into_inner()).values().flat_map(|c| c.values().cloned()).collect()
    }

    pub fn total(&self) -> usize {
        self.workspaces.read().unwrap_or_else(|p| p.into_inner()).values().map(HashMap::len).sum()
    }

    /// Hands one event to every local connection of its workspace whose filter
    /// passes it. The JSON is shared, not re-encoded, per connection.
    pub fn fan_out(&self, workspace_id: &str, payload: Bytes) {
        self.fan_out_many(workspace_id, vec![payload]);
    }

    /// [`Hub::fan_out`] for events of one workspace that arrived together:
    /// each connection gets the ones it wants in one push (one write when it
    /// is written to directly), in order.
    pub fn fan_out_many(&self, workspace_id: &str, payloads: Vec<Bytes>) {
        let mut run = Vec::with_capacity(payloads.len());
        for payload in payloads {
            self.metrics.broker_messages.inc();
            let Some((mut event, traceparent)) = prepare_traced(workspace_id, payload) else {
                self.metrics.events_dropped.with_label_values(&["invalid"]).inc();
                continue;
            };
            match crate::trace::received(workspace_id, &event.event_type, traceparent.as_deref()) {
                None => run.push(Arc::new(event)),
                Some((receive, delivery)) => {
                    // A traced event goes alone, inside its spans.
                    self.deliver(workspace_id, &std::mem::take(&mut run));
                    let _receiving = receive.enter();
                    event.trace = Some(delivery.clone());
                    let recipients = self.deliver(workspace_id, &[Arc::new(event)]);
                    delivery.record_recipients(recipients);
                }
            }
        }
        self.deliver(workspace_id, &run);
    }

    /// Pushes `events` to the connections of `workspace_id` that want them;
    /// returns how many connections got at least one.
    fn deliver(&self, workspace_id: &str, events: &[Arc<PreparedEvent>]) -> usize {
        if events.is_empty() {
            return 0;
        }
        // Copied, so the lock is not held while the fan-out writes to sockets
        // (10,000 writes are ~70 ms of a core; a connect or disconnect meanwhile
        // would block its thread on the write lock for as long).
        let conns: Vec<Arc<Connection>> = {
            let map = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
            let Some(conns) = map.get(workspace_id) else { return 0 };
            conns.values().cloned().collect()
        };
        let mut recipients = 0;
        let mut written = 0;
        let mut wanted = Vec::new();
        for conn in &conns {
            let events = match events {
                [event] if conn.wants(event) => events,
                [_] => continue,
                _ => {
                    wanted.clear();
                    conn.wanted(events, &mut wanted);
                    if wanted.is_empty() {
                        continue;
                    }
                    &wanted[..]
                }
            };
            recipients += 1;
            conn.outbox.push_events(events, |event, pushed| match pushed {
                Pushed::Written => {
                    written += 1;
                    // Read per write: the last socket of a large fan-out is
                    // written milliseconds after the first.
                    if let Some(seconds) = event.published_at.and_then(latency_since) {
                        self.metrics.delivery_latency.observe(seconds);
                    }
                }
                Pushed::Queued | Pushed::Closed => {}
                Pushed::Conflated => self.metrics.events_conflated.with_label_values(&["slow_client"]).inc(),
                Pushed::Dropped => self.metrics.events_dropped.with_label_values(&["slow_client"]).inc(),
                Pushed::Condemned => {
                    self.metrics.events_dropped.with_label_values(&["slow_client"]).inc();
                    tracing::info!(connection_id = %conn.connection_id, "client too slow, closing 4009");
                }
            });
        }
        if written > 0 {
            self.written_directly.inc_by(written);
        }
        recipients
    }
}

impl MessageHandler for Hub {
    fn on_message(&self, workspace_id: &str, payload: Bytes) {
        self.fan_out(workspace_id, payload);
    }

    fn on_messages(&self, workspace_id: &str, payloads: Vec<Bytes>) {
        self.fan_out_many(workspace_id, payloads);
    }

    fn workspaces(&self) -> Vec<String> {
        self.workspace_ids()
    }

    fn has_readers(&self, workspace_id: &str) -> bool {
        self.count(workspace_id) > 0
    }

    fn on_reconnect(&self) {
        self.metrics.broker_reconnects.inc();
    }

    fn on_connection(&self, connected: bool) {
        self.metrics.broker_connected.set(i64::from(connected));
    }

    fn on_gap(&self, workspace_id: &str) {
        // They reconnect with `since` and learn `recovered: false` there: the
        // one way a client is told, whatever transport it uses.
        let closed =
            self.close_workspace(workspace_id, tidings_protocol::codes::close::DRAINING, "events were missed; reconnect with since");
        tracing::warn!(workspace_id, closed, "events missed while the broker was away are gone from history; clients told to reconnect");
    }

    fn on_revoked(&self, jti: &str) {
        let map = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        for conn in map.values().flat_map(|c| c.values()) {
            if conn.jti.as_deref() == Some(jti) {
                tracing::info!(connection_id = %conn.connection_id, "token revoked, closing 4003");
                conn.outbox.close(tidings_protocol::codes::close::FORBIDDEN, "token revoked");
            }
        }
    }
}

/// Reads the routing fields of a broker message, refusing anything that is not
/// an event of `workspace_id` (the channel decides the audience; the event must agree).
pub fn prepare(workspace_id: &str, payload: Bytes) -> Option<PreparedEvent> {
    prepare_traced(workspace_id, payload).map(|(event, _)| event)
}

/// [`prepare`], also returning the event's `traceparent` for the fan-out's spans.
fn prepare_traced(workspace_id: &str, payload: Bytes) -> Option<(PreparedEvent, Option<String>)> {
    let header: EventHeader = serde_json::from_slice(&payload).ok()?;
    if header.workspace_id != workspace_id {
        tracing::warn!(channel = workspace_id, event_workspace = %header.workspace_id, "event on a foreign workspace channel dropped");
        return None;
    }
    tidings_protocol::event::validate_event_type(&header.event_type).ok()?;
    let entity_ref = header.entity_ref.map(|r| r.to_lowercase());
    let published_at = header
        .timestamp
        .as_deref()
        .and_then(tidings_protocol::timestamp::parse_rfc3339)
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos()).ok())
        .map(|nanos| UNIX_EPOCH + std::time::Duration::from_nanos(nanos));
    let text = Utf8Bytes::try_from(payload).ok()?;
    let event =
        PreparedEvent { event_type: header.event_type, entity_ref, id: header.id, published_at, text, trace: None, frame: OnceLock::new() };
    Some((event, header.trace))
}

/// Seconds from `published_at` to now, if the clock allows.
pub fn latency_since(published_at: SystemTime) -> Option<f64> {
    SystemTime::now().duration_since(published_at).ok().map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Mutex, Weak};

    use super::*;
    use crate::outbox::{DirectWrite, DirectWriter, Outbox};

    /// A socket stand-in that looks, while it is written to, whether the hub's
    /// lock could be taken for a connect or a disconnect.
    #[derive(Debug, Default)]
    struct LockProbe {
        hub: Mutex<Weak<Hub>>,
        writes: AtomicU64,
        lock_was_free: AtomicBool,
    }

    impl DirectWriter for LockProbe {
        fn try_write_frames(&self, events: &[Arc<PreparedEvent>]) -> DirectWrite {
            if let Some(hub) = self.hub.lock().unwrap().upgrade() {
                self.lock_was_free.store(hub.workspaces.try_write().is_ok(), Ordering::SeqCst);
            }
            self.writes.fetch_add(events.len() as u64, Ordering::SeqCst);
            DirectWrite::Whole
        }
    }

    fn connection(key: u64, workspace_id: &str) -> Arc<Connection> {
        Arc::new(Connection {
            key,
            connection_id: format!("c{key}"),
            workspace_id: workspace_id.into(),
            user_id: "u".into(),
            jti: None,
            transport: Transport::WebSocket,
            filter: Mutex::new(Filter::default()),
            outbox: Outbox::new(1 << 20),
            seen_ms: AtomicU64::new(0),
        })
    }

    #[test]
    fn the_fan_out_writes_to_sockets_without_holding_the_hubs_lock() {
        let metrics = GatewayMetrics::register(&prometheus::Registry::new()).unwrap();
        let hub = Arc::new(Hub::new(metrics));
        let probe = Arc::new(LockProbe::default());
        *probe.hub.lock().unwrap() = Arc::downgrade(&hub);
        let conn = connection(1, "w1");
        conn.outbox.write_directly_to(probe.clone());
        hub.insert(conn.clone());
        // The writer waits on its empty queue: the fan-out may write directly.
        assert!(futures_util::FutureExt::now_or_never(conn.outbox.pop()).is_none());
        let event = |n: u32| Bytes::from(format!(r#"{{"type":"t","workspace_id":"w1","data":{{"n":{n}}}}}"#));
        hub.fan_out("w1", event(1));
        hub.fan_out_many("w1", vec![event(2), event(3)]);
        assert_eq!(probe.writes.load(Ordering::SeqCst), 3, "all three written directly");
        assert!(probe.lock_was_free.load(Ordering::SeqCst), "a connect could have taken the lock meanwhile");
        assert_eq!(conn.outbox.queued_bytes(), 0);
    }
}
