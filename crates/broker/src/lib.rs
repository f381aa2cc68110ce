//! The broker: how events travel between Tidings processes, and where recent
//! history and the latest state per entity live.
//!
//! The gateway subscribes to a workspace while it has local readers and receives
//! its messages through a [`MessageHandler`]; publishers append durable events
//! (which get their id here) or send live-only ones. [`MemoryBroker`] serves
//! `tidings dev` and unit tests; [`RedisBroker`] is the SPEC §4 layout.

mod memory;
pub mod options;
pub mod redis;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tidings_protocol::{Event, EventId};

pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisConfig};

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached; callers answer 503 and retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this process cannot use.
    #[error("broker protocol error: {0}")]
    Protocol(String),
    /// The broker settings are unusable (e.g. a malformed Redis URL).
    #[error("broker configuration: {0}")]
    Config(String),
}

/// Receives every message of the workspaces this process subscribed to.
///
/// Called on the broker's delivery path, so it must not block or await: it
/// hands the payload to local queues and returns.
pub trait MessageHandler: Send + Sync + 'static {
    /// `payload` is the event JSON exactly as published on `workspace:<id>`.
    fn on_message(&self, workspace_id: &str, payload: Bytes);

    /// Several messages of one workspace that arrived together, in order: the
    /// broker had read them before the handler got to the first, so the
    /// handler may write them to each client at once (one `write(2)` each).
    fn on_messages(&self, workspace_id: &str, payloads: Vec<Bytes>) {
        for payload in payloads {
            self.on_message(workspace_id, payload);
        }
    }

    /// The workspaces that have local readers now: the one source of truth for
    /// what the broker subscribes to. The broker re-derives its subscriptions
    /// from it after every reconnect, and checks it before unsubscribing.
    fn workspaces(&self) -> Vec<String>;

    /// Does the workspace have local readers now? (One entry of [`Self::workspaces`].)
    fn has_readers(&self, workspace_id: &str) -> bool {
        self.workspaces().iter().any(|w| w == workspace_id)
    }

    /// The broker lost its connection and is back (after re-subscribing and
    /// replaying what it missed).
    fn on_reconnect(&self) {}

    /// The broker's subscription connection went up (`true`) or was lost.
    fn on_connection(&self, _connected: bool) {}

    /// Events of this workspace were missed while the broker was away and are no
    /// longer in history (trimmed, or the store lost its data): local readers
    /// must learn it, by reconnecting with `since` and getting `recovered: false`.
    fn on_gap(&self, _workspace_id: &str) {}

    /// A token id was revoked (the `tidings:revocations` channel).
    fn on_revoked(&self, _jti: &str) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn revocations_outlive_the_token_by_a_minute() {
        assert_eq!(super::revocation_ttl(Some(1_000), 400), 660);
        assert_eq!(super::revocation_ttl(Some(100), 400), 60, "already expired: a minute");
        assert_eq!(super::revocation_ttl(None, 400), 30 * 24 * 3600);
    }
}

/// The handler of a process that only publishes and subscribes to nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOnly;

impl MessageHandler for PublishOnly {
    fn on_message(&self, _workspace_id: &str, _payload: Bytes) {}

    fn workspaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A durable event as stored in history.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: EventId,
    /// The event JSON, `id` included.
    pub json: Bytes,
}

/// A window of a workspace's history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryPage {
    /// Events after `since` (or the newest ones without `since`), oldest first.
    pub events: Vec<StoredEvent>,
    /// False when events after `since` were already trimmed from history, so the
    /// client must reload its state. Always true without `since`.
    pub recovered: bool,
    /// True when more events follow the last one returned.
    pub more: bool,
    /// The newest id stored for the workspace, if any.
    pub last_id: Option<EventId>,
}

/// The latest `metrics_update` or `health_update` of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestEvent {
    pub entity_ref: String,
    pub event_type: String,
    pub json: Bytes,
}

