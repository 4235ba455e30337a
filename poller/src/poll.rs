//! Polling one workspace: branch head → push run, open PRs/MRs → speculative runs.
//!
//! A poll runs under the workspace's advisory lock, on one pooled connection, and
//! never holds a transaction across a provider call. Everything that goes wrong is
//! collected in its [`PollReport`] as a typed [`PollProblem`]; `vcs-last-error` says
//! all of them. Results are recorded only for the settings generation the poll read.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use diesel_async::AsyncPgConnection;
use terrapod_shared::archives::StoredArchive;
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::db::{DbPool, PoolError, PooledConnection};
use terrapod_shared::domain::{
    BranchName, CommitSha, ConnectionStatus, Provider, TriggerReason, WorkingDirectory,
};
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::runs::{create_vcs_run, Ingress, NewVcsRun, RunCreation, VcsTrigger};
use terrapod_shared::triggers::TriggerRules;
use terrapod_shared::vcs::{
    ArchiveLimits, BranchHead, ChangedFiles, Priority, ProviderClient, PullRequest, RepoUrl,
    VcsError, VcsProvider, VcsShared,
};
use terrapod_shared::Settings;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::archives;
use crate::cache::{ChangeKey, CycleCache, Freshness, RepoKey};
use crate::metrics::PollerMetrics;
use crate::store::{self, Recorded};

/// Everything a poll needs; one per process.
pub struct PollContext {
    /// Connections that hold advisory locks: one per poll in flight (scheduled and
    /// message polls each have their own share), plus a few for claims.
    pub pool: DbPool,
    pub settings: Arc<Settings>,
    pub vcs: Arc<VcsShared>,
    pub metrics: PollerMetrics,
    /// Archive downloads in flight in this process (each streams to temporary files).
    pub downloads: Semaphore,
    pub readiness: terrapod_shared::health::ReadinessCache,
    /// Changed files of comparisons and pull requests, shared by every workspace.
    pub changes: crate::cache::ChangeCache,
    /// The run-event relay's and the commit-status reporter's connections (a report
    /// holds one while it talks to the provider).
    pub events_pool: DbPool,
    /// How long a failing commit-status report is retried (tests shorten it).
    pub report_persistence: std::time::Duration,
}

