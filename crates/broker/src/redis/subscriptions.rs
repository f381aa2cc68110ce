//! What the pub/sub connection follows: the subscription state shared by the
//! broker and its pub/sub task, the position per workspace (the newest id
//! delivered here, where a replay after a reconnect continues), subscribe and
//! unsubscribe as the hub's readers come and go, and delivery with the
//! de-duplication that lets a replay and live delivery overlap.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::PubSubSink;
use tidings_protocol::EventId;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::commands::{COMMAND_TIMEOUT, Commands, unavailable};
use crate::{BrokerError, MessageHandler};
use tidings_protocol::keys::WorkspaceKeys;

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Events read per history request when replaying after a reconnect.
const REPLAY_PAGE: usize = 1000;

/// The live pub/sub connection's command half.
pub(super) enum Subscriber {
    Single(PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Subscriber {
    pub(super) async fn subscribe(&mut self, channel: &str) -> Result<(), BrokerError> {
        let result = match self {
            Subscriber::Single(sink) => timeout(COMMAND_TIMEOUT, sink.subscribe(channel)).await,
            // One channel per call: channels of different slots cannot share an SSUBSCRIBE.
            Subscriber::Cluster(conn) => timeout(COMMAND_TIMEOUT, conn.ssubscribe(channel)).await,
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) -> Result<(), BrokerError> {
        let result = match self {
            Subscriber::Single(sink) => timeout(COMMAND_TIMEOUT, sink.unsubscribe(channel)).await,
            Subscriber::Cluster(conn) => timeout(COMMAND_TIMEOUT, conn.sunsubscribe(channel)).await,
        };
        result.map_err(unavailable)?.map_err(unavailable)
    }
}

/// The pub/sub connection as it is now. What it *should* be subscribed to is
/// not kept here: it is re-derived from [`MessageHandler::workspaces`] (the
/// workspaces with local readers) on every connect and re-checked on every
/// unsubscribe, so a failed command cannot leave the two disagreeing.
pub(super) struct PubSubState {
    /// Workspaces subscribed on the current connection.
    pub(super) subscribed: HashSet<String>,
    /// The live connection's command half, when connected.
    pub(super) sink: Option<Subscriber>,
    /// Cancelled to give up the current connection (a command on it failed),
    /// so the pub/sub task reconnects and re-derives every subscription.
    pub(super) session: CancellationToken,
}

impl PubSubState {
    /// Drops the current connection after a failed command on it.
    pub(super) fn abandon(&mut self, why: &BrokerError) {
        if self.sink.take().is_some() {
            tracing::warn!(error = %why, "redis pub/sub command failed; reconnecting");
        }
        self.subscribed.clear();
        self.session.cancel();
    }
}

pub(super) struct Shared {
    pub(super) commands: Commands,
    pub(super) cluster: bool,
    pub(super) handler: Arc<dyn MessageHandler>,
    pub(super) history_size: usize,
    pub(super) pubsub_probe: Duration,
    /// An async mutex: held across SUBSCRIBE round trips and replays so that a
    /// reconnect, a new subscription and an unsubscribe never interleave.
    pub(super) pubsub: tokio::sync::Mutex<PubSubState>,
    /// Per workspace followed here: the newest id delivered, or the stream's
    /// last id when the subscription started (`ZERO` for an empty stream), which
    /// is where a replay after a reconnect continues. A std mutex: read and
    /// written per message on the delivery path, never across an await.
    pub(super) positions: Mutex<HashMap<String, EventId>>,
    pub(super) connected: AtomicBool,
    pub(super) reconnects: AtomicU64,
    /// Every background task of this broker: the pub/sub loop and the
    /// re-subscribes it starts. [`RedisBroker::close`](super::RedisBroker) waits on it.
    pub(super) tasks: TaskTracker,
    /// Cancelled by `close`, or when the last handle is dropped: ends every task
    /// at once (dropping a connection closes it) instead of at their next wake-up.
    pub(super) closing: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

impl Shared {
    /// Runs `task` in the broker's tracker until it ends or the broker closes.
    pub(super) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let closing = self.closing.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = closing.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Records whether pub/sub is up, and tells the handler (a gauge, at the gateway).
    pub(super) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.handler.on_connection(connected);
    }

    /// Records where following `workspace_id` starts, unless it is followed
    /// already: the stream's newest id now (live delivery covers what follows).
    pub(super) async fn ensure_position(&self, workspace_id: &str) -> Result<(), BrokerError> {
        if self.positions.lock().unwrap_or_else(|p| p.into_inner()).contains_key(workspace_id) {
            return Ok(());
        }
        let start = self.last_stream_id(workspace_id).await?.unwrap_or(EventId::ZERO);
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).entry(workspace_id.to_string()).or_insert(start);
        Ok(())
    }

    pub(super) fn position(&self, workspace_id: &str) -> Option<EventId> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).get(workspace_id).copied()
    }

