//! The Redis broker (SPEC §4): durable publish through `scripts/publish.lua`,
//! history from the workspace stream, latest state from its hash, and one
//! dedicated pub/sub connection per process that follows the hub's workspaces.
//!
//! The pub/sub connection reconnects with capped, jittered exponential backoff,
//! re-subscribes every workspace, and replays from each stream what was
//! published while it was away, so local clients see no gap when Redis kept
//! its data.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{PubSubSink, PubSubStream};
use tidings_protocol::keys::{REVOCATIONS_CHANNEL, WorkspaceKeys};
use tidings_protocol::payloads::is_conflatable;
use tidings_protocol::{Event, EventId};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::{Broker, BrokerError, HistoryPage, LatestEvent, MessageHandler, StoredEvent};

/// The durable publish script, shipped as `scripts/publish.lua` for other services.
pub const PUBLISH_SCRIPT: &str = include_str!("../../../scripts/publish.lua");

/// How long one Redis command may take before the broker calls Redis unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the pub/sub connection is probed by default, so a silent network
/// failure is noticed.
pub const PUBSUB_PROBE_EVERY: Duration = Duration::from_secs(5);
/// Events read per history request when replaying after a reconnect.
const REPLAY_PAGE: usize = 1000;

/// Settings of a Redis broker.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://`); in cluster mode a
    /// comma-separated list of seed node URLs.
    pub url: String,
    /// Redis Cluster: hash-tagged key names and sharded pub/sub.
    pub cluster: bool,
    pub history_size: usize,
    /// How often the pub/sub connection is probed with `PING`.
    pub pubsub_probe: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>, history_size: usize) -> Self {
        Self { url: url.into(), cluster: false, history_size, pubsub_probe: PUBSUB_PROBE_EVERY }
    }

    /// The same settings for a Redis Cluster (or not).
    pub fn with_cluster(self, cluster: bool) -> Self {
        Self { cluster, ..self }
    }

    fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }
}

/// Checks `TIDINGS_REDIS_URL` (one URL, or comma-separated seeds in cluster
/// mode) without connecting, so a typo stops the program before it binds.
pub fn check_redis_urls(url: &str, cluster: bool) -> Result<(), String> {
    let urls = RedisConfig::new(url, 1).with_cluster(cluster).urls();
    if urls.is_empty() {
        return Err("TIDINGS_REDIS_URL is empty".into());
    }
    if urls.len() > 1 && !cluster {
        return Err("TIDINGS_REDIS_URL lists several URLs; set TIDINGS_REDIS_CLUSTER=true for a cluster".into());
    }
    for u in &urls {
        redis::Client::open(u.as_str()).map_err(|e| format!("TIDINGS_REDIS_URL {u:?}: {e}"))?;
    }
    Ok(())
}

/// The command side: a pool on one server, or a cluster-aware pool.
enum Commands {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl Commands {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        let result = match self {
            Commands::Single(pool) => {
                let mut conn = pool.get().await.map_err(unavailable)?;
                timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await
            }
            Commands::Cluster(pool) => {
                let mut conn = pool.get().await.map_err(unavailable)?;
                timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn)).await
            }
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }

    async fn invoke<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, BrokerError> {
        let result = match self {
            Commands::Single(pool) => {
                let mut conn = pool.get().await.map_err(unavailable)?;
                timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await
            }
            Commands::Cluster(pool) => {
                let mut conn = pool.get().await.map_err(unavailable)?;
                timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn)).await
            }
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }
}

