use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use terrapod_poller::cache::CycleCache;
use terrapod_poller::cycle;
use terrapod_poller::poll::{poll_workspace, PollOutcome, Trigger};
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::{telemetry, Settings};
use tokio::sync::watch;

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
    /// Run the worker until SIGTERM (the default): finishes in-flight polls, then exits 0.
    Run,
    /// One pass over the workspaces that are due (or just the given one), then exit.
    PollOnce {
        /// Poll only this workspace (ws-…), whether due or not.
        #[arg(long)]
        workspace: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("terrapod-poller: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format, &settings.log_filter);
    let listen = settings.poller_listen;
    let ctx = match terrapod_poller::context(settings) {
        Ok(ctx) => ctx,
        Err(err) => {
            eprintln!("terrapod-poller: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let listener = match TcpListener::bind(listen) {
                Ok(listener) => listener,
                Err(err) => {
                    eprintln!("terrapod-poller: cannot listen on {listen}: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let (stop, shutdown) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down: finishing in-flight polls");
                let _ = stop.send(true);
            });
            match terrapod_poller::run(ctx, listener, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("terrapod-poller: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::PollOnce { workspace } => poll_once(ctx, workspace).await,
    }
}

async fn poll_once(
    ctx: Arc<terrapod_poller::poll::PollContext>,
    workspace: Option<String>,
) -> ExitCode {
    let (stop, mut shutdown) = watch::channel(false);
    let stopping = ctx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(true);
        if let Some(budget) = stopping.vcs.http.budget() {
            budget.stop_waiting();
        }
    });
    match terrapod_poller::wait_for_database(&ctx, &mut shutdown, false).await {
        Ok(true) => {}
        Ok(false) => return ExitCode::FAILURE,
        Err(err) => {
            eprintln!("terrapod-poller: {err}");
            return ExitCode::FAILURE;
        }
    }
    let code = poll_once_with(&ctx, workspace, &shutdown).await;
    // Slots whose background release has not run yet are given back before exit.
    if let Some(budget) = ctx.vcs.http.budget() {
        budget.release_all().await;
    }
    code
}

async fn poll_once_with(
    ctx: &Arc<terrapod_poller::poll::PollContext>,
    workspace: Option<String>,
    shutdown: &watch::Receiver<bool>,
) -> ExitCode {
    match workspace {
        None => {
            let report = cycle::run_cycle(ctx, shutdown).await;
            println!(
                "polled {} workspaces, created {} runs, {} errors",
                report.polled, report.runs_created, report.errors
            );
            ExitCode::SUCCESS
        }
        Some(raw) => {
            let Ok(id) = WorkspaceId::parse(&raw) else {
                eprintln!("terrapod-poller: `{raw}` is not a workspace id (ws-…)");
                return ExitCode::from(2);
            };
            match poll_workspace(ctx, &CycleCache::default(), &id, Trigger::Message).await {
                Ok(PollOutcome::Polled(report)) => {
                    println!("created {} runs", report.runs_created);
                    match report.error_summary() {
                        Some(error) => {
                            eprintln!("terrapod-poller: {error}");
                            ExitCode::FAILURE
                        }
                        None => ExitCode::SUCCESS,
                    }
                }
                Ok(PollOutcome::Interrupted) => {
                    eprintln!("terrapod-poller: interrupted by a signal; nothing was recorded");
                    ExitCode::FAILURE
                }
                Ok(PollOutcome::Superseded) => {
                    eprintln!("terrapod-poller: the workspace's VCS settings changed during the poll; nothing was recorded");
                    ExitCode::FAILURE
                }
                Ok(PollOutcome::Locked) => {
                    eprintln!("terrapod-poller: another poll of {id} is under way");
                    ExitCode::FAILURE
                }
                Ok(PollOutcome::Gone) => {
                    eprintln!("terrapod-poller: workspace {id} does not exist or is not linked to a repository");
                    ExitCode::FAILURE
                }
                Err(err) => {
                    eprintln!("terrapod-poller: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