impl PollContext {
    pub fn archive_limits(&self) -> ArchiveLimits {
        ArchiveLimits {
            max_archive_bytes: self.settings.vcs.max_archive_bytes,
            max_unpacked_bytes: self.settings.vcs.max_unpacked_bytes,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Claimed by the schedule in the cycle that started at `cycle_started` (its
    /// attempt time is already set): answers of that cycle will do.
    Schedule { cycle_started: DateTime<Utc> },
    /// Asked for by a message (webhook, manual, linked): polled whatever its due time.
    Message,
}

impl Trigger {
    fn priority(self) -> Priority {
        match self {
            Trigger::Schedule { .. } => Priority::Scheduled,
            Trigger::Message => Priority::Requested,
        }
    }
}

#[derive(Debug)]
pub enum PollOutcome {
    Polled(PollReport),
    /// Another poll of this workspace is under way.
    Locked,
    /// Deleted, or no longer linked to a repository.
    Gone,
    /// The VCS settings changed while the poll ran; it recorded nothing, and the next
    /// poll (queued by the change) looks at the new settings.
    Superseded,
    /// The process is shutting down: the poll recorded nothing, and the workspace is
    /// due again at once (another replica takes it).
    Interrupted,
}

/// What one poll did, and every problem it met.
#[derive(Debug, Default)]
pub struct PollReport {
    pub runs_created: usize,
    pub problems: Vec<PollProblem>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollProblem {
    /// The connection is missing, deleted or disabled.
    #[error("{0}")]
    Connection(String),
    /// The stored settings do not parse (written before a validation existed).
    #[error("{0}")]
    Settings(String),
    /// Reaching the repository, or its head commit's archive.
    #[error("{0}")]
    Provider(Arc<VcsError>),
    /// One pull/merge request could not be planned; the others were.
    #[error("PR #{number}: {error}")]
    PullRequest { number: i64, error: Arc<VcsError> },
}

impl PollReport {
    /// What `vcs-last-error` says: every problem, in the order met.
    pub fn error_summary(&self) -> Option<String> {
        if self.problems.is_empty() {
            return None;
        }
        Some(
            self.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("database unavailable: {0}")]
    Pool(#[from] PoolError),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Rounds of one poll at most: another round runs, under the same lock, when a poll
/// was asked for while this one ran, or when the workspace changed under it.
const MAX_ROUNDS: usize = 3;

pub async fn poll_workspace(
    ctx: &PollContext,
    cache: &CycleCache,
    workspace: &WorkspaceId,
    trigger: Trigger,
) -> Result<PollOutcome, PollError> {
    let span = tracing::info_span!("poll", workspace.id = %workspace, ?trigger, repository = tracing::field::Empty);
    async {
        let started = Instant::now();
        let mut conn = ctx.pool.get().await?;
        let freshness = match trigger {
            Trigger::Message => store::take_poll_request(&mut conn, workspace).await?,
            Trigger::Schedule { cycle_started } => Freshness::from(cycle_started),
        };
        // A poll under way sees this request when it records its result, and polls
        // again before giving its lock up: whoever holds the lock covers it.
        // From here the session may hold the lock: if this future is dropped (or the
        // statement fails) before we know, the guard closes the session instead of
        // giving a locked connection back to the pool.
        let mut locked = LockedConnection {
            conn: Some(conn),
            workspace,
            unlocked: false,
        };
        let loaded = match store::lock_and_load(locked.connection(), workspace).await? {
            Some((true, loaded, connection)) => (loaded, connection),
            not_taken => {
                locked.give_back();
                let outcome = match not_taken {
                    None => PollOutcome::Gone,
                    _ => PollOutcome::Locked,
                };
                ctx.metrics.count_not_done(&outcome);
                return Ok(outcome);
            }
        };
        let outcome = poll_rounds(ctx, cache, &mut locked, loaded, trigger, freshness).await;
        locked.release().await;
        if let Ok(outcome) = &outcome {
            ctx.metrics.count_not_done(outcome);
        }
        ctx.metrics
            .poll_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok(PollOutcome::Polled(report)) = &outcome {
            if let Some(error) = report.error_summary() {
                ctx.metrics.poll_errors.inc();
                tracing::warn!(error = %error, "workspace poll recorded an error");
            }
        }
        outcome
    }
    .instrument(span)
    .await
}

/// Polls under the lock, round after round while the workspace is asked for again or
/// changes under the poll (at most [`MAX_ROUNDS`]).
async fn poll_rounds(
    ctx: &PollContext,
    cache: &CycleCache,
    locked: &mut LockedConnection<'_>,
    loaded: (Workspace, Option<VcsConnection>),
    trigger: Trigger,
    mut freshness: Freshness,
) -> Result<PollOutcome, PollError> {
    let workspace_id = locked.workspace;
    let mut runs_created = 0;
    let mut loaded = Some(loaded);
    for round in 1..=MAX_ROUNDS {
        let (workspace, connection) = match loaded.take() {
            Some(loaded) => loaded,
            // Read again under the lock: what the last round read was stale.
            None => match store::load(locked.connection(), workspace_id).await? {
                Some(reloaded) => reloaded,
                None => return Ok(PollOutcome::Gone),
            },
        };
        if workspace.vcs_repo_url.is_empty() {
            return Ok(PollOutcome::Gone);
        }
        let asked = Asked {
            priority: trigger.priority(),
            freshness,
        };
        let (mut report, result) =
            poll_round(ctx, cache, locked, &workspace, connection, asked).await;
        match result {
            Ok(()) | Err(Stop::Problem) => {}
            Err(Stop::Superseded) => {
                runs_created += report.runs_created;
                continue;
            }
            Err(Stop::Interrupted) => {
                store::release_attempt(locked.connection(), workspace_id).await?;
                return Ok(PollOutcome::Interrupted);
            }
            Err(Stop::Database(err)) => return Err(err.into()),
        }
        runs_created += report.runs_created;
        report.runs_created = runs_created;
        let last_round = round == MAX_ROUNDS;
        // On the last round the lock goes whatever was asked meanwhile.
        let answers_from = if last_round {
            DateTime::<Utc>::MAX_UTC
        } else {
            freshness.stamp
        };
        let error = report.error_summary();
        let recorded = locked
            .record_and_unlock(
                workspace.vcs_settings_generation,
                error.as_deref(),
                answers_from,
            )
            .await?;
        // The event log gets an error when it is new, not once per interval.
        if let Some(error) = error.as_deref().map(store::short_error) {
            if recorded != Recorded::Superseded
                && !workspace
                    .vcs_last_error
                    .as_deref()
                    .is_some_and(|last| store::same_error(last, &error))
            {
                store::record_poll_error(locked.connection(), &workspace, &error).await?;
            }
        }
        match recorded {
            Recorded::Unlocked => return Ok(PollOutcome::Polled(report)),
            Recorded::AskedAgain { requested_at, now } => {
                tracing::debug!(round, "a poll was asked for meanwhile; polling again");
                freshness = Freshness {
                    not_before: requested_at,
                    stamp: now,
                };
            }
            Recorded::Superseded => {}
        }
    }
    Ok(PollOutcome::Superseded)
}

/// A pooled connection holding a workspace's session advisory lock. Released by
/// [`LockedConnection::release`]; dropped without it (a cancelled or panicking poll),
/// the connection is taken out of the pool and closed, which ends the session and so
/// the lock at once, instead of going back to the pool still holding it.
struct LockedConnection<'a> {
    conn: Option<PooledConnection<AsyncPgConnection>>,
    workspace: &'a WorkspaceId,
    /// The lock went with the poll's result ([`store::record_and_unlock`]).
    unlocked: bool,
}

impl LockedConnection<'_> {
    fn connection(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_mut().expect("held until released")
    }

    /// Records the poll's result and, unless asked again since `answers_from`, gives
    /// the lock up in the same statement.
    async fn record_and_unlock(
        &mut self,
        generation: i64,
        error: Option<&str>,
        answers_from: DateTime<Utc>,
    ) -> Result<Recorded, diesel::result::Error> {
        let workspace = self.workspace;
        let recorded = store::record_and_unlock(
            self.connection(),
            workspace,
            generation,
            error,
            answers_from,
        )
        .await?;
        self.unlocked = recorded == Recorded::Unlocked;
        Ok(recorded)
    }

    /// Gives the lock up and the connection back to the pool. The connection stays in
    /// the guard until the unlock is confirmed, so a cancelled or failed unlock closes
    /// the session (which releases the lock) rather than pooling a locked connection.
    async fn release(mut self) {
        if !self.unlocked {
            let workspace = self.workspace;
            if !matches!(store::unlock(self.connection(), workspace).await, Ok(true)) {
                return; // dropped: the session is closed
            }
        }
        drop(self.conn.take());
    }

    /// Returns a connection that holds no lock to the pool.
    fn give_back(mut self) {
        drop(self.conn.take());
    }
}

impl Drop for LockedConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = PooledConnection::take(conn);
        }
    }
}

/// Why a poll stopped early.
enum Stop {
    /// The rest of the poll depends on what failed; the problem is in the report.
    Problem,
    /// The workspace's last SHA or settings changed under the poll: read it again.
    Superseded,
    /// The process is shutting down.
    Interrupted,
    Database(diesel::result::Error),
}

impl Stop {
    /// Puts a provider failure in the report (or ends the poll on shutdown).
    fn provider(report: &mut PollReport, err: Arc<VcsError>) -> Stop {
        if matches!(*err, VcsError::Interrupted) {
            return Stop::Interrupted;
        }
        report.problems.push(PollProblem::Provider(err));
        Stop::Problem
    }
}

impl From<diesel::result::Error> for Stop {
    fn from(err: diesel::result::Error) -> Self {
        Stop::Database(err)
    }
}

/// One round: the branch and the pull requests, with what it found.
async fn poll_round(
    ctx: &PollContext,
    cache: &CycleCache,
    locked: &mut LockedConnection<'_>,
    workspace: &Workspace,
    connection: Option<VcsConnection>,
    asked: Asked,
) -> (PollReport, Result<(), Stop>) {
    let mut report = PollReport::default();
    let result = match usable_connection(workspace, connection) {
        Ok(connection) => match Target::new(ctx, cache, workspace, &connection, asked).await {
            Ok(target) => target.check(locked.connection(), &mut report).await,
            Err(problem) => {
                report.problems.push(problem);
                Err(Stop::Problem)
            }
        },
        Err(problem) => {
            report.problems.push(problem);
            Err(Stop::Problem)
        }
    };
    (report, result)
}

fn usable_connection(
    workspace: &Workspace,
    connection: Option<VcsConnection>,
) -> Result<VcsConnection, PollProblem> {
    let Some(connection) = connection else {
        return Err(PollProblem::Connection(
            workspace.vcs_last_error.clone().unwrap_or_else(|| {
                "the workspace has no VCS connection; link one to resume VCS runs".to_owned()
            }),
        ));
    };
    if connection.status != ConnectionStatus::Active {
        return Err(PollProblem::Connection(format!(
            "VCS connection {} is {}; VCS runs are paused",
            connection.id, connection.status
        )));
    }
    Ok(connection)
}

/// What the provider told about a commit's origin (for its ingress attributes).
#[derive(Default)]
struct Origin<'a> {
    sender: Option<&'a str>,
    compare_base: Option<&'a str>,
}

/// Who asked for a poll: its budget priority, and how fresh its answers must be.
#[derive(Clone, Copy)]
struct Asked {
    priority: Priority,
    freshness: Freshness,
}

/// The repository being polled for one workspace, and the cycle's memory of it.
pub(crate) struct Target<'a> {
    pub(crate) ctx: &'a PollContext,
    pub(crate) cache: &'a CycleCache,
    pub(crate) workspace: &'a Workspace,
    pub(crate) client: Arc<ProviderClient>,
    pub(crate) provider: Provider,
    pub(crate) repo: RepoUrl,
    pub(crate) key: RepoKey,
    /// The workspace's directory inside the repository.
    directory: WorkingDirectory,
    freshness: Freshness,
    /// Where people browse the repository (for ingress attributes).
    web_base: String,
}

