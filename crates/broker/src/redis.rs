//! The Redis broker (SPEC §4): durable publish through `scripts/publish.lua`,
//! history from the workspace stream, latest state from its hash, and one
//! dedicated pub/sub connection per process that follows the hub's workspaces.
//!
//! The pub/sub connection reconnects with capped, jittered exponential backoff,
//! re-subscribes every workspace, and replays from each stream what was
//! published while it was away, so local clients see no gap when Redis kept
//! its data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{PubSubSink, PubSubStream};
use tidings_protocol::keys::WorkspaceKeys;
use tidings_protocol::payloads::is_conflatable;
use tidings_protocol::{Event, EventId};
use tokio::time::timeout;

use crate::{Broker, BrokerError, HistoryPage, LatestEvent, MessageHandler, StoredEvent};

/// The durable publish script, shipped as `scripts/publish.lua` for other services.
pub const PUBLISH_SCRIPT: &str = include_str!("../../../scripts/publish.lua");

/// How long one Redis command may take before the broker calls Redis unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is probed, so a silent network failure is noticed.
const PUBSUB_PING_EVERY: Duration = Duration::from_secs(5);

/// Settings of a Redis broker.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://`).
    pub url: String,
    pub history_size: usize,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// A stream entry as XRANGE answers it: id and field/value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// What the pub/sub side shares with the broker handle.
struct PubSubState {
    /// Workspaces this process wants, and the newest id delivered for each
    /// (what a reconnect replays after).
    wanted: HashMap<String, Option<EventId>>,
    /// The live connection's command half, when connected.
    sink: Option<PubSubSink>,
}

