//! The `tidings` command: `dev` (gateway + publisher + host metrics in one
//! process on the in-memory broker), `token` (mint a test token), `publish`
//! (one event from the shell) and `revoke` (a token id, on Redis).

pub mod dev;
pub mod publish;
pub mod revoke;
pub mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tidings: live events for platform dashboards.
#[derive(Debug, Parser)]
#[command(name = "tidings", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run gateway, publisher and host metrics in one process, no Redis needed.
    Dev(Box<dev::DevArgs>),
    /// Print an HS256 token signed with TIDINGS_JWT_SECRET.
    Token(token::TokenArgs),
    /// Publish one durable event and print its id.
    Publish(publish::PublishArgs),
    /// Revoke a token id on TIDINGS_REDIS_URL: refused everywhere, live connections closed 4003.
    Revoke(revoke::RevokeArgs),
}

/// Runs a parsed command; errors print one line and exit 1 (2 for bad options).
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Dev(args) => dev::main(*args),
        Command::Token(args) => token::main(args),
        Command::Publish(args) => publish::main(args),
        Command::Revoke(args) => revoke::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings: {e:#}");
            ExitCode::from(if e.is::<UsageError>() { 2 } else { 1 })
        }
    }
}

/// A bad option value found after parsing; exits 2 like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
