//! `terrapod-poller`. Its configuration and commands are in place; the polling itself
//! (schedule, queue consumer, providers) is not built yet, and the program says so
//! instead of pretending to poll.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use terrapod_shared::Settings;

/// Terrapod VCS poller: watches GitHub and GitLab and records VCS-triggered runs.
/// Configured through TERRAPOD_* environment variables.
#[derive(Parser, Debug)]
#[command(name = "terrapod-poller", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the worker until SIGTERM (the default).
    Run,
    /// One pass over due workspaces (or the given one), then exit.
    PollOnce {
        /// Poll only this workspace (ws-…).
        #[arg(long)]
        workspace: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = Settings::from_env() {
        eprintln!("terrapod-poller: invalid configuration: {err}");
        return ExitCode::from(2);
    }
    let command = match cli.command.unwrap_or(Command::Run) {
        Command::Run => "run",
        Command::PollOnce { .. } => "poll-once",
    };
    eprintln!("terrapod-poller: `{command}` is not implemented yet: VCS polling has not been built in this version");
    ExitCode::FAILURE
}
