//! `tidings revoke`: revokes a token id on `TIDINGS_REDIS_URL` (SPEC §1, §4),
//! the way the publisher's `POST /v1/revocations` does.

use anyhow::Context;

use crate::UsageError;

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The token's `jti`.
    #[arg(long)]
    pub jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until a minute
    /// after it; without it, for 30 days.
    #[arg(long)]
    pub exp: Option<u64>,
    #[arg(long, env = "TIDINGS_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Treat the Redis URL as a comma-separated list of cluster seed nodes.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
}

pub fn main(args: RevokeArgs) -> anyhow::Result<()> {
    use tidings_broker::{Broker, PublishOnly, RedisBroker, RedisConfig};
    tidings_protocol::keys::validate_jti(&args.jti).map_err(|e| UsageError(format!("--jti: {e}")))?;
    let url = args.redis_url.ok_or_else(|| UsageError("TIDINGS_REDIS_URL (or --redis-url) is required".into()))?;
    tidings_broker::redis::check_redis_urls(&url, args.redis_cluster).map_err(UsageError)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let broker = RedisBroker::connect(RedisConfig::new(url, 1).with_cluster(args.redis_cluster), std::sync::Arc::new(PublishOnly))
            .map_err(|e| UsageError(format!("TIDINGS_REDIS_URL: {e}")))?;
        broker.revoke(&args.jti, args.exp).await.context("revoking in Redis")?;
        anyhow::Ok(())
    })?;
    println!("revoked {}", args.jti);
    Ok(())
}
