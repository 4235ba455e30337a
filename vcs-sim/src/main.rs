use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use terrapod_vcs_sim::Simulator;

/// A local GitHub REST / GitLab v4 stand-in backed by real git repositories.
/// Steer it through the admin API under /_admin: see "The VCS simulator" and "Run it
/// from the binaries with the simulator" in the repository's README.md.
#[derive(Parser)]
#[command(name = "terrapod-vcs-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Directory for the git repositories (a temporary one when absent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start with a sample world: GitHub App 1 (installation 1) keyed with the
    /// project's published test key (test-support/fixtures/github-app-test-key.pem),
    /// GitLab token `glpat-demo`, and the repositories github `demo/infra` and gitlab
    /// `demo/network` (branch `main`). Connections use this simulator's URL as
    /// `server-url`.
    #[arg(long)]
    seed_demo: bool,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let temp;
    let root = match cli.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let sim = Simulator::start_at(cli.listen, root).await?;
    if cli.seed_demo {
        terrapod_vcs_sim::seed_demo(&sim);
    }
    tracing::info!(url = sim.url(), "terrapod-vcs-sim listening");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sim.stop().await;
    Ok(())
}
