//! The schedule: claim the workspaces that are due, poll them with bounded
//! concurrency, report the cycle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::cache::CycleCache;
use crate::poll::{poll_workspace, PollContext, PollOutcome, Trigger};
use crate::store;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub polled: usize,
    pub runs_created: usize,
    pub errors: usize,
}

/// How often due workspaces are looked for: every 10 s, or more often when the
/// interval is shorter, so polls spread over the interval instead of bunching up.
pub fn tick(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(10))
}

/// Polls every workspace that is due now (claimed in batches, so replicas share them).
pub async fn run_cycle(ctx: &Arc<PollContext>, shutdown: &watch::Receiver<bool>) -> CycleReport {
    let started = Instant::now();
    let cache = Arc::new(CycleCache::default());
    let concurrency = ctx.settings.poller_concurrency.get();
    let permits = Arc::new(Semaphore::new(concurrency));
    let interval = ctx.settings.vcs.poll_interval.as_secs_f64();
    let mut report = CycleReport::default();
    let mut infrastructure_errors = 0;
    while !*shutdown.borrow() {
        let claimed = match ctx.pool.get().await {
            Ok(mut conn) => store::claim_due(&mut conn, interval, (concurrency * 4) as i64).await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim due workspaces: database unavailable");
                break;
            }
        };
        let claimed = match claimed {
            Ok(claimed) if claimed.is_empty() => break,
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim due workspaces");
                break;
            }
        };
        let mut polls = JoinSet::new();
        for workspace in claimed {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (ctx, cache) = (ctx.clone(), cache.clone());
            polls.spawn(async move {
                let _permit = permit;
                poll_workspace(&ctx, &cache, &workspace, Trigger::Schedule).await
            });
        }
        while let Some(result) = polls.join_next().await {
            match result {
                Ok(Ok(PollOutcome::Polled {
                    runs_created,
                    error,
                })) => {
                    report.polled += 1;
                    report.runs_created += runs_created;
                    report.errors += usize::from(error.is_some());
                }
                Ok(Ok(PollOutcome::Locked | PollOutcome::Gone)) => {}
                Ok(Err(err)) => {
                    infrastructure_errors += 1;
                    tracing::warn!(error = %err, "workspace poll failed");
                }
                Err(err) => {
                    infrastructure_errors += 1;
                    tracing::error!(error = %err, "workspace poll task failed");
                }
            }
        }
    }
    report.errors += infrastructure_errors;
    if report.polled > 0 || report.errors > 0 {
        tracing::info!(
            workspaces_polled = report.polled,
            runs_created = report.runs_created,
            errors = report.errors,
            duration_ms = started.elapsed().as_millis() as u64,
            "VCS poll cycle"
        );
    }
    report
}

/// Runs cycles every [`tick`] until `shutdown` turns true; a cycle under way finishes.
pub async fn run_schedule(ctx: Arc<PollContext>, mut shutdown: watch::Receiver<bool>) {
    let tick = tick(ctx.settings.vcs.poll_interval);
    loop {
        if *shutdown.borrow() {
            return;
        }
        run_cycle(&ctx, &shutdown).await;
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => {}
        }
    }
}