/// The live pub/sub connection's command half.
enum Subscriber {
    Single(PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, channel: &str) -> Result<(), BrokerError> {
        let result = match self {
            Subscriber::Single(sink) => timeout(COMMAND_TIMEOUT, sink.subscribe(channel)).await,
            // One channel per call: channels of different slots cannot share an SSUBSCRIBE.
            Subscriber::Cluster(conn) => timeout(COMMAND_TIMEOUT, conn.ssubscribe(channel)).await,
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }

    async fn unsubscribe(&mut self, channel: &str) -> Result<(), BrokerError> {
        let result = match self {
            Subscriber::Single(sink) => timeout(COMMAND_TIMEOUT, sink.unsubscribe(channel)).await,
            Subscriber::Cluster(conn) => timeout(COMMAND_TIMEOUT, conn.sunsubscribe(channel)).await,
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// A stream entry as XRANGE answers it: id and field/value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// The pub/sub connection as it is now. What it *should* be subscribed to is
/// not kept here: it is re-derived from [`MessageHandler::workspaces`] (the
/// workspaces with local readers) on every connect and re-checked on every
/// unsubscribe, so a failed command cannot leave the two disagreeing.
struct PubSubState {
    /// Workspaces subscribed on the current connection.
    subscribed: HashSet<String>,
    /// The live connection's command half, when connected.
    sink: Option<Subscriber>,
    /// Cancelled to give up the current connection (a command on it failed),
    /// so the pub/sub task reconnects and re-derives every subscription.
    session: CancellationToken,
}

impl PubSubState {
    /// Drops the current connection after a failed command on it.
    fn abandon(&mut self, why: &BrokerError) {
        if self.sink.take().is_some() {
            tracing::warn!(error = %why, "redis pub/sub command failed; reconnecting");
        }
        self.subscribed.clear();
        self.session.cancel();
    }
}

struct Shared {
    commands: Commands,
    cluster: bool,
    handler: Arc<dyn MessageHandler>,
    history_size: usize,
    pubsub_probe: Duration,
    /// An async mutex: held across SUBSCRIBE round trips and replays so that a
    /// reconnect, a new subscription and an unsubscribe never interleave.
    pubsub: tokio::sync::Mutex<PubSubState>,
    /// Per workspace followed here: the newest id delivered, or the stream's
    /// last id when the subscription started (`ZERO` for an empty stream), which
    /// is where a replay after a reconnect continues. A std mutex: read and
    /// written per message on the delivery path, never across an await.
    positions: Mutex<HashMap<String, EventId>>,
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
        let bad_config = |e: &dyn std::fmt::Display| BrokerError::Config(e.to_string());
        let urls = config.urls();
        if urls.is_empty() {
            return Err(BrokerError::Config("no Redis URL".into()));
        }
        let pool_settings = deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(COMMAND_TIMEOUT),
                create: Some(COMMAND_TIMEOUT),
                recycle: Some(COMMAND_TIMEOUT),
            },
            ..deadpool_redis::PoolConfig::default()
        };
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        let (commands, subscriber) = if config.cluster {
            let mut pool_config = deadpool_redis::cluster::Config::from_urls(urls.clone());
            pool_config.pool = Some(pool_settings);
            let pool = pool_config.create_pool(runtime).map_err(|e| bad_config(&e))?;
            // Sharded pub/sub on a cluster connection needs RESP3 and a push sender.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()
                .map_err(|e| bad_config(&e))?;
            (Commands::Cluster(pool), SubscriberSource::Cluster(Box::new(client), rx))
        } else {
            let client = redis::Client::open(urls[0].as_str()).map_err(|e| bad_config(&e))?;
            let mut pool_config = deadpool_redis::Config::from_url(urls[0].clone());
            pool_config.pool = Some(pool_settings);
            let pool = pool_config.create_pool(runtime).map_err(|e| bad_config(&e))?;
            (Commands::Single(pool), SubscriberSource::Single(Box::new(client)))
        };
        let shared = Arc::new(Shared {
            commands,
            cluster: config.cluster,
            handler,
            history_size: config.history_size.max(1),
            pubsub_probe: config.pubsub_probe,
            pubsub: tokio::sync::Mutex::new(PubSubState { subscribed: HashSet::new(), sink: None, session: CancellationToken::new() }),
            positions: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        match subscriber {
            SubscriberSource::Single(client) => tokio::spawn(pubsub_loop(*client, Arc::downgrade(&shared))),
            SubscriberSource::Cluster(client, rx) => tokio::spawn(cluster_pubsub_loop(*client, rx, Arc::downgrade(&shared))),
        };
        Ok(Self { shared, script: Arc::new(redis::Script::new(PUBLISH_SCRIPT)) })
    }

    /// Times the pub/sub connection was re-established after a loss.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    fn keys(&self, workspace_id: &str) -> WorkspaceKeys {
        WorkspaceKeys::new(workspace_id, self.shared.cluster)
    }

    async fn publish_durable(&self, mut event: Event) -> Result<Event, BrokerError> {
        event.id = None;
        let keys = self.keys(&event.workspace_id);
        let mut invocation = self.script.key(&keys.events);
        invocation
            .key(&keys.latest)
            .key(&keys.channel)
            .arg(event.to_json())
            .arg(self.shared.history_size)
            .arg(latest_field(&event))
            .arg(if self.shared.cluster { "1" } else { "0" });
        let id: String = self.shared.commands.invoke(&invocation).await?;
        event.id = Some(id.parse().map_err(|e| BrokerError::Protocol(format!("script returned {id:?}: {e}")))?);
        Ok(event)
    }

    /// The extended form of the script: the delivery key and every event in one step.
    async fn publish_claimed(&self, claim: &crate::DeliveryClaim, mut events: Vec<Event>) -> Result<crate::PublishedOnce, BrokerError> {
        let Some(workspace_id) = events.first().map(|e| e.workspace_id.clone()) else {
            return Ok(crate::PublishedOnce::Published(Vec::new()));
        };
        if events.iter().any(|e| e.workspace_id != workspace_id) {
            return Err(BrokerError::Protocol("the events of one delivery must share a workspace".into()));
        }
        let keys = self.keys(&workspace_id);
        let dedup = tidings_protocol::keys::dedup_in(&workspace_id, &claim.source, &claim.delivery, self.shared.cluster);
        let mut invocation = self.script.key(&keys.events);
        invocation.key(&keys.latest).key(&keys.channel).key(&dedup);
        for (n, event) in events.iter_mut().enumerate() {
            event.id = None;
            invocation.arg(event.to_json());
            if n == 0 {
                invocation
                    .arg(self.shared.history_size)
                    .arg(latest_field(event))
                    .arg(if self.shared.cluster { "1" } else { "0" })
                    .arg(crate::DEDUP_TTL_SECS);
            } else {
                invocation.arg(latest_field(event));
            }
        }
        let ids: Option<Vec<String>> = self.shared.commands.invoke(&invocation).await?;
        let Some(ids) = ids else { return Ok(crate::PublishedOnce::Duplicate) };
        if ids.len() != events.len() {
            return Err(BrokerError::Protocol(format!("script returned {} ids for {} events", ids.len(), events.len())));
        }
        for (event, id) in events.iter_mut().zip(ids) {
            event.id = Some(id.parse().map_err(|e| BrokerError::Protocol(format!("script returned {id:?}: {e}")))?);
        }
        Ok(crate::PublishedOnce::Published(events))
    }

    async fn revoke_token(&self, jti: &str, exp: Option<u64>) -> Result<(), BrokerError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut set = redis::cmd("SET");
        set.arg(tidings_protocol::keys::revoked(jti)).arg("1").arg("EX").arg(crate::revocation_ttl(exp, now));
        let _: String = self.shared.commands.query(&set).await?;
        // Plain PUBLISH also on a cluster: it reaches every node's subscribers.
        let _: i64 = self.shared.commands.query(redis::cmd("PUBLISH").arg(REVOCATIONS_CHANNEL).arg(jti)).await?;
        Ok(())
    }

    async fn publish_live_only(&self, event: Event) -> Result<(), BrokerError> {
        let keys = self.keys(&event.workspace_id);
        let command = if self.shared.cluster { "SPUBLISH" } else { "PUBLISH" };
        let _: i64 = self.shared.commands.query(redis::cmd(command).arg(&keys.channel).arg(event.to_json())).await?;
        Ok(())
    }

    async fn read_latest(&self, workspace_id: &str) -> Result<Vec<LatestEvent>, BrokerError> {
        let keys = self.keys(workspace_id);
        let fields: Vec<(String, Vec<u8>)> = self.shared.commands.query(redis::cmd("HGETALL").arg(&keys.latest)).await?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, json)| {
                let (event_type, entity_ref) =
                    ["metrics_update", "health_update"].iter().find_map(|t| field.strip_prefix(t)?.strip_prefix(':').map(|r| (*t, r)))?;
                Some(LatestEvent { entity_ref: entity_ref.to_string(), event_type: event_type.to_string(), json: Bytes::from(json) })
            })
            .collect())
    }

    /// Follows a workspace the handler now has a reader of. Fails only when its
    /// start position cannot be read (Redis down): then nothing changed and the
    /// caller refuses the connection. A failed SUBSCRIBE is not the caller's
    /// problem: the connection is abandoned and the reconnect subscribes and
    /// replays from the recorded position.
    async fn add_subscription(&self, workspace_id: &str) -> Result<(), BrokerError> {
        // Outside the lock, so a slow stream read delays this workspace only.
        self.shared.ensure_position(workspace_id).await?;
        let mut state = self.shared.pubsub.lock().await;
        if state.subscribed.contains(workspace_id) {
            return Ok(());
        }
        // Again under the lock: a no-op unless an unsubscribe just forgot it.
        self.shared.ensure_position(workspace_id).await?;
        let channel = self.keys(workspace_id).channel;
        let Some(sink) = state.sink.as_mut() else {
            // Reconnecting: the new connection subscribes what the handler reads.
            return Ok(());
        };
        match sink.subscribe(&channel).await {
            // On a cluster, the confirmation push replays from the recorded
            // position what was published between reading it and now.
            Ok(()) => {
                state.subscribed.insert(workspace_id.to_string());
            }
            Err(e) if self.shared.cluster => {
                // The cluster connection stays; subscribe this channel again until it takes.
                tracing::warn!(workspace_id, error = %e, "cluster ssubscribe failed; retrying in the background");
                state.subscribed.insert(workspace_id.to_string());
                tokio::spawn(resubscribe(Arc::downgrade(&self.shared), channel));
            }
            Err(e) => state.abandon(&e),
        }
        Ok(())
    }

    /// Stops following a workspace, unless the handler has a reader of it again
    /// (the handler is the truth; this is re-checked under the lock).
    async fn remove_subscription(&self, workspace_id: &str) -> Result<(), BrokerError> {
        let mut state = self.shared.pubsub.lock().await;
        if self.shared.handler.has_readers(workspace_id) {
            return Ok(());
        }
        self.shared.positions.lock().unwrap_or_else(|p| p.into_inner()).remove(workspace_id);
        if !state.subscribed.remove(workspace_id) {
            return Ok(());
        }
        let channel = self.keys(workspace_id).channel;
        if let Some(sink) = state.sink.as_mut()
            && let Err(e) = sink.unsubscribe(&channel).await
        {
            if self.shared.cluster {
                // Messages of an unwanted channel are dropped by the hub; the
                // next topology change drops the subscription.
                tracing::warn!(workspace_id, error = %e, "cluster sunsubscribe failed");
            } else {
                state.abandon(&e);
            }
        }
        Ok(())
    }

    async fn ping(&self) -> bool {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return false;
        }
        matches!(timeout(Duration::from_secs(1), self.shared.commands.query::<String>(&redis::cmd("PING"))).await, Ok(Ok(_)))
    }

    /// True while the command connection answers PING, whatever the pub/sub
    /// connection's state: the readiness of a process that only publishes.
    pub async fn commands_ready(&self) -> bool {
        matches!(timeout(Duration::from_secs(1), self.shared.commands.query::<String>(&redis::cmd("PING"))).await, Ok(Ok(_)))
    }
}

