//! The node ties the hub to the broker: it admits connections (caps, draining),
//! puts them in the hub — the one record of which workspaces have local
//! readers — and has the broker follow that: subscribe on a workspace's first
//! reader, unsubscribe after a delay when the last one left (the broker
//! re-checks the hub, so a reader that came back keeps the subscription).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidings_broker::{Broker, BrokerError, MessageHandler};
use tidings_protocol::Filter;
use tidings_protocol::codes::close;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::hub::{Connection, Hub, Transport};
use crate::metrics::GatewayMetrics;
use crate::outbox::Outbox;

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the gateway is draining; reconnect to another instance")]
    Draining,
    #[error("the gateway is at its connection limit")]
    AtCapacity,
    #[error("too many connections for this user")]
    UserCap,
    #[error("too many connections are joining this gateway at once; retry")]
    Busy,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::AtCapacity => "max_connections",
            Refusal::UserCap => "max_connections_per_user",
            Refusal::Busy => "busy",
        }
    }
}

/// A connection's turn to join, held until it is registered and its first
/// history page read (see [`Node::join_turn`]).
#[derive(Debug)]
pub struct JoinTurn {
    _permit: OwnedSemaphorePermit,
}

/// A place under `TIDINGS_MAX_CONNECTIONS`, taken before the upgrade, while
/// the user may still be unknown (first-message auth); dropping it frees it.
#[derive(Debug)]
pub struct Slot {
    permit: OwnedSemaphorePermit,
}

/// A slot attached to its user, held for the connection's life; dropping it
/// frees the slot and the user's count.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    user: String,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// A connection's place in the hub, held for the connection's life.
#[derive(Debug)]
pub struct Registration {
    node: Arc<Node>,
    conn: Arc<Connection>,
    /// Counted in `tidings_connections_open`.
    opened: bool,
}

impl Registration {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.unregister(&self.conn, self.opened);
    }
}

/// One gateway process's connection bookkeeping.
pub struct Node {
    pub config: GatewayConfig,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: GatewayMetrics,
    pub verifier: Verifier,
    /// Cancelled when graceful shutdown starts.
    pub draining: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    permits: Arc<Semaphore>,
    joins: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("instance_id", &self.config.instance_id).finish_non_exhaustive()
    }
}

