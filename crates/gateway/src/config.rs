//! Gateway settings: the one place options are read (flags and `TIDINGS_*`
//! variables through clap), turned into a plain [`GatewayConfig`] the rest of the
//! crate and the tests build directly, without touching the process environment.

use std::time::Duration;

use tidings_broker::options::HistoryArgs;

/// Everything the gateway needs to know at run time.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The `server` name in `connected` messages.
    pub instance_id: String,
    /// Where token verification keys come from.
    pub jwt_keys: crate::keys::KeySource,
    /// Least time between two JWKS fetches triggered by unknown `kid`s.
    pub jwks_refresh_interval: Duration,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// `None` = any origin.
    pub allowed_origins: Option<Vec<String>>,
    pub history_size: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_message_bytes: usize,
    /// Client messages per second per connection; bursts of twice that pass.
    pub client_rate: u32,
    pub heartbeat: Duration,
    pub drain: Duration,
    /// Bytes a connection may have queued (events, replies and replays
    /// together) before conflation, drops and finally close 4009.
    pub client_queue_bytes: usize,
    /// How long a workspace stays subscribed on the broker after its last local reader left.
    pub unsubscribe_delay: Duration,
    /// How long the first-message `auth` may take.
    pub auth_timeout: Duration,
    /// Connections joining (registering, reading their first history page,
    /// once authorized) at once; the others wait their turn in arrival order.
    pub joins_in_flight: usize,
    /// How long a connection waits for its turn to join before it is refused
    /// (503 with `Retry-After`, or close 1013 after first-message auth).
    pub join_turn_wait: Duration,
    /// Serve the live dashboard page at `/`.
    pub dashboard: bool,
}

/// Default `TIDINGS_CLIENT_QUEUE_BYTES`: 4 MiB holds a 1,000-event `history`
/// answer of ~1 KiB events plus a burst of live ones (BENCHMARKS.md has the
/// measurement behind it); it bounds what one client that never reads can cost.
pub const DEFAULT_CLIENT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

impl GatewayConfig {
    /// Defaults of SPEC §1 with the given secret; tests adjust fields from here.
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        Self {
            instance_id: default_instance_id(),
            jwt_keys: crate::keys::KeySource::Secret(jwt_secret.into()),
            jwks_refresh_interval: Duration::from_secs(5),
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: None,
            history_size: 10_000,
            max_connections: 100_000,
            max_connections_per_user: 100,
            max_message_bytes: 1_048_576,
            client_rate: 20,
            heartbeat: Duration::from_secs(25),
            drain: Duration::from_secs(30),
            client_queue_bytes: DEFAULT_CLIENT_QUEUE_BYTES,
            unsubscribe_delay: Duration::from_secs(2),
            auth_timeout: Duration::from_secs(5),
            // A storm of reconnects beyond this waits its turn, where before
            // every one of them shared the broker and the CPU until all of them
            // ran out of time together and retried (chaos scenario 6 at
            // 10,000 clients). The wait stays under the client's 10 s
            // handshake timeout, so a waiting client is answered.
            joins_in_flight: 128,
            join_turn_wait: Duration::from_secs(5),
            dashboard: false,
        }
    }
}

/// `<host name>-<pid>`, the default `TIDINGS_INSTANCE_ID`.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{}", std::process::id())
}

