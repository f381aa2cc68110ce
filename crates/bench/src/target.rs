//! The server under test: where to connect, how to authenticate, which
//! process to measure. Tidings and every peer accept the same
//! `GET /ws?token=JWT&workspace_id=W` upgrade and send one text message first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// WebSocket base URLs of the servers (comma-separated: connections are spread over them).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// HS256 secret the servers verify tokens with.
    #[arg(long, env = "TIDINGS_JWT_SECRET", default_value = "bench-secret")]
    pub jwt_secret: String,
    /// Process ids of the servers, for CPU and memory (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Connections opened at the same time while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// How the server speaks: `tidings` (also the plain-WebSocket peers) or
    /// `socketio` (Engine.IO 4 framing: open packet, `40` connect, `42[…]` events).
    #[arg(long, default_value = "tidings", value_parser = ["tidings", "socketio"])]
    pub dialect: String,
    /// Appended to every upgrade's query (`&batch=1`).
    #[arg(skip)]
    pub extra_query: String,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
}

impl TargetArgs {
    pub fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        self.url
            .split(',')
            .map(|u| {
                let host = u.trim().trim_start_matches("ws://").trim_end_matches('/').to_string();
                let addr = host.to_socket_addrs().with_context(|| format!("resolving {host}"))?.next().context("no address")?;
                Ok(Endpoint { addr, host })
            })
            .collect()
    }

    /// A token of its own per connection, so per-user caps do not apply.
    pub fn token(&self, workspace: &str, n: usize) -> anyhow::Result<String> {
        let claims = tidings_token::Claims::for_workspace(workspace, &format!("bench-{n}"), std::time::Duration::from_secs(3600));
        Ok(claims.sign_hs256(&self.jwt_secret)?)
    }
}

/// Connection `n`'s source address: chosen by the kernel (127.0.0.1) for the
/// first 12,000, then 127.0.0.2, 127.0.0.3, … per 12,000. `connect()` takes
/// its ports from half of the ephemeral range first (about 14,000 here) and
/// gets slow past it, and a socket bound to 127.0.0.1:0 before `connect()`
/// may pick a port still in TIME_WAIT from an earlier run and stall.
pub fn source_for(n: usize, target: &SocketAddr) -> Option<IpAddr> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let block = n / PER_SOURCE;
    (block > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, (block / 250) as u8, 1 + (block % 250) as u8)))
}

/// Connections per source address.
const PER_SOURCE: usize = 12_000;
