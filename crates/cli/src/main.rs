//! `tidings`: the developer command. Parses options and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tidings_cli::main(tidings_cli::Cli::parse())
}