/// Splits `a,b , c` into trimmed, non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The gateway's client-facing options, shared by `tidings-gateway` and `tidings dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The `server` name this process reports (default: host name + process id).
    #[arg(long, env = "TIDINGS_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[command(flatten)]
    pub history: HistoryArgs,
    /// HS256 shared secret for client tokens.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key file (RS256/384/512, ES256/384, EdDSA) for client tokens.
    #[arg(long, env = "TIDINGS_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// JWKS endpoint of the identity provider; keys cached, refreshed on an unknown `kid`.
    #[arg(long, env = "TIDINGS_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Least seconds between two JWKS fetches caused by unknown `kid`s.
    #[arg(long, env = "TIDINGS_JWKS_MIN_REFRESH_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub jwks_min_refresh_secs: u64,
    /// Required `iss` claim (unset = not checked).
    #[arg(long, env = "TIDINGS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim (unset = not checked).
    #[arg(long, env = "TIDINGS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Comma-separated `Origin`s allowed to open browser WebSockets (unset = any).
    #[arg(long, env = "TIDINGS_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Connections per gateway process.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Connections per `sub`, per gateway process.
    #[arg(long, env = "TIDINGS_MAX_CONNECTIONS_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_user: u64,
    /// Largest client frame accepted, in bytes.
    #[arg(long, env = "TIDINGS_MAX_MESSAGE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(64..=67_108_864))]
    pub max_message_bytes: u64,
    /// Client messages per second per connection (burst 2x).
    #[arg(long, env = "TIDINGS_CLIENT_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_rate: u32,
    /// Server ping interval in seconds; a connection silent for 2 intervals is closed.
    #[arg(long, env = "TIDINGS_HEARTBEAT_SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,
    /// Graceful shutdown: seconds given to close connections.
    #[arg(long, env = "TIDINGS_DRAIN_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_secs: u64,
    /// Bytes queued per connection (events, replies and replays together)
    /// before conflation, drops and finally close 4009.
    #[arg(long, env = "TIDINGS_CLIENT_QUEUE_BYTES", default_value_t = DEFAULT_CLIENT_QUEUE_BYTES as u64, value_parser = clap::value_parser!(u64).range(4096..=1_073_741_824))]
    pub client_queue_bytes: u64,
    /// Serve the live dashboard page at `/` (`tidings-gateway`: off; `tidings dev`: on).
    #[arg(long, env = "TIDINGS_DASHBOARD", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub dashboard: Option<bool>,
}

impl GatewayArgs {
    /// The one key source the options name: a secret, a PEM file (read now) or
    /// a JWKS URL. `fallback_secret` is used when none is given (`tidings dev`).
    pub fn key_source(&self, fallback_secret: Option<String>) -> Result<crate::keys::KeySource, String> {
        use crate::keys::KeySource;
        let given = [self.jwt_secret.is_some(), self.jwt_public_key_file.is_some(), self.jwks_url.is_some()].iter().filter(|b| **b).count();
        if given > 1 {
            return Err("set only one of TIDINGS_JWT_SECRET, TIDINGS_JWT_PUBLIC_KEY_FILE and TIDINGS_JWKS_URL".into());
        }
        if let Some(path) = &self.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|e| format!("TIDINGS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
            crate::keys::bind_pem(&pem).map_err(|e| format!("TIDINGS_JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
            return Ok(KeySource::PublicKeyPem(pem));
        }
        if let Some(url) = &self.jwks_url {
            return Ok(KeySource::JwksUrl(url.clone()));
        }
        match self.jwt_secret.clone().or(fallback_secret) {
            Some(secret) if !secret.is_empty() => Ok(KeySource::Secret(secret)),
            _ => Err("one of TIDINGS_JWT_SECRET, TIDINGS_JWT_PUBLIC_KEY_FILE or TIDINGS_JWKS_URL is required".into()),
        }
    }

    /// The config these options describe, with the key source already resolved.
    pub fn to_config(&self, jwt_keys: crate::keys::KeySource) -> GatewayConfig {
        GatewayConfig {
            instance_id: self.instance_id.clone().unwrap_or_else(default_instance_id),
            jwt_keys,
            jwks_refresh_interval: Duration::from_secs(self.jwks_min_refresh_secs),
            jwt_issuer: self.jwt_issuer.clone(),
            jwt_audience: self.jwt_audience.clone(),
            allowed_origins: self.allowed_origins.as_deref().map(split_list),
            history_size: self.history.events(),
            max_connections: self.max_connections as usize,
            max_connections_per_user: self.max_connections_per_user as usize,
            max_message_bytes: self.max_message_bytes as usize,
            client_rate: self.client_rate,
            heartbeat: Duration::from_secs(self.heartbeat_secs),
            drain: Duration::from_secs(self.drain_secs),
            client_queue_bytes: self.client_queue_bytes as usize,
            dashboard: self.dashboard.unwrap_or(false),
            ..GatewayConfig::new(String::new())
        }
    }
}
