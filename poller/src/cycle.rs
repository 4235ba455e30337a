//! The schedule: each cycle is one pass over the workspaces that were due when it
//! began. It claims them in batches (so replicas share them), polls a repository's
//! workspaces one after another from one set of provider answers, several
//! repositories at once, and reports.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use terrapod_shared::domain::Provider;
use terrapod_shared::ids::VcsConnectionId;
use tokio::sync::watch;
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
            Ok(
                PollOutcome::Locked
                | PollOutcome::Gone
                | PollOutcome::Superseded
                | PollOutcome::Interrupted,
            ) => {}
            Err(err) => {
                self.errors += 1;
                tracing::warn!(error = %err, "workspace poll failed");
            }
        }
    }

    /// Lag as a poll starts: how late its workspace was claimed, plus how long it
    /// then waited for a slot.
    fn observe_lag(&mut self, workspaces: &[Claimed], waited_seconds: f64) {
        for workspace in workspaces {
            if let Some(provider) = workspace.provider {
                let lag = self.max_lag_seconds.entry(provider).or_default();
                *lag = lag.max(workspace.lag_seconds + waited_seconds);
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
            .ok()
            .flatten(),
        Err(_) => None,
    };
    next_due
        .map(|seconds| Duration::from_secs_f64(seconds.max(0.0)))
        .unwrap_or(tick)
        .clamp(MIN_PAUSE.min(tick), tick)
}

/// Repositories of one connection polled at once in a replica, at most: a connection
/// whose budget is exhausted holds no more of the replica's slots than this.
fn per_connection(concurrency: usize) -> usize {
    (concurrency / 2).max(1)
}

/// One repository's claimed workspaces, waiting for a slot.
struct Group {
    connection: Option<VcsConnectionId>,
    workspaces: Vec<Claimed>,
    claimed: Instant,
}

/// Claimed groups waiting per connection, and how many of each are being polled.
#[derive(Default)]
struct Waiting {
    queues: HashMap<Option<VcsConnectionId>, VecDeque<Group>>,
    polling: HashMap<Option<VcsConnectionId>, usize>,
}

impl Waiting {
    fn push(&mut self, group: Group) {
        self.queues
            .entry(group.connection.clone())
            .or_default()
            .push_back(group);
    }

    /// The oldest waiting group whose connection has room.
    fn next(&mut self, cap: usize) -> Option<Group> {
        let polling = &self.polling;
        let (_, queue) = self
            .queues
            .iter_mut()
            .filter(|(connection, queue)| {
                !queue.is_empty() && polling.get(*connection).copied().unwrap_or(0) < cap
            })
            .min_by_key(|(_, queue)| queue.front().map(|group| group.claimed))?;
        let group = queue.pop_front()?;
        *self.polling.entry(group.connection.clone()).or_default() += 1;
        Some(group)
    }

    fn done(&mut self, connection: &Option<VcsConnectionId>) {
        if let Some(polling) = self.polling.get_mut(connection) {
            *polling = polling.saturating_sub(1);
        }
    }

    /// Connections that already have as many groups polling as allowed, and more
    /// waiting: claiming more of theirs now would only lengthen their queue.
    fn saturated(&self, cap: usize) -> Vec<VcsConnectionId> {
        self.queues
            .iter()
            .filter(|(connection, queue)| {
                !queue.is_empty() && self.polling.get(*connection).copied().unwrap_or(0) >= cap
            })
            .filter_map(|(connection, _)| connection.clone())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.queues.values().all(VecDeque::is_empty)
    }

    fn drain(&mut self) -> Vec<Group> {
        self.queues.drain().flat_map(|(_, queue)| queue).collect()
    }
}

/// One pass: polls every workspace that was due when the cycle began, once, and ends
/// (whatever falls due meanwhile belongs to the next cycle). Repositories of several
/// connections are polled side by side; one connection never takes more than half
/// the slots, so an installation held back by its budget does not hold back others.
pub async fn run_cycle(ctx: &Arc<PollContext>, shutdown: &watch::Receiver<bool>) -> CycleReport {
    let started = Instant::now();
    let mut shutdown = shutdown.clone();
    let mut report = CycleReport::default();
    let concurrency = ctx.settings.poller_concurrency.get();
    let cap = per_connection(concurrency);
    let interval = ctx.settings.vcs.poll_interval.as_secs_f64();
    let cache = Arc::new(CycleCache::default());
    let mut waiting = Waiting::default();
    let mut polls = JoinSet::new();
    // Which connection each poll task is for, so a task that panics frees its slot too.
    let mut connections: HashMap<tokio::task::Id, Option<VcsConnectionId>> = HashMap::new();
    let mut busiest: Option<(f64, Option<VcsConnectionId>)> = None;
    let result: Result<(), PollError> = async {
        let mut conn = ctx.pool.get().await?;
        let as_of = store::database_now(&mut conn).await?;
        let mut claims_left = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Start what may start.
            while polls.len() < concurrency {
                let Some(group) = waiting.next(cap) else {
                    break;
                };
                let lag = group
                    .workspaces
                    .iter()
                    .map(|w| w.lag_seconds)
                    .fold(0.0, f64::max)
                    + group.claimed.elapsed().as_secs_f64();
                if busiest.as_ref().is_none_or(|(most, _)| lag > *most) {
                    busiest = Some((lag, group.connection.clone()));
                }
                report.observe_lag(&group.workspaces, group.claimed.elapsed().as_secs_f64());
                let connection = group.connection.clone();
                let task = polls.spawn(poll_group(ctx.clone(), cache.clone(), group, as_of));
                connections.insert(task.id(), connection);
            }
            // Claim more while a slot is free and nothing waiting can take it.
            if claims_left && polls.len() < concurrency {
                let skip = waiting.saturated(cap);
                let claimed =
                    store::claim_due(&mut conn, as_of, interval, (concurrency * 4) as i64, &skip)
                        .await?;
                if !claimed.is_empty() {
                    let claimed_at = Instant::now();
                    for workspaces in by_repository(claimed) {
                        waiting.push(Group {
                            connection: workspaces[0].connection_id.clone(),
                            workspaces,
                            claimed: claimed_at,
                        });
                    }
                    continue;
                }
                // Nothing more to claim, unless a skipped connection frees up.
                claims_left = !skip.is_empty();
            }
            if polls.is_empty() {
                if waiting.is_empty() && !claims_left {
                    break;
                }
                continue;
            }
            tokio::select! {
                Some(done) = polls.join_next_with_id() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(err) => err.id(),
                    };
                    if let Some(connection) = connections.remove(&id) {
                        waiting.done(&connection);
                    }
                    tally_group(&mut report, done.map(|(_, outcome)| outcome));
                }
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        }
        // Claimed but never started (shutdown): due again at once, for any replica.
        for group in waiting.drain() {
            for workspace in group.workspaces {
                store::release_attempt(&mut conn, &workspace.id).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
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
        let (max_lag, lag_connection) = busiest.unwrap_or_default();
        tracing::info!(
            workspaces_polled = report.polled,
            runs_created = report.runs_created,
            errors = report.errors,
            max_lag_seconds = max_lag,
            max_lag_connection = lag_connection.as_ref().map(VcsConnectionId::as_str),
            duration_ms = started.elapsed().as_millis() as u64,
            "VCS poll cycle"
        );
    }
    report
}

type GroupOutcome = Vec<Result<PollOutcome, PollError>>;

fn tally_group(report: &mut CycleReport, done: Result<GroupOutcome, tokio::task::JoinError>) {
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
    group: Group,
    cycle_started: DateTime<Utc>,
) -> GroupOutcome {
    let trigger = Trigger::Schedule { cycle_started };
    let mut outcomes = Vec::with_capacity(group.workspaces.len());
    for workspace in &group.workspaces {
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