struct Shared {
    pool: deadpool_redis::Pool,
    handler: Arc<dyn MessageHandler>,
    history_size: usize,
    /// An async mutex: held across SUBSCRIBE round trips so a reconnect and a
    /// new subscription cannot interleave and lose one.
    pubsub: tokio::sync::Mutex<PubSubState>,
    /// Newest delivered id per workspace, readable without the async lock on the hot path.
    delivered: Mutex<HashMap<String, EventId>>,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

/// A broker on one Redis server.
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("history_size", &self.shared.history_size).finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects the command pool and starts the pub/sub task. Fails only on a
    /// malformed URL: an unreachable Redis is retried in the background (and
    /// reported by [`Broker::is_ready`]).
    pub fn connect(config: RedisConfig, handler: Arc<dyn MessageHandler>) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| BrokerError::Config(e.to_string()))?;
        let mut pool_config = deadpool_redis::Config::from_url(config.url.clone());
        pool_config.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(COMMAND_TIMEOUT),
                create: Some(COMMAND_TIMEOUT),
                recycle: Some(COMMAND_TIMEOUT),
            },
            ..deadpool_redis::PoolConfig::default()
        });
        let pool = pool_config.create_pool(Some(deadpool_redis::Runtime::Tokio1)).map_err(|e| BrokerError::Config(e.to_string()))?;
        let shared = Arc::new(Shared {
            pool,
            handler,
            history_size: config.history_size.max(1),
            pubsub: tokio::sync::Mutex::new(PubSubState { wanted: HashMap::new(), sink: None }),
            delivered: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        tokio::spawn(pubsub_loop(client, Arc::downgrade(&shared)));
        Ok(Self { shared, script: Arc::new(redis::Script::new(PUBLISH_SCRIPT)) })
    }

    /// Times the pub/sub connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.shared.pool.get().await.map_err(unavailable)
    }

    async fn publish_durable(&self, mut event: Event) -> Result<Event, BrokerError> {
        event.id = None;
        let keys = WorkspaceKeys::new(&event.workspace_id, false);
        let latest_field = match &event.entity_ref {
            Some(r) if is_conflatable(&event.event_type) => format!("{}:{r}", event.event_type),
            _ => String::new(),
        };
        let json = event.to_json();
        let mut conn = self.conn().await?;
        let mut invocation = self.script.key(&keys.events);
        invocation.key(&keys.latest).key(&keys.channel).arg(json).arg(self.shared.history_size).arg(latest_field).arg("0");
        let id: String = timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await.map_err(unavailable)?.map_err(unavailable)?;
        event.id = Some(id.parse().map_err(|e| BrokerError::Protocol(format!("script returned {id:?}: {e}")))?);
        Ok(event)
    }

    async fn publish_live_only(&self, event: Event) -> Result<(), BrokerError> {
        let keys = WorkspaceKeys::new(&event.workspace_id, false);
        let mut conn = self.conn().await?;
        let cmd = redis::cmd("PUBLISH").arg(&keys.channel).arg(event.to_json()).to_owned();
        let _: i64 = timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await.map_err(unavailable)?.map_err(unavailable)?;
        Ok(())
    }

    async fn read_history(&self, workspace_id: &str, since: Option<EventId>, limit: usize) -> Result<HistoryPage, BrokerError> {
        read_history(&self.shared.pool, workspace_id, since, limit).await
    }

    async fn read_latest(&self, workspace_id: &str) -> Result<Vec<LatestEvent>, BrokerError> {
        let keys = WorkspaceKeys::new(workspace_id, false);
        let mut conn = self.conn().await?;
        let cmd = redis::cmd("HGETALL").arg(&keys.latest).to_owned();
        let fields: Vec<(String, Vec<u8>)> =
            timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await.map_err(unavailable)?.map_err(unavailable)?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, json)| {
                let (event_type, entity_ref) =
                    ["metrics_update:", "health_update:"].iter().find_map(|p| field.strip_prefix(p).map(|r| (&p[..p.len() - 1], r)))?;
                Some(LatestEvent { entity_ref: entity_ref.to_string(), event_type: event_type.to_string(), json: Bytes::from(json) })
            })
            .collect())
    }

    async fn add_subscription(&self, workspace_id: &str) -> Result<(), BrokerError> {
        let channel = WorkspaceKeys::new(workspace_id, false).channel;
        // Where this subscription starts: live delivery covers what follows,
        // a reconnect replays after it.
        let start = last_stream_id(&self.shared.pool, workspace_id).await.ok().flatten();
        let mut state = self.shared.pubsub.lock().await;
        if state.wanted.contains_key(workspace_id) {
            return Ok(());
        }
        state.wanted.insert(workspace_id.to_string(), start);
        if let Some(sink) = state.sink.as_mut() {
            timeout(COMMAND_TIMEOUT, sink.subscribe(&channel)).await.map_err(unavailable)?.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn remove_subscription(&self, workspace_id: &str) -> Result<(), BrokerError> {
        let channel = WorkspaceKeys::new(workspace_id, false).channel;
        let mut state = self.shared.pubsub.lock().await;
        state.wanted.remove(workspace_id);
        self.shared.delivered.lock().unwrap_or_else(|p| p.into_inner()).remove(workspace_id);
        if let Some(sink) = state.sink.as_mut() {
            timeout(COMMAND_TIMEOUT, sink.unsubscribe(&channel)).await.map_err(unavailable)?.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn ping(&self) -> bool {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut conn) = self.conn().await else { return false };
        let cmd = redis::cmd("PING").to_owned();
        matches!(timeout(Duration::from_secs(1), cmd.query_async::<String>(&mut conn)).await, Ok(Ok(_)))
    }
}

/// The newest entry id of a workspace stream, if it has one.
async fn last_stream_id(pool: &deadpool_redis::Pool, workspace_id: &str) -> Result<Option<EventId>, BrokerError> {
    let keys = WorkspaceKeys::new(workspace_id, false);
    let mut conn = pool.get().await.map_err(unavailable)?;
    let cmd = redis::cmd("XREVRANGE").arg(&keys.events).arg("+").arg("-").arg("COUNT").arg(1).to_owned();
    let entries: Vec<Entry> = timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await.map_err(unavailable)?.map_err(unavailable)?;
    Ok(entries.first().and_then(|(id, _)| id.parse().ok()))
}

fn stored(entries: Vec<Entry>) -> Vec<StoredEvent> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let id = id.parse().ok()?;
            let json = fields.into_iter().find(|(f, _)| f == "event")?.1;
            Some(StoredEvent { id, json: Bytes::from(json) })
        })
        .collect()
}

/// The largest id that sorts before `id`.
fn predecessor(id: EventId) -> EventId {
    if id.seq > 0 { EventId::new(id.ms, id.seq - 1) } else { EventId::new(id.ms.saturating_sub(1), u64::MAX) }
}

