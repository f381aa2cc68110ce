//! The Redis broker (SPEC §4): durable publish through `scripts/publish.lua`,
//! history from the workspace stream, latest state from its hash, and one
//! dedicated pub/sub connection per process that follows the hub's workspaces.
//!
//! This file holds the broker's handle and its command-side operations; the
//! rest lives by responsibility: [`commands`] (the pool), [`history`] (stream
//! reads and the `recovered` check), [`subscriptions`] (what pub/sub follows,
//! positions, de-duplicated delivery), [`pubsub`] (the single-server task) and
//! [`cluster`] (the sharded pub/sub task).
//!
//! The pub/sub connection reconnects with capped, jittered exponential backoff,
//! re-subscribes every workspace, and replays from each stream what was
//! published while it was away, so local clients see no gap when Redis kept
//! its data.

mod cluster;
mod commands;
mod history;
mod pubsub;
mod subscriptions;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use tidings_protocol::Event;
use tidings_protocol::EventId;
use tidings_protocol::keys::{REVOCATIONS_CHANNEL, WorkspaceKeys};
use tidings_protocol::payloads::is_conflatable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::cluster::cluster_pubsub_loop;
use self::commands::{Commands, Connector};
use self::pubsub::pubsub_loop;
use self::subscriptions::{PubSubState, Shared};
use crate::{Broker, BrokerError, DeliveryStore, HistoryPage, LatestEvent, MessageHandler};

/// The durable publish script, shipped as `scripts/publish.lua` for other services.
pub const PUBLISH_SCRIPT: &str = include_str!("../../../../scripts/publish.lua");

/// How often the pub/sub connection is probed by default, so a silent network
/// failure is noticed.
pub const PUBSUB_PROBE_EVERY: Duration = Duration::from_secs(5);

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
        let (commands, subscriber) = if config.cluster {
            let commands = redis::cluster::ClusterClientBuilder::new(urls.clone()).build().map_err(|e| bad_config(&e))?;
            // Sharded pub/sub on a cluster connection needs RESP3 and a push sender.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()
                .map_err(|e| bad_config(&e))?;
            (Connector::Cluster(Box::new(commands)), SubscriberSource::Cluster(Box::new(client), rx))
        } else {
            let client = redis::Client::open(urls[0].as_str()).map_err(|e| bad_config(&e))?;
            (Connector::Single(Box::new(client.clone())), SubscriberSource::Single(Box::new(client)))
        };
        let commands = Commands::new(commands);
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
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
        });
        match subscriber {
            SubscriberSource::Single(client) => shared.spawn(pubsub_loop(*client, Arc::downgrade(&shared))),
            SubscriberSource::Cluster(client, rx) => shared.spawn(cluster_pubsub_loop(*client, rx, Arc::downgrade(&shared))),
        }
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

    async fn ping(&self) -> bool {
        if !self.shared.connected.load(Ordering::Relaxed) {
            return false;
        }
        self.shared.commands.answers_ping(Duration::from_secs(1)).await
    }

    /// True while the command connection answers PING, whatever the pub/sub
    /// connection's state: the readiness of a process that only publishes.
    pub async fn commands_ready(&self) -> bool {
        self.shared.commands.answers_ping(Duration::from_secs(1)).await
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

impl Broker for RedisBroker {
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>> {
        self.publish_durable(event).boxed()
    }

    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_live_only(event).boxed()
    }

    fn subscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shared.add_subscription(workspace_id).boxed()
    }

    fn unsubscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.shared.remove_subscription(workspace_id).boxed()
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

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.shared.closing.cancel();
            self.shared.tasks.close();
            self.shared.tasks.wait().await;
            self.shared.set_connected(false);
        }
        .boxed()
    }

    fn revoke<'a>(&'a self, jti: &'a str, exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.revoke_token(jti, exp).boxed()
    }

    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        async move {
            let n: i64 = self.shared.commands.query(redis::cmd("EXISTS").arg(tidings_protocol::keys::revoked(jti))).await?;
            Ok(n > 0)
        }
        .boxed()
    }
}

impl DeliveryStore for RedisBroker {
    fn publish_once<'a>(
        &'a self,
        claim: &'a crate::DeliveryClaim,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<crate::PublishedOnce, BrokerError>> {
        self.publish_claimed(claim, events).boxed()
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
}