/// The latest-state field of an event (`<type>:<entity_ref>` for conflatable
/// types with an entity), or "" when it has none.
fn latest_field(event: &Event) -> String {
    match &event.entity_ref {
        Some(r) if is_conflatable(&event.event_type) => format!("{}:{r}", event.event_type),
        _ => String::new(),
    }
}

/// Where the pub/sub task gets its connection from.
enum SubscriberSource {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>, tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>),
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

impl Shared {
    /// Records whether pub/sub is up, and tells the handler (a gauge, at the gateway).
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.handler.on_connection(connected);
    }

    /// The newest entry id of a workspace stream, if it has one.
    async fn last_stream_id(&self, workspace_id: &str) -> Result<Option<EventId>, BrokerError> {
        let keys = WorkspaceKeys::new(workspace_id, self.cluster);
        let entries: Vec<Entry> =
            self.commands.query(redis::cmd("XREVRANGE").arg(&keys.events).arg("+").arg("-").arg("COUNT").arg(1)).await?;
        Ok(entries.first().and_then(|(id, _)| id.parse().ok()))
    }

    async fn read_history(&self, workspace_id: &str, since: Option<EventId>, limit: usize) -> Result<HistoryPage, BrokerError> {
        let keys = WorkspaceKeys::new(workspace_id, self.cluster);
        let Some(since) = since else {
            let entries: Vec<Entry> =
                self.commands.query(redis::cmd("XREVRANGE").arg(&keys.events).arg("+").arg("-").arg("COUNT").arg(limit)).await?;
            let mut events = stored(entries);
            events.reverse();
            let last_id = events.last().map(|e| e.id);
            return Ok(HistoryPage { events, recovered: true, more: false, last_id });
        };
        // One more than asked tells whether more follow.
        let entries: Vec<Entry> = self
            .commands
            .query(redis::cmd("XRANGE").arg(&keys.events).arg(format!("({since}")).arg("+").arg("COUNT").arg(limit + 1))
            .await?;
        let mut events = stored(entries);
        let more = events.len() > limit;
        events.truncate(limit);
        let info: redis::Value = match self.commands.query(redis::cmd("XINFO").arg("STREAM").arg(&keys.events)).await {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => {
                // No stream at all: a client holding an id lost it with the stream.
                return Ok(HistoryPage { events, recovered: since == EventId::ZERO, more, last_id: None });
            }
            Err(e) => return Err(e),
        };
        let stream = StreamInfo::from_value(&info);
        let recovered = stream.still_holds_everything_after(since);
        Ok(HistoryPage { events, recovered, more, last_id: stream.last_generated })
    }

    /// Records where following `workspace_id` starts, unless it is followed
    /// already: the stream's newest id now (live delivery covers what follows).
    async fn ensure_position(&self, workspace_id: &str) -> Result<(), BrokerError> {
        if self.positions.lock().unwrap_or_else(|p| p.into_inner()).contains_key(workspace_id) {
            return Ok(());
        }
        let start = self.last_stream_id(workspace_id).await?.unwrap_or(EventId::ZERO);
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).entry(workspace_id.to_string()).or_insert(start);
        Ok(())
    }

    fn position(&self, workspace_id: &str) -> Option<EventId> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).get(workspace_id).copied()
    }

    /// Replays what the workspace's stream received after the newest id
    /// delivered here, page by page until it is caught up. Where history no
    /// longer reaches back that far (trimmed, or Redis lost its data), the
    /// handler is told with [`MessageHandler::on_gap`].
    async fn replay_missed(&self, workspace_id: &str) -> Result<(), BrokerError> {
        let mut replayed = 0usize;
        loop {
            let Some(after) = self.position(workspace_id) else { return Ok(()) };
            let page = self.read_history(workspace_id, Some(after), REPLAY_PAGE).await?;
            if !page.recovered {
                tracing::warn!(workspace_id, after = %after, "events missed while disconnected are no longer in history");
                self.handler.on_gap(workspace_id);
            }
            replayed += page.events.len();
            for event in page.events {
                self.deliver(workspace_id, event.json);
            }
            if !page.more {
                break;
            }
        }
        if replayed > 0 {
            tracing::info!(workspace_id, replayed, "replayed events missed while disconnected");
        }
        Ok(())
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
    /// SPEC §3.2 `recovered`: is every event after `since` still stored?
    ///
    /// Every id a client holds was generated by this stream, and trimming only
    /// removes from the front, so an id older than the first entry means what
    /// followed it may be gone: trimmed, or lost with Redis's data (a restart
    /// without persistence starts a new stream whose first entry is newer than
    /// any id of the old one). An id newer than anything the stream generated
    /// means the stream lost writes (e.g. a failover). On Redis 7.0, MAXLEN ~
    /// trimming leaves max-deleted-entry-id at 0-0, hence the first-entry test.
    fn still_holds_everything_after(&self, since: EventId) -> bool {
        if since == EventId::ZERO {
            // "Everything": nothing may ever have been removed.
            return self.entries_added == self.length;
        }
        if self.last_generated.is_none_or(|last| since > last) {
            return false;
        }
        self.max_deleted.is_some_and(|d| d != EventId::ZERO && since >= d)
            || self.first_entry.is_some_and(|first| since >= predecessor(first))
    }

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

/// The workspace of a channel name, plain (`workspace:acme`) or hash-tagged (`workspace:{acme}`).
fn workspace_of(channel: &str) -> Option<&str> {
    let rest = channel.strip_prefix("workspace:")?;
    Some(rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')).unwrap_or(rest))
}

impl Shared {
    /// Hands a message to the hub unless it was already delivered (a replay and
    /// live delivery can overlap around a reconnect).
    fn deliver(&self, workspace_id: &str, payload: Bytes) {
        if let Some(id) = event_id(&payload) {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = positions.get_mut(workspace_id) {
                if id <= *last {
                    return;
                }
                *last = id;
            }
        }
        self.handler.on_message(workspace_id, payload);
    }

    /// The workspaces to follow now (the handler's readers), each with a start
    /// position; positions of workspaces nobody reads any more are forgotten.
    async fn derive_subscriptions(&self) -> Result<Vec<String>, BrokerError> {
        let wanted = self.handler.workspaces();
        for workspace_id in &wanted {
            self.ensure_position(workspace_id).await?;
        }
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).retain(|w, _| wanted.contains(w));
        Ok(wanted)
    }
}

fn jittered(backoff: Duration) -> Duration {
    // Full-ish jitter keeps many gateways from reconnecting in lockstep.
    backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn pubsub_loop(client: redis::Client, shared: std::sync::Weak<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut lost_once = false;
    loop {
        let Some(state) = shared.upgrade() else { return };
        match connect_pubsub(&client, &state, lost_once).await {
            Ok((stream, session)) => {
                backoff = BACKOFF_MIN;
                let probe = state.pubsub_probe;
                drop(state);
                read_until_lost(stream, &shared, probe, &session).await;
                let Some(state) = shared.upgrade() else { return };
                state.set_connected(false);
                let mut guard = state.pubsub.lock().await;
                guard.sink = None;
                guard.subscribed.clear();
                drop(guard);
                tracing::warn!("redis pub/sub connection lost; reconnecting");
                lost_once = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub connect failed");
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens the pub/sub connection, subscribes every workspace the handler has
/// readers of, and after a loss replays what each stream received meanwhile.
async fn connect_pubsub(
    client: &redis::Client,
    shared: &Arc<Shared>,
    replay: bool,
) -> Result<(PubSubStream, CancellationToken), BrokerError> {
    let pubsub = timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await.map_err(unavailable)?.map_err(unavailable)?;
    let (sink, stream) = pubsub.split();
    let mut sink = Subscriber::Single(sink);
    sink.subscribe(REVOCATIONS_CHANNEL).await?;
    let mut state = shared.pubsub.lock().await;
    let wanted = shared.derive_subscriptions().await?;
    for workspace_id in &wanted {
        sink.subscribe(&WorkspaceKeys::new(workspace_id, false).channel).await?;
    }
    if replay {
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        for workspace_id in &wanted {
            shared.replay_missed(workspace_id).await?;
        }
        shared.handler.on_reconnect();
    }
    state.subscribed = wanted.into_iter().collect();
    state.sink = Some(sink);
    state.session = CancellationToken::new();
    shared.set_connected(true);
    tracing::info!(workspaces = state.subscribed.len(), "redis pub/sub connected");
    Ok((stream, state.session.clone()))
}

/// A `PING` answer on a pub/sub connection: `PONG` (RESP3, or before any
/// SUBSCRIBE) or, once subscribed under RESP2, the array `["pong", ""]`.
fn is_pong(reply: &redis::Value) -> bool {
    use redis::Value;
    let pong = |v: &Value| match v {
        Value::SimpleString(s) => s.eq_ignore_ascii_case("pong"),
        Value::BulkString(b) => b.eq_ignore_ascii_case(b"pong"),
        _ => false,
    };
    match reply {
        Value::Array(items) => items.first().is_some_and(pong),
        other => pong(other),
    }
}

async fn read_until_lost(mut stream: PubSubStream, shared: &std::sync::Weak<Shared>, probe_every: Duration, session: &CancellationToken) {
    let mut probe = tokio::time::interval(probe_every);
    probe.tick().await;
    loop {
        tokio::select! {
            _ = session.cancelled() => return,
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Some(state) = shared.upgrade() else { return };
                if msg.get_channel_name() == REVOCATIONS_CHANNEL {
                    state.handler.on_revoked(&String::from_utf8_lossy(msg.get_payload_bytes()));
                    continue;
                }
                let Some(workspace_id) = workspace_of(msg.get_channel_name()) else { continue };
                state.deliver(workspace_id, Bytes::copy_from_slice(msg.get_payload_bytes()));
            }
            _ = probe.tick() => {
                let Some(state) = shared.upgrade() else { return };
                let mut guard = state.pubsub.lock().await;
                if let Some(Subscriber::Single(sink)) = guard.sink.as_mut() {
                    match timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(reply)) if is_pong(&reply) => {}
                        Ok(Ok(reply)) => {
                            tracing::warn!(?reply, "redis pub/sub probe got an unexpected answer");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis pub/sub probe failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("redis pub/sub probe timed out");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Cluster mode: one cluster connection carries every SSUBSCRIBE; the library
/// follows slot moves and failovers and re-subscribes by itself. Each repeated
/// `ssubscribe` confirmation for a channel means it was re-established, so the
/// workspace's stream is replayed from the newest id delivered.
async fn cluster_pubsub_loop(
    client: redis::cluster::ClusterClient,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    shared: std::sync::Weak<Shared>,
) {
    let mut confirmed: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let Some(topology) = cluster_connect(&client, &shared).await else { return };
        if !cluster_read_pushes(&mut pushes, &shared, &mut confirmed, topology).await {
            return;
        }
        // The topology changed under us: open a new connection from a fresh slot map.
        if let Some(state) = shared.upgrade() {
            state.set_connected(false);
            let mut guard = state.pubsub.lock().await;
            guard.sink = None;
            guard.subscribed.clear();
        }
    }
}

/// Connects, subscribes revocations and every workspace the handler reads,
/// and returns the slot owners it subscribed under (`None`: the broker is gone).
async fn cluster_connect(client: &redis::cluster::ClusterClient, shared: &std::sync::Weak<Shared>) -> Option<Vec<(i64, i64, i64)>> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let state = shared.upgrade()?;
        let topology = slot_owners(&state).await.unwrap_or_default();
        match timeout(COMMAND_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(conn)) => {
                let mut sink = Subscriber::Cluster(conn);
                let mut guard = state.pubsub.lock().await;
                let mut failed = false;
                if let Subscriber::Cluster(conn) = &mut sink
                    && let Err(e) = timeout(COMMAND_TIMEOUT, conn.subscribe(REVOCATIONS_CHANNEL))
                        .await
                        .map_err(unavailable)
                        .and_then(|r| r.map_err(unavailable))
                {
                    tracing::warn!(error = %e, "subscribing to revocations failed");
                    failed = true;
                }
                let wanted = match state.derive_subscriptions().await {
                    Ok(wanted) => wanted,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stream positions failed");
                        failed = true;
                        Vec::new()
                    }
                };
                for workspace_id in &wanted {
                    if let Err(e) = sink.subscribe(&WorkspaceKeys::new(workspace_id, true).channel).await {
                        tracing::warn!(error = %e, "cluster ssubscribe failed");
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    guard.subscribed = wanted.into_iter().collect();
                    guard.sink = Some(sink);
                    state.set_connected(true);
                    drop(guard);
                    tracing::info!("redis cluster pub/sub connected");
                    return Some(topology);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster connect failed"),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "redis cluster connect timed out"),
        }
        drop(state);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Who serves each slot range: `(start, end, master port)`, from CLUSTER SLOTS.
async fn slot_owners(state: &Shared) -> Result<Vec<(i64, i64, i64)>, BrokerError> {
    let slots: Vec<redis::Value> = state.commands.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut owners: Vec<(i64, i64, i64)> = slots
        .iter()
        .filter_map(|range| {
            let redis::Value::Array(fields) = range else { return None };
            let start = redis::from_redis_value_ref::<i64>(fields.first()?).ok()?;
            let end = redis::from_redis_value_ref::<i64>(fields.get(1)?).ok()?;
            let redis::Value::Array(master) = fields.get(2)? else { return None };
            let port = redis::from_redis_value_ref::<i64>(master.get(1)?).ok()?;
            Some((start, end, port))
        })
        .collect();
    owners.sort_unstable();
    Ok(owners)
}

/// Handles pushes until the cluster's slot owners differ from `topology`
/// (a master died and its replica took over, which the connection does not
/// follow by itself: it keeps dialling the dead node); `false` when the broker is gone.
async fn cluster_read_pushes(
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    shared: &std::sync::Weak<Shared>,
    confirmed: &mut std::collections::HashSet<String>,
    topology: Vec<(i64, i64, i64)>,
) -> bool {
    let Some(probe_every) = shared.upgrade().map(|s| s.pubsub_probe) else { return false };
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + probe_every, probe_every);
    loop {
        let push = tokio::select! {
            push = pushes.recv() => push,
            _ = probe.tick() => {
                let Some(state) = shared.upgrade() else { return false };
                match slot_owners(&state).await {
                    Ok(now) if !now.is_empty() && now != topology => {
                        tracing::warn!("redis cluster topology changed; re-opening pub/sub");
                        return true;
                    }
                    _ => continue,
                }
            }
        };
        let Some(push) = push else { return false };
        let Some(state) = shared.upgrade() else { return false };
        let channel = push.data.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        match push.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                let (Some(channel), Some(payload)) = (channel, push.data.get(1)) else { continue };
                if channel == REVOCATIONS_CHANNEL {
                    if let Ok(jti) = redis::from_redis_value_ref::<String>(payload) {
                        state.handler.on_revoked(&jti);
                    }
                    continue;
                }
                let Some(workspace_id) = workspace_of(&channel) else { continue };
                if let Ok(bytes) = redis::from_redis_value_ref::<Vec<u8>>(payload) {
                    state.deliver(workspace_id, Bytes::from(bytes));
                }
            }
            redis::PushKind::SSubscribe => {
                let Some(channel) = channel else { continue };
                let Some(workspace_id) = workspace_of(&channel).map(String::from) else { continue };
                let again = !confirmed.insert(channel.clone());
                if again {
                    // Re-subscribed after a disconnect, failover or slot move.
                    state.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                // Replay from the recorded position at every confirmation: a
                // first one covers what was published between reading the
                // position and the subscription taking (which may have needed
                // retries), a repeated one what the shard missed. Inline, so the
                // older replayed events go before the live ones that queue up in
                // the push channel meanwhile. The cluster may still be settling,
                // so retry until it answers.
                let mut backoff = BACKOFF_MIN;
                while let Err(e) = state.replay_missed(&workspace_id).await {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cluster replay failed");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                if again {
                    state.handler.on_reconnect();
                }
            }
            redis::PushKind::SUnsubscribe => {
                let Some(channel) = channel else { continue };
                let still_wanted = state.pubsub.lock().await.subscribed.iter().any(|w| WorkspaceKeys::new(w, true).channel == channel);
                if still_wanted {
                    // The server dropped us: the slot moved or its master became a
                    // replica. Subscribe again where the slot lives now; the
                    // confirmation triggers the replay above.
                    tracing::info!(channel, "shard channel moved; re-subscribing");
                    tokio::spawn(resubscribe(shared.clone(), channel));
                } else {
                    confirmed.remove(&channel);
                }
            }
            _ => {}
        }
    }
}

/// Re-issues SSUBSCRIBE for `channel` until the cluster accepts it (the slot
/// map may take a moment to catch up with a failover or a slot move).
async fn resubscribe(shared: std::sync::Weak<Shared>, channel: String) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(state) = shared.upgrade() else { return };
        let mut guard = state.pubsub.lock().await;
        if !guard.subscribed.iter().any(|w| WorkspaceKeys::new(w, true).channel == channel) {
            return;
        }
        match guard.sink.as_mut() {
            Some(Subscriber::Cluster(conn)) => {
                // A keyed read first: if the connection still routes the slot to
                // its old node it gets MOVED and refreshes its slot map, so the
                // SSUBSCRIBE below lands on the slot's current master.
                let probe = redis::cmd("EXISTS").arg(format!("{channel}:events")).to_owned();
                let routed: Result<Result<i64, _>, _> = timeout(COMMAND_TIMEOUT, probe.query_async(conn)).await;
                match routed {
                    Ok(Ok(_)) => match timeout(COMMAND_TIMEOUT, conn.ssubscribe(&channel)).await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => tracing::warn!(channel, error = %e, "re-subscribe failed; retrying"),
                        Err(e) => tracing::warn!(channel, error = %e, "re-subscribe timed out; retrying"),
                    },
                    Ok(Err(e)) => tracing::warn!(channel, error = %e, "slot lookup failed; retrying"),
                    Err(e) => tracing::warn!(channel, error = %e, "slot lookup timed out; retrying"),
                }
            }
            Some(Subscriber::Single(_)) | None => return,
        }
        drop(guard);
        drop(state);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
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
        self.shared.read_history(workspace_id, since, limit).boxed()
    }

    fn latest<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>> {
        self.read_latest(workspace_id).boxed()
    }

    fn is_ready(&self) -> BoxFuture<'_, bool> {
        self.ping().boxed()
    }

    fn publish_once<'a>(
        &'a self,
        claim: &'a crate::DeliveryClaim,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<crate::PublishedOnce, BrokerError>> {
        self.publish_claimed(claim, events).boxed()
    }

    fn revoke<'a>(&'a self, jti: &'a str, exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.revoke_token(jti, exp).boxed()
    }

    fn link_entity<'a>(&'a self, source: &'a str, key: &'a str, entity_ref: Option<&'a str>) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let hash = tidings_protocol::keys::entity_links(source);
            let cmd = match entity_ref {
                Some(r) => redis::cmd("HSET").arg(hash).arg(key).arg(r).to_owned(),
                None => redis::cmd("HDEL").arg(hash).arg(key).to_owned(),
            };
            let _: i64 = self.shared.commands.query(&cmd).await?;
            Ok(())
        }
        .boxed()
    }

    fn linked_entity<'a>(&'a self, source: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<String>, BrokerError>> {
        async move { self.shared.commands.query(redis::cmd("HGET").arg(tidings_protocol::keys::entity_links(source)).arg(key)).await }
            .boxed()
    }

    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        async move {
            let n: i64 = self.shared.commands.query(redis::cmd("EXISTS").arg(tidings_protocol::keys::revoked(jti))).await?;
            Ok(n > 0)
        }
        .boxed()
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
    fn recovery_needs_the_stream_to_reach_back_to_since() {
        let info = |added, length, first, last| StreamInfo {
            length,
            entries_added: added,
            first_entry: Some(EventId::new(first, 0)),
            max_deleted: Some(EventId::ZERO),
            last_generated: Some(EventId::new(last, 0)),
        };
        let untrimmed = info(3, 3, 10, 12);
        assert!(untrimmed.still_holds_everything_after(EventId::new(10, 0)));
        assert!(untrimmed.still_holds_everything_after(EventId::new(12, 0)), "caught up");
        assert!(untrimmed.still_holds_everything_after(EventId::ZERO));
        // A new incarnation (Redis restarted empty): an id of the old stream
        // is older than anything the new one holds, though nothing was trimmed.
        assert!(!untrimmed.still_holds_everything_after(EventId::new(5, 0)));
        // Lost writes: an id the stream never generated.
        assert!(!untrimmed.still_holds_everything_after(EventId::new(13, 0)));
        let trimmed = info(10, 3, 10, 12);
        assert!(!trimmed.still_holds_everything_after(EventId::new(8, 0)));
        assert!(!trimmed.still_holds_everything_after(EventId::ZERO));
        assert!(trimmed.still_holds_everything_after(EventId::new(9, u64::MAX)), "the id just before the first entry");
        let tracked = StreamInfo { max_deleted: Some(EventId::new(9, 0)), ..info(10, 3, 10, 12) };
        assert!(tracked.still_holds_everything_after(EventId::new(9, 0)), "Redis 7.2+ names the last removed id");
    }

    #[test]
    fn event_id_reads_only_the_id() {
        assert_eq!(event_id(br#"{"id":"7-1","type":"t","data":{"id":"nested"}}"#), Some(EventId::new(7, 1)));
        assert_eq!(event_id(br#"{"type":"live"}"#), None);
        assert_eq!(event_id(b"garbage"), None);
    }
}
