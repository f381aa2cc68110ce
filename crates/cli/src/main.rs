//! `tidings`: the developer command. Parses options and hands over to the library.

fn main() -> std::process::ExitCode {
    tidings_cli::main(tidings_process::parse_args_or_exit("tidings"))
}
