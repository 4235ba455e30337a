//! The commit-status reporter (SPEC section 9): follows run events (its queue is bound
//! to `terrapod.run-events`) and puts each run's state on its commit — a GitHub check
//! run, a GitLab commit status.
//!
//! An event only says "run X changed": the state reported is the run's current one,
//! read under a row lock on the run's report (`commit_status_reports`), and sent only
//! if it is newer than the one last reported. So reports of one run never overtake
//! each other, on one replica or many, and a redelivered or late event changes
//! nothing. Provider failures are retried with backoff (a rate limit's reset is
//! waited for) for up to [`GIVE_UP_AFTER`]; a report that finally fails is recorded in
//! the workspace's event log. Reporting never touches the run itself.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use terrapod_shared::db::models::{Run, VcsConnection, Workspace};
use terrapod_shared::db::schema::{
    commit_status_reports, runs, vcs_connections, vcs_events, workspaces,
};
use terrapod_shared::domain::{CommitSha, ConnectionStatus};
use terrapod_shared::ids::RunId;
use terrapod_shared::outbox::RunEvent;
use terrapod_shared::queue::{self, unreachable, QueueError, COMMIT_STATUS_QUEUE};
use terrapod_shared::vcs::status::{self, CommitReport};
use terrapod_shared::vcs::{Priority, ProviderClient, RepoUrl, VcsError, VcsProvider};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::consumer::reconnect_delays;
use crate::poll::PollContext;
use crate::store::short_error;

/// Reports in flight per replica (each holds one connection of the events pool).
pub const CONCURRENCY: u16 = 4;
/// How long a failing report is retried before it is recorded as failed.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// The longest wait between two tries (a rate limit resetting later is waited for in
/// steps of this).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Provider(#[from] VcsError),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("database: {0}")]
    Pool(#[from] terrapod_shared::db::PoolError),
    /// Something only a person can fix (a repository URL that does not parse).
    #[error("{0}")]
    Unreportable(String),
}

impl ReportError {
    /// Worth another try later.
    fn is_transient(&self) -> bool {
        match self {
            ReportError::Provider(err) => err.is_transient(),
            ReportError::Database(_) | ReportError::Pool(_) => true,
            ReportError::Unreportable(_) => false,
        }
    }
}

/// What one attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    /// The run's current state is on its commit now.
    Reported,
    /// A state at least as new was reported before.
    UpToDate,
    /// The run, its workspace or the workspace's (active) connection is gone.
    NothingToReport,
}

pub async fn run_reporter(ctx: Arc<PollContext>, mut shutdown: watch::Receiver<bool>) {
    let mut delays = reconnect_delays();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut consuming = false;
        match consume(&ctx, &mut shutdown, &mut consuming).await {
            Ok(()) => return,
            Err(err) => {
                if consuming {
                    delays = reconnect_delays();
                }
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "commit-status reporter stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn consume(
    ctx: &Arc<PollContext>,
    shutdown: &mut watch::Receiver<bool>,
    consuming: &mut bool,
) -> Result<(), QueueError> {
    let connection = queue::connect(
        ctx.settings.amqp_url.expose_secret(),
        "terrapod-poller-reporter",
    )
    .await?;
    let channel = connection.create_channel().await.map_err(unreachable)?;
    queue::declare_run_events(&channel).await?;
    channel
        .basic_qos(CONCURRENCY, BasicQosOptions::default())
        .await
        .map_err(unreachable)?;
    let mut consumer = channel
        .basic_consume(
            COMMIT_STATUS_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)?;
    *consuming = true;
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
                    in_flight.spawn(async move { handle(&ctx, delivery, shutdown).await });
                }
                Some(Err(err)) => break Err(unreachable(err)),
                None => break Err(QueueError::Unreachable("the consumer was cancelled".into())),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = shutdown.changed() => break Ok(()),
        }
    };
    // Reports waiting to retry give up at shutdown (their events are handed back).
    while in_flight.join_next().await.is_some() {}
    if result.is_ok() {
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = connection.close(200, "shutting down".into()).await;
    }
    result
}

async fn handle(ctx: &PollContext, delivery: Delivery, mut shutdown: watch::Receiver<bool>) {
    let run = serde_json::from_slice::<RunEvent>(&delivery.data)
        .ok()
        .and_then(|event| RunId::parse(&event.run_id).ok());
    let Some(run) = run else {
        tracing::warn!("malformed run event dropped by the commit-status reporter");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let span = tracing::info_span!("commit_status", run.id = %run);
    let finished = report_until_done(ctx, &run, &mut shutdown)
        .instrument(span)
        .await;
    if finished {
        let _ = delivery.ack(BasicAckOptions::default()).await;
    } else {
        let _ = delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }
}

fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(MAX_RETRY_WAIT)
        .without_max_times()
        .build()
}

/// Reports `run` until it is on its commit, is up to date, or has failed for good;
/// false when shutdown came first (the event is handed back).
pub async fn report_until_done(
    ctx: &PollContext,
    run: &RunId,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let started = Instant::now();
    let mut delays = retry_delays();
    loop {
        let err = match report_run(ctx, run).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, "commit status");
                return true;
            }
            Err(ReportError::Provider(VcsError::Interrupted)) => return false,
            Err(err) => err,
        };
        if !err.is_transient() || started.elapsed() >= ctx.report_persistence {
            tracing::warn!(error = %err, "reporting the run on its commit failed");
            ctx.metrics
                .commit_status_reports
                .with_label_values(&["failed"])
                .inc();
            if let Err(db) = record_failure(ctx, run, &err).await {
                tracing::warn!(error = %db, "cannot record the failed report");
            }
            return true;
        }
        let wait = match &err {
            ReportError::Provider(VcsError::RateLimited {
                retry_after: Some(wait),
                ..
            }) => (*wait).min(MAX_RETRY_WAIT),
            _ => delays.next().unwrap_or(MAX_RETRY_WAIT),
        };
        tracing::info!(error = %err, retry_in_ms = wait.as_millis() as u64, "reporting the run on its commit failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return false,
        }
    }
}

