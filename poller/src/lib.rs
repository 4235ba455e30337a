//! `terrapod-poller`: watches GitHub and GitLab and records VCS-triggered runs.
//!
//! Work arrives two ways: its own schedule (every workspace about once per
//! `TERRAPOD_VCS__POLL_INTERVAL_SECONDS`, shared among replicas) and "poll workspace X
//! now" messages from RabbitMQ. Every poll holds a PostgreSQL advisory lock on its
//! workspace, so replicas never poll one workspace at once, and runs are recorded by
//! the one transactional function whose unique indexes make a duplicate impossible.

pub mod cache;
pub mod consumer;
pub mod cycle;
pub mod metrics;
pub mod poll;
pub mod server;
pub mod store;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use terrapod_shared::db;
use terrapod_shared::domain::Provider;
use terrapod_shared::vcs::http::{RetryPolicy, VcsHttp};
use terrapod_shared::vcs::VcsShared;
use terrapod_shared::Settings;
use tokio::sync::watch;

use metrics::PollerMetrics;
use poll::PollContext;

/// Builds the shared context: database pool (one connection per concurrent poll, plus
/// a few for claiming) and the process-wide provider client.
pub fn context(settings: Settings) -> Result<Arc<PollContext>, db::DbSetupError> {
    let metrics = PollerMetrics::new();
    let requests = metrics.provider_requests.clone();
    let observer = Arc::new(move |provider: Provider, status: u16| {
        requests
            .with_label_values(&[provider.as_str(), &status.to_string()])
            .inc();
    });
    let pool = db::pool(
        settings.database_url.expose_secret(),
        "terrapod-poller",
        settings.poller_concurrency.get() + 4,
    )?;
    Ok(Arc::new(PollContext {
        pool,
        vcs: VcsShared::new(VcsHttp::new(RetryPolicy::default(), Some(observer))),
        settings: Arc::new(settings),
        metrics,
    }))
}

/// Waits until the database answers, logging each failed attempt.
pub async fn wait_for_database(ctx: &PollContext) {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    while let Err(err) = ctx.pool.get().await {
        tracing::warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot reach PostgreSQL yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
        attempt += 1;
    }
}

/// Runs schedule, consumer and health server until `shutdown` turns true; in-flight
/// polls finish first.
pub async fn run(
    ctx: Arc<PollContext>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let server = server::build(ctx.clone(), listener)?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    wait_for_database(&ctx).await;
    if ctx.settings.vcs.enabled {
        tracing::info!(
            interval_seconds = ctx.settings.vcs.poll_interval.as_secs(),
            concurrency = ctx.settings.poller_concurrency.get(),
            "VCS poller started"
        );
        let schedule = tokio::spawn(cycle::run_schedule(ctx.clone(), shutdown.clone()));
        let consumer = tokio::spawn(consumer::run_consumer(ctx.clone(), shutdown.clone()));
        let _ = tokio::join!(schedule, consumer);
    } else {
        tracing::info!(
            "VCS polling is disabled (TERRAPOD_VCS__ENABLED=false); serving health only"
        );
        let mut shutdown = shutdown;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    }
    server_handle.stop(true).await;
    let _ = server_task.await;
    tracing::info!("VCS poller stopped");
    Ok(())
}