async fn read_history(
    pool: &deadpool_redis::Pool,
    workspace_id: &str,
    since: Option<EventId>,
    limit: usize,
) -> Result<HistoryPage, BrokerError> {
    let keys = WorkspaceKeys::new(workspace_id, false);
    let conn = pool.get().await.map_err(unavailable)?;
    let query = |cmd: redis::Cmd| async move {
        let mut conn = conn;
        let r: Result<Vec<Entry>, BrokerError> =
            timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await.map_err(unavailable)?.map_err(unavailable);
        r.map(|entries| (entries, conn))
    };
    match since {
        None => {
            let cmd = redis::cmd("XREVRANGE").arg(&keys.events).arg("+").arg("-").arg("COUNT").arg(limit).to_owned();
            let (entries, _) = query(cmd).await?;
            let mut events = stored(entries);
            events.reverse();
            let last_id = events.last().map(|e| e.id);
            Ok(HistoryPage { events, recovered: true, more: false, last_id })
        }
        Some(since) => {
            // One more than asked tells whether more follow.
            let cmd = redis::cmd("XRANGE").arg(&keys.events).arg(format!("({since}")).arg("+").arg("COUNT").arg(limit + 1).to_owned();
            let (entries, mut conn) = query(cmd).await?;
            let mut events = stored(entries);
            let more = events.len() > limit;
            events.truncate(limit);
            // Trimming check (SPEC §3.2 `recovered`). On Redis 7.0, MAXLEN ~ trimming
            // leaves max-deleted-entry-id at 0-0, so compare with the first entry and
            // the count of entries ever added instead.
            let info: redis::Value =
                match timeout(COMMAND_TIMEOUT, redis::cmd("XINFO").arg("STREAM").arg(&keys.events).query_async(&mut conn)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) if e.to_string().contains("no such key") => {
                        return Ok(HistoryPage { events, recovered: true, more, last_id: None });
                    }
                    Ok(Err(e)) => return Err(unavailable(e)),
                    Err(e) => return Err(unavailable(e)),
                };
            let stream = StreamInfo::from_value(&info);
            let trimmed = stream.entries_added.saturating_sub(stream.length) > 0;
            let recovered = !trimmed
                || stream.max_deleted.is_some_and(|d| d != EventId::ZERO && since >= d)
                || stream.first_entry.is_some_and(|first| since >= predecessor(first));
            Ok(HistoryPage { events, recovered, more, last_id: stream.last_generated })
        }
    }
}

/// The parts of `XINFO STREAM` the trimming check reads.
#[derive(Debug, Default)]
struct StreamInfo {
    length: u64,
    entries_added: u64,
    first_entry: Option<EventId>,
    max_deleted: Option<EventId>,
    last_generated: Option<EventId>,
}