impl<'a> Target<'a> {
    async fn new(
        ctx: &'a PollContext,
        cache: &'a CycleCache,
        workspace: &'a Workspace,
        connection: &VcsConnection,
        asked: Asked,
    ) -> Result<Target<'a>, PollProblem> {
        let repo = RepoUrl::parse(connection.provider, &workspace.vcs_repo_url)
            .map_err(|err| PollProblem::Settings(err.to_string()))?;
        tracing::Span::current().record("repository", repo.full_path().as_str());
        let client = cache
            .clients
            .get_or_try_init(
                (connection.id.clone(), connection.updated_at),
                Freshness::TIMELESS,
                || async {
                    ProviderClient::for_connection(
                        &ctx.vcs,
                        connection,
                        ctx.settings.encryption.as_ref(),
                        asked.priority,
                    )
                    .map(Arc::new)
                },
            )
            .await
            .map_err(|err| PollProblem::Provider(Arc::new(err)))?;
        Ok(Target {
            ctx,
            cache,
            workspace,
            client,
            provider: connection.provider,
            key: RepoKey {
                connection: connection.id.clone(),
                repo_path: repo.full_path().to_ascii_lowercase(),
            },
            repo,
            directory: WorkingDirectory::parse(&workspace.working_directory).unwrap_or_default(),
            freshness: asked.freshness,
            web_base: terrapod_shared::vcs::repo_url::web_base(
                connection.provider,
                &connection.server_url,
            ),
        })
    }

    /// A span for one provider call of this poll.
    fn call_span(&self, what: &'static str) -> tracing::Span {
        tracing::debug_span!("provider_call", what, repository = %self.repo.full_path())
    }

    async fn default_branch(&self) -> Result<String, Arc<VcsError>> {
        self.cache
            .default_branches
            .get_or_try_init(self.key.clone(), self.freshness, || {
                self.client.default_branch(&self.repo)
            })
            .instrument(self.call_span("default_branch"))
            .await
            .map_err(Arc::new)
    }

    async fn head(&self, branch: &str) -> Result<BranchHead, Arc<VcsError>> {
        self.cache
            .heads
            .get_or_try_init(
                (self.key.clone(), branch.to_owned()),
                self.freshness,
                || self.client.branch_head(&self.repo, branch),
            )
            .instrument(self.call_span("branch_head"))
            .await
            .map_err(Arc::new)
    }

    async fn pulls(&self, branch: &str) -> Result<Arc<Vec<PullRequest>>, Arc<VcsError>> {
        self.cache
            .pulls
            .get_or_try_init(
                (self.key.clone(), branch.to_owned()),
                self.freshness,
                || async {
                    self.client
                        .open_pull_requests(&self.repo, branch)
                        .await
                        .map(Arc::new)
                },
            )
            .instrument(self.call_span("open_pull_requests"))
            .await
            .map_err(Arc::new)
    }

    /// Records one run through the shared transaction; 1 when it is new (counted and
    /// logged), 0 when it already existed. Plan-only runs never auto-apply, whatever
    /// the workspace says (`create_vcs_run` enforces it).
    async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        commit_sha: &CommitSha,
        trigger: VcsTrigger,
        archive: &StoredArchive,
        origin: Origin<'_>,
    ) -> Result<usize, Stop> {
        let reason = match &trigger {
            VcsTrigger::Push { .. } => TriggerReason::Push,
            VcsTrigger::PullRequest { .. } => TriggerReason::PullRequest,
            VcsTrigger::Tag { .. } => TriggerReason::Tag,
        };
        let on_default_branch = match &trigger {
            VcsTrigger::Push { branch, .. } => {
                self.workspace.vcs_branch.is_empty()
                    || self
                        .default_branch()
                        .await
                        .is_ok_and(|default| default == branch.as_str())
            }
            _ => false,
        };
        let identifier = self.repo.full_path();
        let new = NewVcsRun {
            workspace_id: &self.workspace.id,
            settings_generation: self.workspace.vcs_settings_generation,
            commit_sha,
            trigger,
            working_directory: &self.directory,
            archive,
            ingress: Ingress {
                provider: self.provider,
                identifier: &identifier,
                web_base: &self.web_base,
                on_default_branch,
                sender: origin.sender,
                compare_base: origin.compare_base,
            },
        };
        match create_vcs_run(conn, new).await? {
            RunCreation::Created { run_id, .. } => {
                self.ctx
                    .metrics
                    .runs_created
                    .with_label_values(&[self.provider.as_str(), reason.as_str()])
                    .inc();
                tracing::info!(run.id = %run_id, commit = %commit_sha, trigger = %reason, "run created");
                Ok(1)
            }
            RunCreation::AlreadyExists => Ok(0),
            RunCreation::Superseded => Err(Stop::Superseded),
        }
    }

    /// A new head on the tracked branch: a run, unless file triggers say its changes
    /// concern another part of the repository — then the last SHA still advances (in
    /// one compare-and-set with the recorded reason), so nothing is compared twice.
    async fn push(
        &self,
        conn: &mut AsyncPgConnection,
        report: &mut PollReport,
        branch: &BranchName,
        head: &BranchHead,
    ) -> Result<(), Stop> {
        let previous = self.workspace.vcs_last_commit_sha.as_deref();
        if previous == Some(head.sha.as_str()) {
            return Ok(());
        }
        let base = previous.and_then(|sha| CommitSha::parse(sha).ok());
        if let (true, Some(base)) = (self.workspace.file_triggers_enabled, base) {
            let key = ChangeKey::Compare {
                repo: self.key.clone(),
                base: base.clone(),
                head: head.sha.clone(),
            };
            let files = self.changed_files(key, || {
                self.client.changed_files(&self.repo, &base, &head.sha)
            });
            if let Some(reason) = self.skip_reason(files.await) {
                let message = format!(
                    "commit {} on {}: {reason}",
                    head.sha.short(),
                    branch.as_str()
                );
                let advanced = store::advance_without_run(
                    conn,
                    self.workspace,
                    base.as_str(),
                    &head.sha,
                    &message,
                )
                .await?;
                return if advanced {
                    tracing::info!(commit = %head.sha, "no run: {reason}");
                    Ok(())
                } else {
                    Err(Stop::Superseded)
                };
            }
        }
        match archives::archive_for(self, conn, &head.sha).await? {
            // The SHA is not advanced: the next poll tries again; nothing is lost.
            Err(err) => {
                if let Stop::Interrupted = Stop::provider(report, err) {
                    return Err(Stop::Interrupted);
                }
            }
            Ok(archive) => {
                let trigger = VcsTrigger::Push {
                    branch: branch.clone(),
                    commit_title: head.title.clone(),
                    previous_sha: self.workspace.vcs_last_commit_sha.clone(),
                };
                let origin = Origin {
                    sender: head.author.as_deref(),
                    compare_base: self.workspace.vcs_last_commit_sha.as_deref(),
                };
                report.runs_created += self
                    .record(conn, &head.sha, trigger, &archive, origin)
                    .await?;
            }
        }
        Ok(())
    }

    /// Changed files, from this process's cache or fetched once for every poll that
    /// needs them at the same time.
    async fn changed_files<F, Fut>(
        &self,
        key: ChangeKey,
        fetch: F,
    ) -> Result<Arc<ChangedFiles>, Arc<VcsError>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ChangedFiles, VcsError>>,
    {
        if let Some(known) = self.ctx.changes.get(&key) {
            return Ok(known);
        }
        let fetched = self
            .cache
            .changes
            .get_or_try_init(key.clone(), Freshness::TIMELESS, || async {
                fetch().await.map(Arc::new)
            })
            .instrument(self.call_span("changed_files"))
            .await
            .map_err(Arc::new)?;
        self.ctx.changes.insert(key, fetched.clone());
        Ok(fetched)
    }

    /// Why a change gets no run, or `None` for a run. When the changed files cannot
    /// be known (an error, a list the provider cut short), the run is created: a spare
    /// plan is better than a missed change.
    fn skip_reason(&self, files: Result<Arc<ChangedFiles>, Arc<VcsError>>) -> Option<&'static str> {
        let files = match files {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(error = %err, "changed files unknown: the run is created");
                return None;
            }
        };
        let ChangedFiles::Known(paths) = files.as_ref() else {
            return None;
        };
        let rules = TriggerRules::new(
            &self.workspace.working_directory,
            &self.workspace.trigger_prefixes,
            &self.workspace.trigger_patterns,
        )
        .ok()?;
        (!rules.matches_any(paths)).then_some("no changed file matches the triggers")
    }

    /// A tag-driven workspace: the first poll records the tags present as seen (no
    /// runs); afterwards each new tag matching `regex`, or one moved to another
    /// commit, gets one run at its commit. Branch commits are not followed.
    async fn follow_tags(
        &self,
        conn: &mut AsyncPgConnection,
        report: &mut PollReport,
        regex: &str,
    ) -> Result<(), Stop> {
        let regex = terrapod_shared::triggers::parse_tags_regex(regex).map_err(|err| {
            report.problems.push(PollProblem::Settings(err.to_string()));
            Stop::Problem
        })?;
        let tags = self
            .cache
            .tags
            .get_or_try_init(self.key.clone(), self.freshness, || async {
                self.client.tags(&self.repo).await.map(Arc::new)
            })
            .instrument(self.call_span("tags"))
            .await
            .map_err(|err| Stop::provider(report, Arc::new(err)))?;
        if self.workspace.vcs_tags_baselined_at.is_none() {
            return if store::baseline_tags(conn, self.workspace, &tags).await? {
                tracing::info!(
                    tags = tags.len(),
                    "tags recorded as seen: new ones get runs"
                );
                Ok(())
            } else {
                Err(Stop::Superseded)
            };
        }
        let seen = store::seen_tags(conn, &self.workspace.id).await?;
        for tag in tags.iter() {
            if seen.get(&tag.name).map(String::as_str) == Some(tag.sha.as_str()) {
                continue;
            }
            if regex.is_match(&tag.name) {
                match archives::archive_for(self, conn, &tag.sha).await? {
                    Ok(archive) => {
                        let trigger = VcsTrigger::Tag {
                            name: tag.name.clone(),
                        };
                        report.runs_created += self
                            .record(conn, &tag.sha, trigger, &archive, Origin::default())
                            .await?;
                    }
                    // Not marked seen: the next poll tries again.
                    Err(err) => {
                        if let Stop::Interrupted = Stop::provider(report, err) {
                            return Err(Stop::Interrupted);
                        }
                        continue;
                    }
                }
            }
            if !store::mark_tag_seen(conn, self.workspace, &tag.name, tag.sha.as_str()).await? {
                // The settings changed under the poll: what it saw is not recorded.
                return Err(Stop::Superseded);
            }
        }
        Ok(())
    }

    /// The branch head and the open PRs/MRs. A problem with one PR is reported and the
    /// others are still planned; a problem reaching the repository stops the poll.
    async fn check(
        &self,
        conn: &mut AsyncPgConnection,
        report: &mut PollReport,
    ) -> Result<(), Stop> {
        // A tag-driven workspace follows tags whatever its branch setting says.
        if let Some(regex) = &self.workspace.vcs_tags_regex {
            self.follow_tags(conn, report, regex).await?;
        }
        let branch = if self.workspace.vcs_branch.is_empty() {
            self.default_branch()
                .await
                .map_err(|err| Stop::provider(report, err))?
        } else {
            self.workspace.vcs_branch.clone()
        };
        let branch_name = BranchName::parse(&branch).map_err(|err| {
            report.problems.push(PollProblem::Settings(err.to_string()));
            Stop::Problem
        })?;
        // A tag-driven workspace does not follow branch commits; its pull requests
        // still get speculative plans.
        if self.workspace.vcs_tags_regex.is_some() {
            let pulls = self
                .pulls(&branch)
                .await
                .map_err(|err| Stop::provider(report, err))?;
            return self.plan_pull_requests(conn, report, &pulls, &branch).await;
        }

        // The head and the open pull requests are independent: ask for both at once,
        // but when the head fails the poll stops, and the pull request pages still
        // being fetched are dropped rather than spent for nothing.
        let head_request = self.head(&branch);
        let pulls_request = self.pulls(&branch);
        tokio::pin!(head_request, pulls_request);
        let mut pulls = None;
        let head = loop {
            tokio::select! {
                head = &mut head_request => break head,
                listed = &mut pulls_request, if pulls.is_none() => pulls = Some(listed),
            }
        };
        let head = head.map_err(|err| Stop::provider(report, err))?;
        // The PR list keeps arriving while the head's archive is fetched and recorded.
        let listed = async {
            match pulls {
                Some(listed) => listed,
                None => pulls_request.await,
            }
        };
        let (pushed, pulls) = tokio::join!(self.push(conn, report, &branch_name, &head), listed);
        pushed?;
        let pulls = pulls.map_err(|err| Stop::provider(report, err))?;
        self.plan_pull_requests(conn, report, &pulls, branch_name.as_str())
            .await
    }

    /// A speculative plan for each open PR/MR head that deserves one. A problem with
    /// one PR is reported and the others are still planned.
    async fn plan_pull_requests(
        &self,
        conn: &mut AsyncPgConnection,
        report: &mut PollReport,
        pulls: &[PullRequest],
        base_branch: &str,
    ) -> Result<(), Stop> {
        for pull in pulls.iter() {
            let sha = pull.head_sha.as_str();
            let decision = |reason| store::Decision {
                commit_sha: sha,
                pull_request: Some(pull.number),
                reason,
                generation: self.workspace.vcs_settings_generation,
            };
            let short = pull.head_sha.short();
            let skip = if pull.from_fork {
                // Fork code would run with the workspace's credentials.
                Some((decision("fork"), "from a fork, no run".to_owned()))
            } else if !self.workspace.speculative_enabled {
                Some((
                    decision("speculative"),
                    "speculative plans are disabled".to_owned(),
                ))
            } else {
                None
            };
            if let Some((decision, why)) = skip {
                if !store::skip_recorded(conn, &self.workspace.id, &decision).await? {
                    let message = format!("pull request #{} at {short}: {why}", pull.number);
                    store::record_skip(conn, &self.workspace.id, &decision, &message).await?;
                }
                continue;
            }
            if store::pull_request_run_exists(conn, &self.workspace.id, pull.number, sha).await? {
                continue;
            }
            if self.workspace.file_triggers_enabled {
                let decision = decision("files");
                if store::skip_recorded(conn, &self.workspace.id, &decision).await? {
                    continue;
                }
                let key = ChangeKey::PullRequest {
                    repo: self.key.clone(),
                    number: pull.number,
                    head: pull.head_sha.clone(),
                };
                let files = self.changed_files(key, || {
                    self.client.pull_request_files(&self.repo, pull.number)
                });
                if let Some(reason) = self.skip_reason(files.await) {
                    let message = format!("pull request #{} at {short}: {reason}", pull.number);
                    store::record_skip(conn, &self.workspace.id, &decision, &message).await?;
                    continue;
                }
            }
            let archive = match archives::archive_for(self, conn, &pull.head_sha).await? {
                Ok(archive) => archive,
                Err(error) if matches!(*error, VcsError::Interrupted) => {
                    return Err(Stop::Interrupted)
                }
                Err(error) => {
                    report.problems.push(PollProblem::PullRequest {
                        number: pull.number,
                        error,
                    });
                    continue;
                }
            };
            let trigger = VcsTrigger::PullRequest {
                number: pull.number,
                head_ref: pull.head_ref.clone(),
                title: pull.title.clone(),
            };
            let origin = Origin {
                sender: pull.author.as_deref(),
                compare_base: Some(base_branch),
            };
            report.runs_created += self
                .record(conn, &pull.head_sha, trigger, &archive, origin)
                .await?;
        }
        Ok(())
    }
}
