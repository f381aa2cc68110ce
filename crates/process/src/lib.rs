//! Process plumbing every Tidings binary shares: how a bad option ends the
//! program (one line, exit 2, before binding), logs and traces ([`telemetry`]), the
//! SIGTERM/SIGINT future that starts graceful shutdown, the listen backlog, and
//! the HTTP answers every server shares, errors included ([`http`]).

pub mod http;
pub mod options;
pub mod telemetry;

/// Parses the command line; a bad or unknown option prints one line and exits 2
/// before anything binds a port (`--help` and `--version` print as usual).
pub fn parse_args_or_exit<T: clap::Parser>(program: &str) -> T {
    T::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
            e.exit();
        }
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or("invalid options").trim_start_matches("error: ");
        eprintln!("{program}: {first} (see --help)");
        std::process::exit(2);
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Accept queue of the listening sockets: a reconnect storm (a drained
/// gateway's clients arriving at once) must queue, not have its SYNs dropped
/// into a 1 s retransmit; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] (tokio's `bind` uses 1024).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
