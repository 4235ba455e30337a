//! Polling one workspace: branch head → push run, open PRs/MRs → speculative runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::db::{DbPool, PoolError};
use terrapod_shared::domain::{
    BranchName, CommitSha, ConnectionStatus, Provider, TriggerReason, WorkingDirectory,
};
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::runs::{create_vcs_run, NewVcsRun, RunCreation, VcsTrigger};
use terrapod_shared::vcs::{
    ArchiveLimits, ProviderClient, Repacked, RepoUrl, VcsError, VcsProvider, VcsShared,
};
use terrapod_shared::Settings;
use tracing::Instrument;

use crate::cache::{CycleCache, Shared};
use crate::metrics::PollerMetrics;
use crate::store;

/// Everything a poll needs; one per process.
pub struct PollContext {
    pub pool: DbPool,
    pub settings: Arc<Settings>,
    pub vcs: Arc<VcsShared>,
    pub metrics: PollerMetrics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Claimed by the schedule (its attempt time is already set).
    Schedule,
    /// Asked for by a message (webhook, manual, linked): polled whatever its due time.
    Message,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PollOutcome {
    Polled {
        runs_created: usize,
        error: Option<String>,
    },
    /// Another poll of this workspace is under way.
    Locked,
    /// Deleted, or no longer linked to a repository.
    Gone,
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
    let span = tracing::info_span!("poll", workspace.id = %workspace, ?trigger);
    async {
        let started = Instant::now();
        let mut conn = ctx.pool.get().await?;
        let deadline = Instant::now() + LOCK_WAIT;
        while !store::try_lock(&mut conn, workspace).await? {
            // A scheduled poll just skips; a message waits, since the poll under way
            // may have started before the change the message announces.
            if trigger == Trigger::Schedule || Instant::now() >= deadline {
                return Ok(PollOutcome::Locked);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let outcome = poll_locked(ctx, cache, &mut conn, workspace, trigger).await;
        if !matches!(store::unlock(&mut conn, workspace).await, Ok(true)) {
            // Closing the session is the sure way to release a session lock.
            let _ = terrapod_shared::db::PooledConnection::take(conn);
        }
        ctx.metrics
            .poll_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok(PollOutcome::Polled {
            error: Some(error), ..
        }) = &outcome
        {
            ctx.metrics.poll_errors.inc();
            tracing::warn!(error = %error, "workspace poll recorded an error");
        }
        outcome
    }
    .instrument(span)
    .await
}

async fn poll_locked(
    ctx: &PollContext,
    cache: &CycleCache,
    conn: &mut diesel_async::AsyncPgConnection,
    workspace_id: &WorkspaceId,
    trigger: Trigger,
) -> Result<PollOutcome, PollError> {
    if trigger == Trigger::Message {
        store::mark_attempt(conn, workspace_id).await?;
    }
    let Some((workspace, connection)) = store::load(conn, workspace_id).await? else {
        return Ok(PollOutcome::Gone);
    };
    if workspace.vcs_repo_url.is_empty() {
        return Ok(PollOutcome::Gone);
    }
    let connection = match usable_connection(&workspace, connection) {
        Ok(connection) => connection,
        Err(reason) => {
            store::record_error(conn, workspace_id, &reason).await?;
            return Ok(PollOutcome::Polled {
                runs_created: 0,
                error: Some(reason),
            });
        }
    };
    let mut errors: Vec<String> = Vec::new();
    let runs_created =
        match check_workspace(ctx, cache, conn, &workspace, &connection, &mut errors).await {
            Ok(created) => created,
            Err(Stop::Vcs(error)) => {
                errors.push(error);
                0
            }
            Err(Stop::Database(err)) => return Err(err.into()),
        };
    let error = errors.into_iter().next();
    match &error {
        None => store::record_success(conn, workspace_id).await?,
        Some(error) => store::record_error(conn, workspace_id, error).await?,
    }
    Ok(PollOutcome::Polled {
        runs_created,
        error,
    })
}

fn usable_connection(
    workspace: &Workspace,
    connection: Option<VcsConnection>,
) -> Result<VcsConnection, String> {
    let Some(connection) = connection else {
        return Err(workspace.vcs_last_error.clone().unwrap_or_else(|| {
            "the workspace has no VCS connection; link one to resume VCS runs".to_owned()
        }));
    };
    if connection.status != ConnectionStatus::Active {
        return Err(format!(
            "VCS connection {} is {}; VCS runs are paused",
            connection.id, connection.status
        ));
    }
    Ok(connection)
}

enum Stop {
    /// The poll cannot go on: the reason goes to `vcs-last-error`.
    Vcs(String),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Stop {
    fn from(err: diesel::result::Error) -> Self {
        Stop::Database(err)
    }
}

fn vcs_stop(err: Arc<VcsError>) -> Stop {
    Stop::Vcs(err.to_string())
}

/// The repository being polled, and the cycle's memory of it.
struct Target<'a> {
    cache: &'a CycleCache,
    client: Arc<ProviderClient>,
    connection: String,
    provider: Provider,
    repo: RepoUrl,
    /// The workspace's directory inside the repository.
    directory: WorkingDirectory,
    limits: ArchiveLimits,
}

impl Target<'_> {
    fn key(&self, last: &str) -> (String, String, String) {
        (
            self.connection.clone(),
            self.repo.full_path().to_ascii_lowercase(),
            last.to_owned(),
        )
    }

    async fn default_branch(&self) -> Shared<String> {
        let (client, repo) = (self.client.clone(), self.repo.clone());
        self.cache
            .default_branches
            .get_or_init(self.key(""), || async move {
                client.default_branch(&repo).await.map_err(Arc::new)
            })
            .await
    }

    async fn head(&self, branch: &str) -> Shared<terrapod_shared::vcs::BranchHead> {
        let (client, repo, branch_owned) =
            (self.client.clone(), self.repo.clone(), branch.to_owned());
        self.cache
            .heads
            .get_or_init(self.key(&format!("branch:{branch}")), || async move {
                client
                    .branch_head(&repo, &branch_owned)
                    .await
                    .map_err(Arc::new)
            })
            .await
    }

    async fn pulls(&self, branch: &str) -> Shared<Arc<Vec<terrapod_shared::vcs::PullRequest>>> {
        let (client, repo, branch_owned) =
            (self.client.clone(), self.repo.clone(), branch.to_owned());
        self.cache
            .pulls
            .get_or_init(self.key(&format!("pulls:{branch}")), || async move {
                client
                    .open_pull_requests(&repo, &branch_owned)
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await
    }

    async fn archive(&self, sha: &CommitSha) -> Shared<Arc<Repacked>> {
        let (client, repo, sha_owned, limits) = (
            self.client.clone(),
            self.repo.clone(),
            sha.clone(),
            self.limits,
        );
        self.cache
            .archives
            .get_or_init(self.key(sha.as_str()), || async move {
                client
                    .download_archive(&repo, &sha_owned, limits)
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await
    }
}

async fn client_for(
    cache: &CycleCache,
    vcs: &Arc<VcsShared>,
    connection: &VcsConnection,
    keys: Option<&KeyRing>,
) -> Shared<Arc<ProviderClient>> {
    cache
        .clients
        .get_or_init(connection.id.to_string(), || async {
            ProviderClient::for_connection(vcs, connection, keys)
                .map(Arc::new)
                .map_err(Arc::new)
        })
        .await
}

/// Records one run through the shared transaction; 1 when it is new (counted and
/// logged), 0 when it already existed or the branch moved on. Plan-only runs never
/// auto-apply, whatever the workspace says (`create_vcs_run` enforces it).
async fn record(
    ctx: &PollContext,
    conn: &mut diesel_async::AsyncPgConnection,
    workspace: &Workspace,
    target: &Target<'_>,
    commit_sha: &CommitSha,
    trigger: VcsTrigger,
    repacked: &Repacked,
) -> Result<usize, Stop> {
    let reason = match &trigger {
        VcsTrigger::Push { .. } => TriggerReason::Push,
        VcsTrigger::PullRequest { .. } => TriggerReason::PullRequest,
    };
    let new = NewVcsRun {
        workspace_id: &workspace.id,
        commit_sha,
        trigger,
        working_directory: &target.directory,
        auto_apply: workspace.auto_apply,
        snapshot: &repacked.snapshot,
    };
    match create_vcs_run(conn, new).await? {
        RunCreation::Created { run_id, .. } => {
            ctx.metrics
                .runs_created
                .with_label_values(&[target.provider.as_str(), reason.as_str()])
                .inc();
            tracing::info!(run.id = %run_id, commit = %commit_sha, trigger = %reason, "run created");
            Ok(1)
        }
        RunCreation::AlreadyExists | RunCreation::HeadMoved => Ok(0),
    }
}

/// Returns how many runs were created. A problem with one PR is pushed onto `errors`
/// and the others are still planned; a problem reaching the repository stops the poll.
async fn check_workspace(
    ctx: &PollContext,
    cache: &CycleCache,
    conn: &mut diesel_async::AsyncPgConnection,
    workspace: &Workspace,
    connection: &VcsConnection,
    errors: &mut Vec<String>,
) -> Result<usize, Stop> {
    let client = client_for(
        cache,
        &ctx.vcs,
        connection,
        ctx.settings.encryption.as_ref(),
    )
    .await
    .map_err(vcs_stop)?;
    let repo = RepoUrl::parse(connection.provider, &workspace.vcs_repo_url)
        .map_err(|err| Stop::Vcs(err.to_string()))?;
    let target = Target {
        cache,
        client,
        connection: connection.id.to_string(),
        provider: connection.provider,
        repo,
        directory: WorkingDirectory::parse(&workspace.working_directory).unwrap_or_default(),
        limits: ArchiveLimits {
            max_archive_bytes: ctx.settings.vcs.max_archive_bytes,
            max_unpacked_bytes: ctx.settings.vcs.max_unpacked_bytes,
        },
    };
    let branch = if workspace.vcs_branch.is_empty() {
        target.default_branch().await.map_err(vcs_stop)?
    } else {
        workspace.vcs_branch.clone()
    };
    let branch_name = BranchName::parse(&branch).map_err(|err| Stop::Vcs(err.to_string()))?;
    let mut created = 0;

    let head = target.head(&branch).await.map_err(vcs_stop)?;
    if workspace.vcs_last_commit_sha.as_deref() != Some(head.sha.as_str()) {
        match target.archive(&head.sha).await {
            // The SHA is not advanced: the next poll downloads again; nothing is lost.
            Err(err) => errors.push(err.to_string()),
            Ok(repacked) => {
                let trigger = VcsTrigger::Push {
                    branch: branch_name.clone(),
                    commit_title: head.title.clone(),
                    previous_sha: workspace.vcs_last_commit_sha.clone(),
                };
                created +=
                    record(ctx, conn, workspace, &target, &head.sha, trigger, &repacked).await?;
            }
        }
    }

    let pulls = target.pulls(&branch).await.map_err(vcs_stop)?;
    for pull in pulls.iter() {
        if pull.from_fork {
            // Fork code would run with the workspace's credentials.
            continue;
        }
        if store::pull_request_run_exists(conn, &workspace.id, pull.number, pull.head_sha.as_str())
            .await?
        {
            continue;
        }
        let repacked = match target.archive(&pull.head_sha).await {
            Ok(repacked) => repacked,
            Err(err) => {
                errors.push(format!("PR #{}: {err}", pull.number));
                continue;
            }
        };
        let trigger = VcsTrigger::PullRequest {
            number: pull.number,
            head_ref: pull.head_ref.clone(),
            title: pull.title.clone(),
        };
        created += record(
            ctx,
            conn,
            workspace,
            &target,
            &pull.head_sha,
            trigger,
            &repacked,
        )
        .await?;
    }
    Ok(created)
}
