//! The schedule: each cycle is one pass over the workspaces that were due when it
//! began. It claims them in batches (so replicas share them), polls a repository's
//! workspaces one after another from one set of provider answers, several
//! repositories at once, and reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use terrapod_shared::domain::Provider;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cache::CycleCache;
use crate::poll::{poll_workspace, PollContext, PollError, PollOutcome, Trigger};
use crate::store::{self, Claimed};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct CycleReport {
    pub polled: usize,
    pub runs_created: usize,
    pub errors: usize,
    /// The most a workspace was claimed after it fell due, by provider: above zero
    /// when the pass took longer than the interval (the provider's budget stretches it).
    pub max_lag_seconds: HashMap<Provider, f64>,
}

impl CycleReport {
    fn tally(&mut self, outcome: Result<PollOutcome, PollError>) {
        match outcome {
            Ok(PollOutcome::Polled(report)) => {
                self.polled += 1;
                self.runs_created += report.runs_created;
                self.errors += usize::from(!report.problems.is_empty());
            }
            Ok(PollOutcome::Locked | PollOutcome::Gone | PollOutcome::Superseded) => {}
            Err(err) => {
                self.errors += 1;
                tracing::warn!(error = %err, "workspace poll failed");
            }
        }
    }

    fn observe_lag(&mut self, claimed: &[Claimed]) {
        for workspace in claimed {
            if let Some(provider) = workspace.provider {
                let lag = self.max_lag_seconds.entry(provider).or_default();
                *lag = lag.max(workspace.lag_seconds);
            }
        }
    }
}

/// How often due workspaces are looked for, at least: every 10 s, or more often when
/// the interval is shorter, so polls spread over the interval instead of bunching up.
pub fn tick(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(10))
}

/// The shortest pause between cycles.
const MIN_PAUSE: Duration = Duration::from_secs(1);

/// How long to wait for the next cycle: until the next workspace falls due, between
/// [`MIN_PAUSE`] and the [`tick`].
async fn pause(ctx: &PollContext) -> Duration {
    let tick = tick(ctx.settings.vcs.poll_interval);
    let interval = ctx.settings.vcs.poll_interval.as_secs_f64();
    let next_due = match ctx.pool.get().await {
        Ok(mut conn) => store::seconds_until_next_due(&mut conn, interval)
            .await
            .ok(),
        Err(_) => None,
    };
    next_due
        .map(|seconds| Duration::from_secs_f64(seconds.max(0.0)))
        .unwrap_or(tick)
        .clamp(MIN_PAUSE.min(tick), tick)
}

/// One pass: polls every workspace that was due when the cycle began, once, and ends
/// (whatever falls due meanwhile belongs to the next cycle).
pub async fn run_cycle(ctx: &Arc<PollContext>, shutdown: &watch::Receiver<bool>) -> CycleReport {
    let started = Instant::now();
    let mut shutdown = shutdown.clone();
    let mut report = CycleReport::default();
    let concurrency = ctx.settings.poller_concurrency.get();
    let interval = ctx.settings.vcs.poll_interval.as_secs_f64();
    let cache = Arc::new(CycleCache::default());
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut polls = JoinSet::new();
    let claims = async {
        let mut conn = ctx.pool.get().await?;
        let as_of = store::database_now(&mut conn).await?;
        loop {
            // Claim only when a repository can start: claimed workspaces do not wait long.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            };
            let claimed =
                store::claim_due(&mut conn, as_of, interval, (concurrency * 4) as i64).await?;
            if claimed.is_empty() {
                return Ok::<(), PollError>(());
            }
            report.observe_lag(&claimed);
            let mut permit = Some(permit);
            for group in by_repository(claimed) {
                let permit = match permit.take() {
                    Some(permit) => permit,
                    None => permits.clone().acquire_owned().await.expect("never closed"),
                };
                polls.spawn(poll_group(ctx.clone(), cache.clone(), group, permit));
                while let Some(done) = polls.try_join_next() {
                    tally_group(&mut report, done);
                }
            }
        }
    };
    if let Err(err) = claims.await {
        tracing::warn!(error = %err, "cannot claim due workspaces");
        report.errors += 1;
    }
    while let Some(done) = polls.join_next().await {
        tally_group(&mut report, done);
    }
    for provider in Provider::ALL {
        let lag = report.max_lag_seconds.get(provider).copied().unwrap_or(0.0);
        ctx.metrics
            .poll_lag
            .with_label_values(&[provider.as_str()])
            .set(lag);
    }
    if report.polled > 0 || report.errors > 0 {
        let max_lag = report.max_lag_seconds.values().copied().fold(0.0, f64::max);
        tracing::info!(
            workspaces_polled = report.polled,
            runs_created = report.runs_created,
            errors = report.errors,
            max_lag_seconds = max_lag,
            duration_ms = started.elapsed().as_millis() as u64,
            "VCS poll cycle"
        );
    }
    report
}

fn tally_group(
    report: &mut CycleReport,
    done: Result<Vec<Result<PollOutcome, PollError>>, tokio::task::JoinError>,
) {
    match done {
        Ok(outcomes) => outcomes.into_iter().for_each(|o| report.tally(o)),
        Err(err) => {
            report.errors += 1;
            tracing::error!(error = %err, "workspace poll task failed");
        }
    }
}

/// Consecutive claims of one repository (claims come ordered by connection and path).
fn by_repository(claimed: Vec<Claimed>) -> Vec<Vec<Claimed>> {
    let mut groups: Vec<Vec<Claimed>> = Vec::new();
    for workspace in claimed {
        match groups.last_mut() {
            Some(group)
                if group[0].connection_id == workspace.connection_id
                    && group[0].repo_path == workspace.repo_path =>
            {
                group.push(workspace)
            }
            _ => groups.push(vec![workspace]),
        }
    }
    groups
}

/// Polls one repository's workspaces one after another: the first asks the provider,
/// the others reuse its answers.
async fn poll_group(
    ctx: Arc<PollContext>,
    cache: Arc<CycleCache>,
    group: Vec<Claimed>,
    _permit: OwnedSemaphorePermit,
) -> Vec<Result<PollOutcome, PollError>> {
    let mut outcomes = Vec::with_capacity(group.len());
    for workspace in group {
        let trigger = Trigger::Schedule {
            claimed_at: workspace.claimed_at,
        };
        outcomes.push(poll_workspace(&ctx, &cache, &workspace.id, trigger).await);
    }
    outcomes
}

/// Runs cycles until `shutdown` turns true, each as the next workspace falls due (at
/// least every [`tick`]); a cycle under way finishes.
pub async fn run_schedule(ctx: Arc<PollContext>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        run_cycle(&ctx, &shutdown).await;
        let pause = pause(&ctx).await;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}