    /// Replays what the workspace's stream received after the newest id
    /// delivered here, page by page until it is caught up. Where history no
    /// longer reaches back that far (trimmed, or Redis lost its data), the
    /// handler is told with [`MessageHandler::on_gap`].
    pub(super) async fn replay_missed(&self, workspace_id: &str) -> Result<(), BrokerError> {
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

    /// Hands a message to the hub unless it was already delivered (a replay and
    /// live delivery can overlap around a reconnect).
    pub(super) fn deliver(&self, workspace_id: &str, payload: Bytes) {
        if self.is_new(workspace_id, &payload) {
            self.handler.on_message(workspace_id, payload);
        }
    }

    /// [`Self::deliver`] for messages of one workspace that were read together.
    pub(super) fn deliver_many(&self, workspace_id: &str, mut payloads: Vec<Bytes>) {
        payloads.retain(|payload| self.is_new(workspace_id, payload));
        match payloads.len() {
            0 => {}
            1 => self.handler.on_message(workspace_id, payloads.swap_remove(0)),
            _ => self.handler.on_messages(workspace_id, payloads),
        }
    }

    /// False for a durable event at or before the workspace's last delivered id.
    fn is_new(&self, workspace_id: &str, payload: &[u8]) -> bool {
        if let Some(id) = event_id(payload) {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = positions.get_mut(workspace_id) {
                if id <= *last {
                    return false;
                }
                *last = id;
            }
        }
        true
    }

    /// The workspaces to follow now (the handler's readers), each with a start
    /// position; positions of workspaces nobody reads any more are forgotten.
    pub(super) async fn derive_subscriptions(&self) -> Result<Vec<String>, BrokerError> {
        let wanted = self.handler.workspaces();
        for workspace_id in &wanted {
            self.ensure_position(workspace_id).await?;
        }
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).retain(|w, _| wanted.contains(w));
        Ok(wanted)
    }
}

/// The id of an event JSON, read without parsing its data.
pub(super) fn event_id(payload: &[u8]) -> Option<EventId> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<EventId>,
    }
    serde_json::from_slice::<IdOnly>(payload).ok()?.id
}

/// The workspace of a channel name, plain (`workspace:acme`) or hash-tagged (`workspace:{acme}`).
pub(super) fn workspace_of(channel: &str) -> Option<&str> {
    let rest = channel.strip_prefix("workspace:")?;
    Some(rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')).unwrap_or(rest))
}

pub(super) fn jittered(backoff: Duration) -> Duration {
    // Full-ish jitter keeps many gateways from reconnecting in lockstep.
    backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

impl Shared {
    /// Follows a workspace the handler now has a reader of. Fails only when its
    /// start position cannot be read (Redis down): then nothing changed and the
    /// caller refuses the connection. A failed SUBSCRIBE is not the caller's
    /// problem: the connection is abandoned and the reconnect subscribes and
    /// replays from the recorded position.
    pub(super) async fn add_subscription(self: &Arc<Self>, workspace_id: &str) -> Result<(), BrokerError> {
        // Outside the lock, so a slow stream read delays this workspace only.
        self.ensure_position(workspace_id).await?;
        let mut state = self.pubsub.lock().await;
        if state.subscribed.contains(workspace_id) {
            return Ok(());
        }
        // Again under the lock: a no-op unless an unsubscribe just forgot it.
        self.ensure_position(workspace_id).await?;
        let channel = WorkspaceKeys::new(workspace_id, self.cluster).channel;
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
            Err(e) if self.cluster => {
                // The cluster connection stays; subscribe this channel again until it takes.
                tracing::warn!(workspace_id, error = %e, "cluster ssubscribe failed; retrying in the background");
                state.subscribed.insert(workspace_id.to_string());
                self.spawn(resubscribe(Arc::downgrade(self), channel));
            }
            Err(e) => state.abandon(&e),
        }
        Ok(())
    }

    /// Stops following a workspace, unless the handler has a reader of it again
    /// (the handler is the truth; this is re-checked under the lock).
    pub(super) async fn remove_subscription(&self, workspace_id: &str) -> Result<(), BrokerError> {
        let mut state = self.pubsub.lock().await;
        if self.handler.has_readers(workspace_id) {
            return Ok(());
        }
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).remove(workspace_id);
        if !state.subscribed.remove(workspace_id) {
            return Ok(());
        }
        let channel = WorkspaceKeys::new(workspace_id, self.cluster).channel;
        if let Some(sink) = state.sink.as_mut()
            && let Err(e) = sink.unsubscribe(&channel).await
        {
            if self.cluster {
                // Messages of an unwanted channel are dropped by the hub; the
                // next topology change drops the subscription.
                tracing::warn!(workspace_id, error = %e, "cluster sunsubscribe failed");
            } else {
                state.abandon(&e);
            }
        }
        Ok(())
    }
}

/// Re-issues SSUBSCRIBE for `channel` until the cluster accepts it (the slot
/// map may take a moment to catch up with a failover or a slot move).
pub(super) async fn resubscribe(shared: std::sync::Weak<Shared>, channel: String) {
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

/// Most messages read back to back before the hub gets them.
pub(super) const MAX_READ_TOGETHER: usize = 256;

/// Messages read back to back, handed to the hub as runs of one workspace
/// (in order; a message of another workspace ends the run).
#[derive(Debug, Default)]
pub(super) struct ReadTogether {
    workspace_id: String,
    payloads: Vec<Bytes>,
}

impl ReadTogether {
    pub(super) fn push(&mut self, state: &Shared, workspace_id: &str, payload: Bytes) {
        if self.workspace_id != workspace_id {
            self.hand_over(state);
            workspace_id.clone_into(&mut self.workspace_id);
        }
        self.payloads.push(payload);
    }

    pub(super) fn hand_over(&mut self, state: &Shared) {
        if !self.payloads.is_empty() {
            state.deliver_many(&self.workspace_id, std::mem::take(&mut self.payloads));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_reads_only_the_id() {
        assert_eq!(event_id(br#"{"id":"7-1","type":"t","data":{"id":"nested"}}"#), Some(EventId::new(7, 1)));
        assert_eq!(event_id(br#"{"type":"live"}"#), None);
        assert_eq!(event_id(b"garbage"), None);
    }
}
