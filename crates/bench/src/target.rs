//! The server under test: where to connect, how to authenticate, which
//! process to measure. Tidings and every peer accept the same
//! `GET /ws?token=JWT&workspace_id=W` upgrade and send one text message first.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use anyhow::Context;
use serde_json::json;

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
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let claims = json!({ "sub": format!("bench-{n}"), "exp": exp, "workspace_id": workspace });
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )?)
    }
}

/// Connection `n`'s source address: 127.0.0.1 for the first 50,000, then
/// 127.0.0.2 and so on, since one source address has ~64k ephemeral ports.
pub fn source_for(n: usize, target: &SocketAddr) -> Option<IpAddr> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    // Below 50,000 the kernel picks the source: a socket bound to port 0 before
    // connect() gets its port without regard to the destination, which after a
    // previous run (ports in TIME_WAIT) makes connects stall for seconds.
    let block = (n / 50_000) as u8;
    (block > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + block)))
}
