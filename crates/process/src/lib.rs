//! Process plumbing every Tidings binary shares: how a bad option ends the
//! program (one line, exit 2, before binding), logging setup, and the
//! SIGTERM/SIGINT future that starts graceful shutdown.

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

/// Starts logging to stderr as `text` or `json`; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
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
