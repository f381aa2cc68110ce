//! `tidings token`: mint an HS256 token for tests and demos.

use std::time::Duration;

use anyhow::Context;
use tidings_token::{Claims, sign_hs256};

use crate::UsageError;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Workspace the token reads.
    #[arg(long)]
    pub workspace: String,
    /// Subject (user id).
    #[arg(long, default_value = "dev-user")]
    pub sub: String,
    /// Lifetime: `90s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Token id, for revocation.
    #[arg(long)]
    pub jti: Option<String>,
    /// HS256 secret.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {s:?}: use e.g. 90s, 15m, 1h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// Claims for `workspace`, valid for `ttl` from now.
pub fn claims(workspace: &str, sub: &str, ttl: Duration, jti: Option<String>) -> Claims {
    Claims { jti, ..Claims::for_workspace(workspace, sub, ttl) }
}

pub fn main(args: TokenArgs) -> anyhow::Result<()> {
    let secret = args.jwt_secret.ok_or_else(|| UsageError("TIDINGS_JWT_SECRET (or --jwt-secret) is required".into()))?;
    tidings_protocol::event::validate_workspace_id(&args.workspace).map_err(|e| UsageError(e.to_string()))?;
    let token = sign_hs256(&secret, &claims(&args.workspace, &args.sub, args.ttl, args.jti)).context("signing the token")?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_ttl("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_ttl("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_ttl("7d").unwrap().as_secs(), 604_800);
        assert_eq!(parse_ttl("42").unwrap().as_secs(), 42);
        for bad in ["", "h", "1y", "0s", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
