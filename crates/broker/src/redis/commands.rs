//! The Redis command side: one pool on a single server or a cluster-aware
//! pool, every command bounded by [`COMMAND_TIMEOUT`].

use std::time::Duration;

use tokio::time::timeout;

use crate::BrokerError;

/// How long one Redis command may take before the broker calls Redis unavailable.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// The command side: a pool on one server, or a cluster-aware pool.
pub(super) enum Commands {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl Commands {
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
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

    pub(super) async fn invoke<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, BrokerError> {
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

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}