impl StreamInfo {
    fn from_value(v: &redis::Value) -> Self {
        use redis::Value;
        let pairs: Vec<(&Value, &Value)> = match v {
            Value::Array(items) => items.chunks(2).filter_map(|c| Some((c.first()?, c.get(1)?))).collect(),
            Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            _ => Vec::new(),
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let mut info = StreamInfo::default();
        for (k, v) in pairs {
            match text(k).as_deref() {
                Some("length") => info.length = redis::from_redis_value_ref(v).unwrap_or(0),
                Some("entries-added") => info.entries_added = redis::from_redis_value_ref(v).unwrap_or(0),
                Some("max-deleted-entry-id") => info.max_deleted = text(v).and_then(|s| s.parse().ok()),
                Some("last-generated-id") => info.last_generated = text(v).and_then(|s| s.parse().ok()),
                Some("first-entry") => {
                    if let Value::Array(entry) = v {
                        info.first_entry = entry.first().and_then(text).and_then(|s| s.parse().ok());
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// The id of an event JSON, read without parsing its data.
fn event_id(payload: &[u8]) -> Option<EventId> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<EventId>,
    }
    serde_json::from_slice::<IdOnly>(payload).ok()?.id
}

impl Shared {
    /// Hands a message to the hub unless it was already delivered (a replay and
    /// live delivery can overlap around a reconnect).
    fn deliver(&self, workspace_id: &str, payload: Bytes) {
        if let Some(id) = event_id(&payload) {
            let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            match delivered.get(workspace_id) {
                Some(last) if id <= *last => return,
                _ => {
                    delivered.insert(workspace_id.to_string(), id);
                }
            }
        }
        self.handler.on_message(workspace_id, payload);
    }
}

async fn pubsub_loop(client: redis::Client, shared: std::sync::Weak<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut lost_once = false;
    loop {
        let Some(state) = shared.upgrade() else { return };
        match connect_pubsub(&client, &state, lost_once).await {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                drop(state);
                read_until_lost(stream, &shared).await;
                let Some(state) = shared.upgrade() else { return };
                state.connected.store(false, Ordering::Relaxed);
                state.pubsub.lock().await.sink = None;
                tracing::warn!("redis pub/sub connection lost; reconnecting");
                lost_once = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connect failed");
            }
        }
        // Full jitter keeps many gateways from reconnecting in lockstep.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens the pub/sub connection, subscribes every wanted workspace, and after a
/// loss replays what each workspace's stream received meanwhile.
async fn connect_pubsub(client: &redis::Client, shared: &Arc<Shared>, replay: bool) -> Result<PubSubStream, BrokerError> {
    let pubsub = timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await.map_err(unavailable)?.map_err(unavailable)?;
    let (mut sink, stream) = pubsub.split();
    let mut state = shared.pubsub.lock().await;
    for workspace_id in state.wanted.keys() {
        let channel = WorkspaceKeys::new(workspace_id, false).channel;
        timeout(COMMAND_TIMEOUT, sink.subscribe(&channel)).await.map_err(unavailable)?.map_err(unavailable)?;
    }
    if replay {
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let wanted: Vec<(String, Option<EventId>)> = state.wanted.iter().map(|(w, start)| (w.clone(), *start)).collect();
        for (workspace_id, start) in wanted {
            let after = shared.delivered.lock().unwrap_or_else(|p| p.into_inner()).get(&workspace_id).copied().or(start);
            // Nothing delivered and the stream was empty at subscribe: all of it is new.
            let after = after.unwrap_or(EventId::ZERO);
            let page = read_history(&shared.pool, &workspace_id, Some(after), shared.history_size).await?;
            tracing::info!(workspace_id, replayed = page.events.len(), "replaying events missed while disconnected");
            for event in page.events {
                shared.deliver(&workspace_id, event.json);
            }
        }
        shared.handler.on_reconnect();
    }
    state.sink = Some(sink);
    shared.connected.store(true, Ordering::Relaxed);
    tracing::info!(workspaces = state.wanted.len(), "redis pub/sub connected");
    Ok(stream)
}

async fn read_until_lost(mut stream: PubSubStream, shared: &std::sync::Weak<Shared>) {
    let mut probe = tokio::time::interval(PUBSUB_PING_EVERY);
    probe.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Some(state) = shared.upgrade() else { return };
                let Some(workspace_id) = msg.get_channel_name().strip_prefix("workspace:") else { continue };
                state.deliver(workspace_id, Bytes::copy_from_slice(msg.get_payload_bytes()));
            }
            _ = probe.tick() => {
                let Some(state) = shared.upgrade() else { return };
                let sink = state.pubsub.lock().await.sink.clone();
                if let Some(mut sink) = sink
                    && !matches!(timeout(COMMAND_TIMEOUT, sink.ping::<String>()).await, Ok(Ok(_)))
                {
                    return;
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>> {
        self.publish_durable(event).boxed()
    }

    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_live_only(event).boxed()
    }

    fn subscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.add_subscription(workspace_id).boxed()
    }

    fn unsubscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.remove_subscription(workspace_id).boxed()
    }

    fn history<'a>(
        &'a self,
        workspace_id: &'a str,
        since: Option<EventId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        self.read_history(workspace_id, since, limit).boxed()
    }

    fn latest<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>> {
        self.read_latest(workspace_id).boxed()
    }

    fn is_ready(&self) -> BoxFuture<'_, bool> {
        self.ping().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predecessor_steps_back_one_id() {
        assert_eq!(predecessor(EventId::new(5, 3)), EventId::new(5, 2));
        assert_eq!(predecessor(EventId::new(5, 0)), EventId::new(4, u64::MAX));
    }

    #[test]
    fn event_id_reads_only_the_id() {
        assert_eq!(event_id(br#"{"id":"7-1","type":"t","data":{"id":"nested"}}"#), Some(EventId::new(7, 1)));
        assert_eq!(event_id(br#"{"type":"live"}"#), None);
        assert_eq!(event_id(b"garbage"), None);
    }
}