/// The run with its workspace and the workspace's connection.
async fn load(
    conn: &mut AsyncPgConnection,
    run: &RunId,
) -> QueryResult<Option<(Run, Workspace, Option<VcsConnection>)>> {
    runs::table
        .find(run)
        .inner_join(workspaces::table.left_join(vcs_connections::table))
        .select((
            Run::as_select(),
            Workspace::as_select(),
            Option::<VcsConnection>::as_select(),
        ))
        .first(conn)
        .await
        .optional()
}

/// One attempt: under the run's report lock, sends the run's current state if it is
/// newer than the one last reported.
pub async fn report_run(ctx: &PollContext, run_id: &RunId) -> Result<Reported, ReportError> {
    let mut conn = ctx.events_pool.get().await?;
    conn.transaction::<_, ReportError, _>(async |conn| {
        if load(conn, run_id).await?.is_none() {
            return Ok(Reported::NothingToReport);
        }
        diesel::insert_into(commit_status_reports::table)
            .values(commit_status_reports::run_id.eq(run_id.as_str()))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        let (reported_sequence, check_run_id): (i64, Option<i64>) = commit_status_reports::table
            .find(run_id.as_str())
            .select((
                commit_status_reports::reported_sequence,
                commit_status_reports::check_run_id,
            ))
            .for_update()
            .first(conn)
            .await?;
        // Read again under the lock: a move committed while we waited is seen.
        let Some((run, workspace, connection)) = load(conn, run_id).await? else {
            return Ok(Reported::NothingToReport);
        };
        if reported_sequence >= run.status_sequence {
            return Ok(Reported::UpToDate);
        }
        let Some(connection) = connection.filter(|c| c.status == ConnectionStatus::Active) else {
            return Ok(Reported::NothingToReport);
        };
        let unreportable = |what: &str| ReportError::Unreportable(what.to_owned());
        let repo = RepoUrl::parse(connection.provider, &workspace.vcs_repo_url)
            .map_err(|_| unreportable("the workspace's repository URL does not parse"))?;
        let sha = CommitSha::parse(&run.vcs_commit_sha)
            .map_err(|_| unreportable("the run's commit SHA does not parse"))?;
        let client = ProviderClient::for_connection(
            &ctx.vcs,
            &connection,
            ctx.settings.encryption.as_ref(),
            Priority::Requested,
        )?;
        let name = format!(
            "terrapod/{}/{}",
            workspace.organization_name, workspace.name
        );
        let details_url = format!(
            "{}/app/{}/{}/runs/{}",
            ctx.settings.external_url.as_str().trim_end_matches('/'),
            workspace.organization_name,
            workspace.name,
            run.id
        );
        let reference = run.vcs_tag.as_deref().unwrap_or(&run.vcs_branch);
        let report = CommitReport {
            repo: &repo,
            sha: &sha,
            reference,
            name: &name,
            run_id: run.id.as_str(),
            details_url: &details_url,
            status: run.status,
            message: run.status_message.as_deref(),
        };
        let new_check_run = status::report(&client, &report, check_run_id).await?;
        diesel::update(commit_status_reports::table.find(run_id.as_str()))
            .set((
                commit_status_reports::reported_sequence.eq(run.status_sequence),
                commit_status_reports::check_run_id.eq(new_check_run.or(check_run_id)),
                commit_status_reports::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        diesel::insert_into(vcs_events::table)
            .values((
                vcs_events::workspace_id.eq(&workspace.id),
                vcs_events::kind.eq("status-reported"),
                vcs_events::commit_sha.eq(&run.vcs_commit_sha),
                vcs_events::pull_request_number.eq(run.vcs_pull_request_number),
                vcs_events::message.eq(status::describe(client.provider(), &name, run.status)),
                vcs_events::run_id.eq(run.id.as_str()),
            ))
            .execute(conn)
            .await?;
        ctx.metrics
            .commit_status_reports
            .with_label_values(&["reported"])
            .inc();
        Ok(Reported::Reported)
    })
    .await
}

/// Records in the workspace's event log that the run could not be reported.
async fn record_failure(
    ctx: &PollContext,
    run_id: &RunId,
    err: &ReportError,
) -> Result<(), ReportError> {
    let mut conn = ctx.events_pool.get().await?;
    let Some((run, workspace, _)) = load(&mut conn, run_id).await? else {
        return Ok(());
    };
    diesel::insert_into(vcs_events::table)
        .values((
            vcs_events::workspace_id.eq(&workspace.id),
            vcs_events::kind.eq("status-failed"),
            vcs_events::commit_sha.eq(&run.vcs_commit_sha),
            vcs_events::pull_request_number.eq(run.vcs_pull_request_number),
            vcs_events::message.eq(short_error(&format!(
                "the run's {} state could not be reported on its commit: {err}",
                run.status
            ))),
            vcs_events::run_id.eq(run.id.as_str()),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}