impl Node {
    /// `connect_broker` receives the hub as the handler of subscribed messages.
    pub fn new(
        config: GatewayConfig,
        metrics: GatewayMetrics,
        connect_broker: impl FnOnce(Arc<dyn MessageHandler>) -> Result<Arc<dyn Broker>, BrokerError>,
    ) -> Result<Arc<Self>, NodeError> {
        let verifier = Verifier::new(&config)?;
        let hub = Arc::new(Hub::new(metrics.clone()));
        let broker = connect_broker(hub.clone())?;
        Ok(Arc::new(Self {
            verifier,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            joins: Arc::new(Semaphore::new(config.joins_in_flight.max(1))),
            config,
            hub,
            broker,
            metrics,
            draining: CancellationToken::new(),
            tasks: TaskTracker::new(),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            next_key: AtomicU64::new(1),
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Takes a connection slot for `user`, or says why not.
    pub fn admit(&self, user: &str) -> Result<Admission, Refusal> {
        self.attach(self.reserve()?, user)
    }

    /// Waits, in arrival order, for a turn to join (`joins_in_flight` at
    /// once), or is refused after `join_turn_wait`.
    pub async fn join_turn(&self) -> Result<JoinTurn, Refusal> {
        match tokio::time::timeout(self.config.join_turn_wait, self.joins.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(JoinTurn { _permit: permit }),
            Ok(Err(_)) | Err(_) => Err(Refusal::Busy),
        }
    }

    /// Takes a place under the process's connection cap for a socket whose
    /// user is not known yet.
    pub fn reserve(&self) -> Result<Slot, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| Refusal::AtCapacity)?;
        Ok(Slot { permit })
    }

    /// Counts `slot` against `user`'s cap once the user is known. Refused when
    /// the process started draining meanwhile; either refusal frees the slot.
    pub fn attach(&self, slot: Slot, user: &str) -> Result<Admission, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let permit = slot.permit;
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(user.to_string()).or_insert(0);
        if *n >= self.config.max_connections_per_user {
            return Err(Refusal::UserCap);
        }
        *n += 1;
        Ok(Admission { _permit: permit, user: user.to_string(), per_user: self.per_user.clone() })
    }

    /// A new connection object, not yet registered.
    pub fn new_connection(
        &self,
        workspace_id: &str,
        user_id: &str,
        jti: Option<String>,
        transport: Transport,
        filter: Filter,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            connection_id: uuid::Uuid::new_v4().to_string(),
            workspace_id: workspace_id.to_string(),
            user_id: user_id.to_string(),
            jti,
            transport,
            filter: std::sync::Mutex::new(filter),
            outbox: Outbox::new(self.config.client_queue_bytes),
            seen_ms: AtomicU64::new(crate::hub::clock_ms()),
        })
    }

    /// Puts the connection in the hub and has the broker follow its workspace.
    /// Live events flow into its outbox once this returns; dropping the
    /// [`Registration`] takes it out again, whatever ends the connection (a
    /// return, an error, a panic, a dropped upgrade).
    pub async fn register(self: &Arc<Self>, conn: &Arc<Connection>) -> Result<Registration, BrokerError> {
        if self.hub.insert(conn.clone()) {
            self.metrics.subscribed_workspaces.inc();
        }
        let mut registration = Registration { node: self.clone(), conn: conn.clone(), opened: false };
        // The hub lists the workspace first, so a concurrent delayed
        // unsubscribe sees this reader and keeps the subscription. On an error
        // the registration is dropped, which takes the connection out again.
        self.broker.subscribe(&conn.workspace_id).await?;
        self.metrics.connections_open.with_label_values(&[conn.transport.label()]).inc();
        self.metrics.connections_accepted.with_label_values(&[conn.transport.label()]).inc();
        registration.opened = true;
        Ok(registration)
    }

    /// Takes the connection out of the hub; the broker stops following the
    /// workspace after `unsubscribe_delay` unless a reader came back by then.
    fn unregister(self: &Arc<Self>, conn: &Connection, opened: bool) {
        if opened {
            self.metrics.connections_open.with_label_values(&[conn.transport.label()]).dec();
        }
        conn.outbox.close(close::NORMAL, "");
        if !self.hub.remove(&conn.workspace_id, conn.key) {
            return;
        }
        self.metrics.subscribed_workspaces.dec();
        let node = self.clone();
        let workspace_id = conn.workspace_id.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        self.tasks.spawn_on(
            async move {
                // A draining process unsubscribes nothing: it is about to exit.
                tokio::select! {
                    () = tokio::time::sleep(node.config.unsubscribe_delay) => {}
                    () = node.draining.cancelled() => return,
                }
                if node.hub.count(&workspace_id) == 0
                    && let Err(e) = node.broker.unsubscribe(&workspace_id).await
                {
                    tracing::warn!(workspace_id, error = %e, "unsubscribe failed");
                }
            },
            &runtime,
        );
    }

    /// Graceful shutdown, first half: refuse new connections and close the live
    /// ones with 1012, spread evenly over the drain period so that clients do not
    /// all reconnect elsewhere at the same instant. Connections are closed in
    /// batches per tick, since timers cannot sleep less than about a millisecond
    /// and a gateway can hold more connections than the drain has milliseconds.
    pub fn start_drain(self: &Arc<Self>) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        let node = self.clone();
        self.tasks.spawn(async move {
            let conns = node.hub.all();
            let per_tick = drain_schedule(conns.len(), node.config.drain);
            let mut tick = tokio::time::interval(DRAIN_TICK);
            for batch in conns.chunks(per_tick) {
                tick.tick().await;
                for conn in batch {
                    conn.outbox.close(close::DRAINING, "draining");
                }
            }
        });
    }
}

/// How often the drain closes its next batch of connections.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// Connections to close per [`DRAIN_TICK`] so that `connections` are spread
/// over the first 80% of `drain` (the last close handshakes finish within it).
fn drain_schedule(connections: usize, drain: std::time::Duration) -> usize {
    let spread = drain.mul_f64(0.8);
    let ticks = (spread.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
    connections.div_ceil(ticks).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DRAIN_TICK, drain_schedule};

    #[test]
    fn the_drain_reaches_every_connection_within_80_percent_of_the_period() {
        for (connections, drain) in [(100_000, 30_000), (3_000, 500), (5, 30_000), (1, 0), (50_000, 0)] {
            let per_tick = drain_schedule(connections, Duration::from_millis(drain));
            let ticks = connections.div_ceil(per_tick);
            // The first batch goes at once, the last one (ticks - 1) ticks later.
            let last = DRAIN_TICK * (ticks as u32 - 1);
            assert!(
                last <= Duration::from_millis(drain * 8 / 10).max(Duration::ZERO),
                "{connections} over {drain} ms: last batch at {last:?}"
            );
            assert!(per_tick * ticks >= connections);
        }
        assert_eq!(drain_schedule(100_000, Duration::from_secs(30)), 42, "2,400 ticks of 42 connections");
    }
}
