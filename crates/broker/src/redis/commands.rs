//! The Redis command side: one shared multiplexed connection (to a single
//! server, or cluster-aware), every command bounded by [`COMMAND_TIMEOUT`].
//!
//! Every command runs on a clone of the one connection, so commands in flight
//! are limited only by Redis, and a command waits for nothing but its own
//! answer. A pool handing out a connection per command (deadpool-redis, 32
//! connections, a `PING` each time one was handed out) capped the gateway at
//! 32 commands in flight: 10,000 clients replaying at once after a drain
//! queued for a connection until the 3 s wait ran out, were refused with 503,
//! retried and were refused again (chaos scenario 6 at 10,000 clients).
//!
//! A connection that fails with an I/O error or does not answer in time is
//! replaced and the next command connects again: a half-open or
//! black-holed connection must not outlive one timeout. The replaced one stays
//! open until the next replacement, so a command that timed out but reached
//! Redis (held by `CLIENT PAUSE`, a slow script) still runs, as it did on a
//! pooled connection, instead of depending on when Redis notices a close: the
//! publisher's claims are built for that case. Connecting is done by
//! one caller at a time; callers that waited for an attempt that failed fail
//! with it instead of each trying again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use tokio::time::timeout;

use crate::BrokerError;

/// How long one Redis command may take before the broker calls Redis unavailable.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Where new connections come from.
pub(super) enum Connector {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Connector {
    async fn connect(&self) -> Result<Connection, RedisError> {
        match self {
            Connector::Single(client) => {
                // The client's own 500 ms response timeout would cut answers
                // that are merely late under load; COMMAND_TIMEOUT bounds them.
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(Some(COMMAND_TIMEOUT));
                Ok(Connection::Single(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Connector::Cluster(client) => Ok(Connection::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// The command side: the shared connection, made on first use and again after a failure.
pub(super) struct Commands {
    connector: Connector,
    /// The connection commands use now, with its generation.
    current: Mutex<Option<(u64, Connection)>>,
    /// The connection replaced last, kept open (see the module doc).
    retired: Mutex<Option<Connection>>,
    /// Held while connecting, so a burst of commands opens one connection.
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts finished (made or failed), and the last one that failed.
    attempts: AtomicU64,
    failed_attempt: Mutex<Option<(u64, String)>>,
}

impl Commands {
    pub(super) fn new(connector: Connector) -> Self {
        Self {
            connector,
            current: Mutex::new(None),
            retired: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            failed_attempt: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<(u64, Connection)> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The shared connection, connecting first if there is none.
    async fn connection(&self) -> Result<(u64, Connection), BrokerError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let attempts_before = self.attempts.load(Ordering::Acquire);
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        // An attempt finished while this caller waited, and made nothing: its error is this one's.
        if let Some((attempt, error)) = &*self.failed_attempt.lock().unwrap_or_else(|p| p.into_inner())
            && *attempt > attempts_before
        {
            return Err(BrokerError::Unavailable(error.clone()));
        }
        let made = self.connector.connect().await;
        let attempt = self.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        match made {
            Ok(conn) => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((attempt, conn.clone()));
                Ok((attempt, conn))
            }
            Err(e) => {
                *self.failed_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some((attempt, e.to_string()));
                Err(unavailable(e))
            }
        }
    }

    /// Retires connection `generation` if it is still the current one.
    fn discard(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation)
            && let Some((_, conn)) = current.take()
        {
            *self.retired.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        }
    }

    /// Runs `request` on the shared connection within `limit` (connecting
    /// included); a connection that timed out or broke is replaced.
    async fn on_connection<'request, T>(
        &self,
        limit: Duration,
        request: impl FnOnce(Connection) -> Pin<Box<dyn Future<Output = redis::RedisResult<T>> + Send + 'request>>,
    ) -> Result<T, BrokerError> {
        let mut generation = None;
        let answer = timeout(limit, async {
            let (g, conn) = self.connection().await?;
            generation = Some(g);
            request(conn).await.map_err(|e| {
                if e.is_io_error() || e.is_unrecoverable_error() {
                    self.discard(g);
                }
                unavailable(e)
            })
        })
        .await;
        match answer {
            Ok(answer) => answer,
            Err(elapsed) => {
                if let Some(g) = generation {
                    self.discard(g);
                }
                Err(unavailable(elapsed))
            }
        }
    }

    pub(super) async fn query<T: redis::FromRedisValue + Send + 'static>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        self.on_connection(COMMAND_TIMEOUT, |mut conn| Box::pin(async move { cmd.query_async(&mut conn).await })).await
    }

    /// Whether Redis answers `PING` within `limit`. A connection that does
    /// not is replaced like any other: readiness probes are what an idle
    /// gateway sends, so they must not keep asking a dead connection.
    pub(super) async fn answers_ping(&self, limit: Duration) -> bool {
        let ping = redis::cmd("PING");
        let answer: Result<String, BrokerError> =
            self.on_connection(limit, |mut conn| Box::pin(async move { ping.query_async(&mut conn).await })).await;
        answer.is_ok()
    }

    /// Several commands in one round trip (`MULTI`/`EXEC` when `pipe` is atomic).
    pub(super) async fn pipeline<T: redis::FromRedisValue + Send + 'static>(&self, pipe: &Pipeline) -> Result<T, BrokerError> {
        self.on_connection(COMMAND_TIMEOUT, |mut conn| Box::pin(async move { pipe.query_async(&mut conn).await })).await
    }

    pub(super) async fn invoke<T: redis::FromRedisValue + Send + 'static>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BrokerError> {
        self.on_connection(COMMAND_TIMEOUT, |mut conn| Box::pin(async move { invocation.invoke_async(&mut conn).await })).await
    }
}

/// A clone of the shared multiplexed connection, either kind.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}
