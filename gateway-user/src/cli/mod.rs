//! The verbs of `gateway`: arguments, dispatch, tables and JSON output; thin over the rest.
//! The top of the layers: it may import every folder.

mod args;
mod commands;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

pub use args::{Cli, Command};
pub use commands::dispatch;

/// The clap definition of `gateway` (for man pages and shell completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs `gateway` with the process's arguments: logs to standard error, exit code 0 (ok), 1
/// (runtime error) or 2 (bad input).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if crate::is_bad_input(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
