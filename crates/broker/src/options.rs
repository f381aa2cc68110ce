//! The broker options, said the same way by every binary that takes them
//! (SPEC §1): where Redis is, whether it is a cluster, and how much history
//! each workspace keeps. Flattened into each binary's own clap struct.

use crate::redis::{RedisConfig, check_redis_urls};

/// `TIDINGS_REDIS_URL` and `TIDINGS_REDIS_CLUSTER`.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`redis://host:port/db`, `rediss://` for TLS); with
    /// `--redis-cluster`, comma-separated seed node URLs.
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Treat the Redis URL as a comma-separated list of cluster seed nodes.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
}

impl RedisArgs {
    /// The URL, or the usage message naming what requires it.
    pub fn required_url(&self, hint: &str) -> Result<&str, String> {
        self.redis_url.as_deref().ok_or_else(|| format!("TIDINGS_REDIS_URL is required{hint}"))
    }

    /// Checks the URL(s) without connecting, so a typo stops the program before it binds.
    pub fn check(&self) -> Result<(), String> {
        match &self.redis_url {
            Some(url) => check_redis_urls(url, self.redis_cluster),
            None => Ok(()),
        }
    }

    /// The broker settings for `url` (see [`Self::required_url`]).
    pub fn config(&self, url: &str, history_size: usize) -> RedisConfig {
        RedisConfig::new(url, history_size).with_cluster(self.redis_cluster)
    }
}

/// `TIDINGS_HISTORY_SIZE`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Events kept per workspace for recovery (MAXLEN ~ of each stream).
    #[arg(long, env = "TIDINGS_HISTORY_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub history_size: u64,
}

impl HistoryArgs {
    pub fn events(&self) -> usize {
        usize::try_from(self.history_size).unwrap_or(usize::MAX)
    }
}
