//! Polling one workspace: branch head → push run, open PRs/MRs → speculative runs.
//!
//! A poll runs under the workspace's advisory lock, on one pooled connection, and
//! never holds a transaction across a provider call. Everything that goes wrong is
//! collected in its [`PollReport`] as a typed [`PollProblem`]; `vcs-last-error` says
//! all of them. Results are recorded only for the settings generation the poll read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use diesel_async::AsyncPgConnection;
use terrapod_shared::archives::StoredArchive;
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::db::{DbPool, PoolError, PooledConnection};
use terrapod_shared::domain::{
    BranchName, CommitSha, ConnectionStatus, Provider, TriggerReason, WorkingDirectory,
};
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::runs::{create_vcs_run, NewVcsRun, RunCreation, VcsTrigger};
use terrapod_shared::vcs::{
    ArchiveLimits, BranchHead, Priority, ProviderClient, PullRequest, RepoUrl, VcsError,
    VcsProvider, VcsShared,
};
use terrapod_shared::Settings;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::archives;
use crate::cache::{CycleCache, Freshness, RepoKey};
use crate::metrics::PollerMetrics;
use crate::store;

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
    /// Claimed by the schedule at `claimed_at` (its attempt time is already set).
    Schedule { claimed_at: DateTime<Utc> },
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

    fn is_scheduled(self) -> bool {
        matches!(self, Trigger::Schedule { .. })
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

/// How long a message-triggered poll waits for a poll already under way.
const LOCK_WAIT: Duration = Duration::from_secs(10);

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
            Trigger::Schedule { claimed_at } => Freshness::from(claimed_at),
        };
        let deadline = Instant::now() + LOCK_WAIT;
        let (loaded, connection) = loop {
            match store::lock_and_load(&mut conn, workspace).await? {
                None => return Ok(PollOutcome::Gone),
                Some((true, loaded, connection)) => break (loaded, connection),
                // A scheduled poll just skips; a message waits, since the poll under
                // way may have started before the change the message announces.
                Some((false, ..)) if trigger.is_scheduled() || Instant::now() >= deadline => {
                    return Ok(PollOutcome::Locked)
                }
                Some((false, ..)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut locked = LockedConnection {
            conn: Some(conn),
            workspace,
            unlocked: false,
        };
        let asked = Asked {
            priority: trigger.priority(),
            freshness,
        };
        let outcome = poll_locked(ctx, cache, &mut locked, loaded, connection, asked).await;
        locked.release().await;
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

    /// Records the poll's result and gives the lock up in one statement; false when
    /// the settings changed meanwhile (nothing written, the lock still held).
    async fn record_and_unlock(
        &mut self,
        generation: i64,
        error: Option<&str>,
    ) -> Result<bool, diesel::result::Error> {
        let workspace = self.workspace;
        self.unlocked =
            store::record_and_unlock(self.connection(), workspace, generation, error).await?;
        Ok(self.unlocked)
    }

    async fn release(mut self) {
        let mut conn = self.conn.take().expect("released once");
        if !self.unlocked && !matches!(store::unlock(&mut conn, self.workspace).await, Ok(true)) {
            let _ = PooledConnection::take(conn);
        }
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
    Superseded,
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Stop {
    fn from(err: diesel::result::Error) -> Self {
        Stop::Database(err)
    }
}

async fn poll_locked(
    ctx: &PollContext,
    cache: &CycleCache,
    locked: &mut LockedConnection<'_>,
    workspace: Workspace,
    connection: Option<VcsConnection>,
    asked: Asked,
) -> Result<PollOutcome, PollError> {
    if workspace.vcs_repo_url.is_empty() {
        return Ok(PollOutcome::Gone);
    }
    let mut report = PollReport::default();
    let result = match usable_connection(&workspace, connection) {
        Ok(connection) => match Target::new(ctx, cache, &workspace, &connection, asked).await {
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
    match result {
        Ok(()) | Err(Stop::Problem) => {}
        Err(Stop::Superseded) => return Ok(PollOutcome::Superseded),
        Err(Stop::Database(err)) => return Err(err.into()),
    }
    let error = report.error_summary();
    let recorded = locked
        .record_and_unlock(workspace.vcs_settings_generation, error.as_deref())
        .await?;
    Ok(if recorded {
        PollOutcome::Polled(report)
    } else {
        PollOutcome::Superseded
    })
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
    ) -> Result<usize, Stop> {
        let reason = match &trigger {
            VcsTrigger::Push { .. } => TriggerReason::Push,
            VcsTrigger::PullRequest { .. } => TriggerReason::PullRequest,
        };
        let new = NewVcsRun {
            workspace_id: &self.workspace.id,
            settings_generation: self.workspace.vcs_settings_generation,
            commit_sha,
            trigger,
            working_directory: &self.directory,
            auto_apply: self.workspace.auto_apply,
            archive,
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

    /// The branch head and the open PRs/MRs. A problem with one PR is reported and the
    /// others are still planned; a problem reaching the repository stops the poll.
    async fn check(
        &self,
        conn: &mut AsyncPgConnection,
        report: &mut PollReport,
    ) -> Result<(), Stop> {
        let stop = |report: &mut PollReport, err: Arc<VcsError>| {
            report.problems.push(PollProblem::Provider(err));
            Stop::Problem
        };
        let branch = if self.workspace.vcs_branch.is_empty() {
            self.default_branch()
                .await
                .map_err(|err| stop(report, err))?
        } else {
            self.workspace.vcs_branch.clone()
        };
        let branch_name = BranchName::parse(&branch).map_err(|err| {
            report.problems.push(PollProblem::Settings(err.to_string()));
            Stop::Problem
        })?;

        let head = self.head(&branch).await.map_err(|err| stop(report, err))?;
        if self.workspace.vcs_last_commit_sha.as_deref() != Some(head.sha.as_str()) {
            match archives::archive_for(self, conn, &head.sha).await? {
                // The SHA is not advanced: the next poll tries again; nothing is lost.
                Err(err) => report.problems.push(PollProblem::Provider(err)),
                Ok(archive) => {
                    let trigger = VcsTrigger::Push {
                        branch: branch_name.clone(),
                        commit_title: head.title.clone(),
                        previous_sha: self.workspace.vcs_last_commit_sha.clone(),
                    };
                    report.runs_created += self.record(conn, &head.sha, trigger, &archive).await?;
                }
            }
        }

        let pulls = self.pulls(&branch).await.map_err(|err| stop(report, err))?;
        for pull in pulls.iter() {
            if pull.from_fork {
                // Fork code would run with the workspace's credentials.
                continue;
            }
            if store::pull_request_run_exists(
                conn,
                &self.workspace.id,
                pull.number,
                pull.head_sha.as_str(),
            )
            .await?
            {
                continue;
            }
            let archive = match archives::archive_for(self, conn, &pull.head_sha).await? {
                Ok(archive) => archive,
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
            report.runs_created += self.record(conn, &pull.head_sha, trigger, &archive).await?;
        }
        Ok(())
    }
}
