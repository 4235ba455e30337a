//! `terrapod-poller`: watches GitHub and GitLab and records VCS-triggered runs.
//!
//! Work arrives two ways: its own schedule (every workspace about once per
//! `TERRAPOD_VCS__POLL_INTERVAL_SECONDS`, shared among replicas) and "poll workspace X
//! now" messages from RabbitMQ. Every poll holds a PostgreSQL advisory lock on its
//! workspace, so replicas never poll one workspace at once, and runs are recorded by
//! the one transactional function whose unique indexes make a duplicate impossible.

mod archives;
pub mod cache;
pub mod consumer;
pub mod cycle;
pub mod housekeeping;
pub mod metrics;
pub mod poll;
pub mod relay;
pub mod reporter;
pub mod server;
pub mod store;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use secrecy::ExposeSecret;
use terrapod_shared::db;
use terrapod_shared::domain::Provider;
use terrapod_shared::vcs::budget::{BudgetLimits, RequestBudget, WINDOW};
use terrapod_shared::vcs::http::{RetryPolicy, VcsHttp};
use terrapod_shared::vcs::VcsShared;
use terrapod_shared::Settings;
use tokio::sync::{watch, Semaphore};

use metrics::PollerMetrics;
use poll::PollContext;

/// Archive downloads in flight per replica, at most: each streams to temporary files
/// of up to `TERRAPOD_VCS__MAX_ARCHIVE_BYTES` and about as much again repacked.
pub const MAX_DOWNLOADS: usize = 4;

/// Builds the shared context with the production budget window (60 s).
pub fn context(settings: Settings) -> Result<Arc<PollContext>, db::DbSetupError> {
    context_with_window(settings, WINDOW)
}

/// Builds the shared context: database pools, the request budget shared with the
/// other replicas (over `window`; tests shorten it), and the provider client.
pub fn context_with_window(
    settings: Settings,
    window: Duration,
) -> Result<Arc<PollContext>, db::DbSetupError> {
    let metrics = PollerMetrics::new();
    let requests = metrics.provider_requests.clone();
    let observer = Arc::new(move |provider: Provider, status: u16| {
        requests
            .with_label_values(&[provider.as_str(), &status.to_string()])
            .inc();
    });
    let url = settings.database_url.expose_secret();
    let concurrency = settings.poller_concurrency.get();
    // One connection per poll in flight: scheduled polls and message polls each up to
    // the concurrency, plus claims. Budget statements have a pool of their own, so a
    // poll waiting for the budget never waits for its own pool.
    let pool = db::pool(url, "terrapod-poller", 2 * concurrency + 2)?;
    let budget = RequestBudget::new(
        db::pool(url, "terrapod-poller-budget", 4)?,
        BudgetLimits {
            github_per_window: settings.vcs.github_requests_per_minute,
            gitlab_per_window: settings.vcs.gitlab_requests_per_minute,
            window,
        },
        Some(metrics.budget_wait.clone()),
    );
    let events_pool = db::pool(url, "terrapod-poller-events", reporter::CONCURRENCY + 2)?;
    let http = VcsHttp::new(RetryPolicy::default(), Some(observer)).with_budget(Arc::new(budget));
    Ok(Arc::new(PollContext {
        pool,
        vcs: VcsShared::new(http),
        downloads: Semaphore::new(concurrency.min(MAX_DOWNLOADS)),
        readiness: Default::default(),
        settings: Arc::new(settings),
        metrics,
        changes: cache::change_cache(),
        events_pool,
        report_persistence: reporter::GIVE_UP_AFTER,
    }))
}

/// Waits until the database answers and is migrated, logging each failed attempt:
/// `Ok(false)` when `shutdown` came first. A database `terrapod-api migrate` has not
/// prepared is waited for (saying so) when `wait_for_migrate`, else returned at once.
pub async fn wait_for_database(
    ctx: &PollContext,
    shutdown: &mut watch::Receiver<bool>,
    wait_for_migrate: bool,
) -> Result<bool, db::DbSetupError> {
    let mut delays = db::retry_delays().without_max_times().build();
    let url = ctx.settings.database_url.expose_secret().to_owned();
    let mut attempt = 1u32;
    loop {
        let err = tokio::select! {
            connection = db::ready_connection(&ctx.pool, &url) => match connection {
                Ok(_) => return Ok(true),
                Err(err) => err,
            },
            _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        if matches!(err, db::DbSetupError::NotMigrated(_)) && !wait_for_migrate {
            return Err(err);
        }
        err.log_retry(attempt, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
        }
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
    // On shutdown, polls waiting for the provider's budget give up at once (their
    // workspaces are handed back); polls under way finish.
    let stopping = {
        let (ctx, mut shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                if let Some(budget) = ctx.vcs.http.budget() {
                    budget.stop_waiting();
                }
            }
        })
    };
    let mut waiting = shutdown.clone();
    if !matches!(wait_for_database(&ctx, &mut waiting, true).await, Ok(true)) {
        tracing::info!("stopped before PostgreSQL could be reached");
        server_handle.stop(true).await;
        let _ = server_task.await;
        stopping.abort();
        return Ok(());
    }
    // Run events are relayed whether or not VCS polling is on: executors follow them.
    let relay = tokio::spawn(relay::run_relay(ctx.clone(), shutdown.clone()));
    if ctx.settings.vcs.enabled {
        tracing::info!(
            interval_seconds = ctx.settings.vcs.poll_interval.as_secs(),
            concurrency = ctx.settings.poller_concurrency.get(),
            "VCS poller started"
        );
        let schedule = tokio::spawn(cycle::run_schedule(ctx.clone(), shutdown.clone()));
        let consumer = tokio::spawn(consumer::run_consumer(ctx.clone(), shutdown.clone()));
        let housekeeping = tokio::spawn(housekeeping::run_housekeeping(
            ctx.clone(),
            shutdown.clone(),
        ));
        let reporter = tokio::spawn(reporter::run_reporter(ctx.clone(), shutdown.clone()));
        let _ = tokio::join!(schedule, consumer, housekeeping, reporter);
    } else {
        tracing::info!(
            "VCS polling is disabled (TERRAPOD_VCS__ENABLED=false); serving health only"
        );
        let mut shutdown = shutdown.clone();
        let _ = shutdown.wait_for(|stop| *stop).await;
    }
    let _ = relay.await;
    server_handle.stop(true).await;
    let _ = server_task.await;
    stopping.abort();
    if let Some(budget) = ctx.vcs.http.budget() {
        budget.release_all().await;
    }
    tracing::info!("VCS poller stopped");
    Ok(())
}
