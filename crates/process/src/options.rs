//! The options every server binary takes in the same words (SPEC §1): where
//! it listens and how it logs. Flattened into each binary's own clap struct;
//! each binary has its own default address.

use std::net::SocketAddr;

/// `TIDINGS_LISTEN` and `TIDINGS_LOG_FORMAT`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to bind (default: gateway 0.0.0.0:8080, publisher 0.0.0.0:8090,
    /// `tidings dev` 127.0.0.1:8080).
    #[arg(long, env = "TIDINGS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl ServeArgs {
    /// The address to bind: `--listen`, or the binary's `default`.
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or(default)
    }
}