/// Pub/sub, history, latest state and revocations: what a gateway needs, and
/// what a publisher shares with it.
pub trait Broker: Send + Sync + 'static {
    /// Durable publish: assigns the next id of the workspace's history, stores
    /// the event, updates the latest state, then delivers it to subscribers, with
    /// delivery order equal to id order. Returns the event with its `id`.
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<Event, BrokerError>>;

    /// Live-only publish: delivered to current subscribers, never stored.
    fn publish_live(&self, event: Event) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Starts delivering the workspace's messages to this process's handler,
    /// which must list it in [`MessageHandler::workspaces`] already. An error
    /// means the broker cannot serve the workspace now (the caller answers 503).
    fn subscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops delivering the workspace's messages, unless the handler has readers
    /// of it again. Never leaves the broker disagreeing with the handler: a
    /// failure is repaired by a reconnect that re-derives the subscriptions.
    fn unsubscribe<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Up to `limit` events after `since`, or the newest `limit` without it.
    fn history<'a>(
        &'a self,
        workspace_id: &'a str,
        since: Option<EventId>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// The latest `metrics_update` / `health_update` per entity of the workspace.
    fn latest<'a>(&'a self, workspace_id: &'a str) -> BoxFuture<'a, Result<Vec<LatestEvent>, BrokerError>>;

    /// True while the backing store answers.
    fn is_ready(&self) -> BoxFuture<'_, bool>;

    /// Is this token id revoked (`tidings:revoked:<jti>`)?
    fn is_revoked<'a>(&'a self, jti: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// Revokes a token id (`SET tidings:revoked:<jti>` for [`revocation_ttl`],
    /// then `PUBLISH tidings:revocations <jti>`): every gateway
    /// refuses it from now on and closes its live connections with 4003.
    fn revoke<'a>(&'a self, jti: &'a str, exp: Option<u64>) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stops the broker's background tasks (the pub/sub connection and its
    /// retries) and waits until they are gone, so a process that shuts down
    /// leaves nothing running. Delivery to this process ends here; commands
    /// still work. Called last, after every connection has drained.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What only a publisher needs: webhook deliveries published at most once, and
/// the links from a source's objects to catalog entities. Kept apart from
/// [`Broker`] so a gateway (and its test doubles) never carries it.
pub trait DeliveryStore: Send + Sync + 'static {
    /// Claims a webhook delivery and durably publishes `events` (all of one
    /// workspace, in order) as one atomic step: either the delivery is new and
    /// every event is stored, or it was seen within [`DEDUP_TTL_SECS`] and
    /// nothing is. An error can come after the step took effect (a timeout):
    /// then the sender's retry is answered [`PublishedOnce::Duplicate`] if it
    /// did and published if it did not — exactly once either way, so callers
    /// never release a claim.
    fn publish_once<'a>(&'a self, claim: &'a DeliveryClaim, events: Vec<Event>) -> BoxFuture<'a, Result<PublishedOnce, BrokerError>>;

    /// Remembers (or, with `None`, forgets) which catalog entity a source's
    /// object belongs to, e.g. GitHub repository `acme/checkout` →
    /// `component:default/checkout` (`HSET tidings:entity-links:<source>`).
    fn link_entity<'a>(&'a self, source: &'a str, key: &'a str, entity_ref: Option<&'a str>) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The entity linked to a source's object, if any.
    fn linked_entity<'a>(&'a self, source: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<String>, BrokerError>>;
}

/// A webhook delivery to publish at most once: `source` (`github`, …) and the
/// sender's delivery id (or a hash of the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryClaim {
    pub source: String,
    pub delivery: String,
}

/// What [`DeliveryStore::publish_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishedOnce {
    /// The events as stored, with their ids.
    Published(Vec<Event>),
    /// The delivery was published before; nothing was written.
    Duplicate,
}

/// How long a revocation is kept: until the token's `exp` plus a minute (for
/// gateways whose clocks run late), at least a minute when `exp` is past, and
/// 30 days when the revoker does not know `exp`.
pub fn revocation_ttl(exp: Option<u64>, now: u64) -> u64 {
    const MARGIN: u64 = 60;
    match exp {
        Some(exp) => exp.saturating_sub(now).saturating_add(MARGIN),
        None => 30 * 24 * 3600,
    }
}

/// How long a webhook delivery id is remembered.
pub const DEDUP_TTL_SECS: u64 = 24 * 3600;
