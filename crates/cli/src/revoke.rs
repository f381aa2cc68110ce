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
    #[command(flatten)]
    pub redis: tidings_broker::options::RedisArgs,
}

pub fn main(args: RevokeArgs) -> anyhow::Result<()> {
    use tidings_broker::{Broker, PublishOnly, RedisBroker};
    tidings_protocol::keys::validate_jti(&args.jti).map_err(|e| UsageError(format!("--jti: {e}")))?;
    let url = args.redis.required_url(" (or --redis-url)").map_err(UsageError)?;
    args.redis.check().map_err(UsageError)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let broker = RedisBroker::connect(args.redis.config(url, 1), std::sync::Arc::new(PublishOnly))
            .map_err(|e| UsageError(format!("TIDINGS_REDIS_URL: {e}")))?;
        let revoked = broker.revoke(&args.jti, args.exp).await;
        broker.close().await;
        revoked.context("revoking in Redis")?;
        anyhow::Ok(())
    })?;
    println!("revoked {}", args.jti);
    Ok(())
}
