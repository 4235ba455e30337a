//! The commit-status reporter (SPEC section 9): puts each run's state on its commit —
//! a GitHub check run, a GitLab commit status.
//!
//! What must be reported lives in the database: every run creation and status change
//! raises the run's `commit_status_reports.wanted_sequence` in the statement that
//! writes its run event. A report takes a short lease on that row, reads the run's
//! *current* state, talks to the provider outside any transaction, and records the
//! sequence it reported; while it holds the lease nobody else reports the run, and
//! it goes again if the run moved meanwhile. So reports of one run never overtake
//! each other, on one replica or many, and a redelivered or late event changes
//! nothing. Run events (the queue bound to `terrapod.run-events`) only wake the
//! reporter; a sweep every second picks up retries and anything an event missed.
//! A failing provider is retried with backoff (a rate limit's reset is waited for),
//! without holding a queue message, for up to [`GIVE_UP_AFTER`]; a report that
//! finally fails is recorded in the workspace's event log. Reporting never touches
//! the run itself.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
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
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::consumer::keep_running;
use crate::poll::PollContext;
use crate::store::short_error;

/// Reports in flight per replica.
pub const CONCURRENCY: usize = 4;
/// How long a failing report is retried before it is recorded as failed.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long a report holds its run: longer than one attempt may take
/// ([`ATTEMPT_TIMEOUT`]), so a lease never ends under a report still talking to the
/// provider; a replica killed mid-report frees the run after this.
const LEASE_SECONDS: i64 = 180;
/// One attempt (token, lookup, write, with their retries) ends within this.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(100);
/// The least wait after a write whose answer never came.
const UNCLEAR_WRITE_PAUSE: Duration = Duration::from_secs(10);
/// How often the sweep looks for reports that are due (retries, missed events).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a failing report.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// The longest a rate limit's reset is waited for before the next try.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

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
    #[error("the provider did not answer within {}s", ATTEMPT_TIMEOUT.as_secs())]
    TimedOut,
}

impl ReportError {
    /// Worth another try later.
    fn is_transient(&self) -> bool {
        match self {
            ReportError::Provider(err) => err.is_transient(),
            ReportError::Database(_) | ReportError::Pool(_) | ReportError::TimedOut => true,
            ReportError::Unreportable(_) => false,
        }
    }
}

/// What one call of [`report_run`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    /// The run's current state is on its commit now.
    Reported,
    /// Nothing newer to report, or another report holds the run (it reports what is
    /// newer before it lets go).
    NotNeeded,
    /// The run, its workspace or the workspace's active connection is gone: nothing
    /// can be reported, and nothing will be tried again for this state.
    NothingToReport,
    /// The provider failed; tried again later.
    RetryLater,
    /// Given up on this state (recorded in the event log).
    Failed,
}

pub async fn run_reporter(ctx: Arc<PollContext>, shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let sweep = tokio::spawn(run_sweep(ctx.clone(), permits.clone(), shutdown.clone()));
    consume_events(&ctx, &permits, shutdown).await;
    let _ = sweep.await;
}

/// Follows run events (a wake-up per run), reconnecting with backoff.
async fn consume_events(
    ctx: &Arc<PollContext>,
    permits: &Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    keep_running(
        shutdown,
        "commit-status reporter stopped consuming run events; reconnecting (due reports are still swept)",
        |mut shutdown| {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            async move {
                let mut consuming = false;
                let result = consume(&ctx, &permits, &mut shutdown, &mut consuming).await;
                (result, consuming)
            }
        },
    )
    .await;
}

async fn consume(
    ctx: &Arc<PollContext>,
    permits: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
    consuming: &mut bool,
) -> Result<(), QueueError> {
    let connection = queue::connect(
        ctx.settings.amqp_url.expose_secret(),
        "terrapod-poller-reporter",
    )
    .await?;
    let channel = connection.create_channel().await.map_err(unreachable)?;
    queue::declare_commit_status_queue(&channel).await?;
    channel
        .basic_qos(CONCURRENCY as u16, BasicQosOptions::default())
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
                    let (ctx, permits) = (ctx.clone(), permits.clone());
                    in_flight.spawn(async move { handle(&ctx, &permits, delivery).await });
                }
                Some(Err(err)) => break Err(unreachable(err)),
                None => break Err(QueueError::Unreachable("the consumer was cancelled".into())),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = shutdown.changed() => break Ok(()),
        }
    };
    // A lost connection hands its unacked events back; the reports under way finish
    // (each attempt is bounded: aborting one would leave its run leased for minutes).
    while in_flight.join_next().await.is_some() {}
    if result.is_ok() {
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = connection.close(200, "shutting down".into()).await;
    }
    result
}

/// One event: one attempt at its run, then the event is acked (a failure is retried
/// from the database, not by holding the message).
async fn handle(ctx: &PollContext, permits: &Semaphore, delivery: Delivery) {
    let run = serde_json::from_slice::<RunEvent>(&delivery.data)
        .ok()
        .and_then(|event| RunId::parse(&event.run_id).ok());
    let Some(run) = run else {
        tracing::warn!("malformed run event dropped by the commit-status reporter");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    report_and_log(ctx, &run).await;
    let _ = delivery.ack(BasicAckOptions::default()).await;
}

async fn report_and_log(ctx: &PollContext, run: &RunId) {
    let span = tracing::info_span!("commit_status", run.id = %run);
    match report_run(ctx, run).instrument(span.clone()).await {
        Ok(outcome) => span.in_scope(|| tracing::debug!(?outcome, "commit status")),
        // The database is away: the run stays due and is swept when it is back.
        Err(err) => span
            .in_scope(|| tracing::warn!(error = %err, "cannot report the run on its commit yet")),
    }
}

/// Every second, reports what is due: retries whose time has come and runs whose
/// event was missed (the broker was away, or a replica died holding it).
async fn run_sweep(
    ctx: Arc<PollContext>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reports = JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        while reports.try_join_next().is_some() {}
        let due = match due_reports(&ctx, (CONCURRENCY * 8) as i64).await {
            Ok(due) => due,
            Err(err) => {
                tracing::debug!(error = %err, "cannot look for due commit-status reports");
                continue;
            }
        };
        for run in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            reports.spawn(async move {
                report_and_log(&ctx, &run).await;
                drop(permit);
            });
        }
    }
    while reports.join_next().await.is_some() {}
}

async fn due_reports(ctx: &PollContext, limit: i64) -> Result<Vec<RunId>, ReportError> {
    let mut conn = ctx.events_pool.get().await?;
    let ids: Vec<String> = commit_status_reports::table
        .filter(commit_status_reports::wanted_sequence.gt(commit_status_reports::reported_sequence))
        .filter(commit_status_reports::next_attempt_at.le(diesel::dsl::now))
        .filter(
            commit_status_reports::lease_until
                .is_null()
                .or(commit_status_reports::lease_until.lt(diesel::dsl::now)),
        )
        .order(commit_status_reports::next_attempt_at)
        .limit(limit)
        .select(commit_status_reports::run_id)
        .load(&mut conn)
        .await?;
    Ok(ids
        .into_iter()
        .filter_map(|id| RunId::parse(&id).ok())
        .collect())
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

/// The lease taken on a run's report.
#[derive(QueryableByName)]
struct Lease {
    #[diesel(sql_type = Nullable<BigInt>)]
    check_run_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    check_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    repo_url: Option<String>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    first_failure_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    failures: i32,
    /// Names this lease: only its holder may give it back.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    lease_until: DateTime<Utc>,
    /// What was wanted when the lease was taken: a move since then starts afresh.
    #[diesel(sql_type = BigInt)]
    wanted_sequence: i64,
}

/// Takes the run's report if it is due and free.
async fn take_lease(conn: &mut AsyncPgConnection, run: &RunId) -> QueryResult<Option<Lease>> {
    diesel::sql_query(
        "UPDATE commit_status_reports SET lease_until = now() + make_interval(secs => $2) \
         WHERE run_id = $1 AND wanted_sequence > reported_sequence \
           AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
         RETURNING check_run_id, check_name, repo_url, first_failure_at, failures, \
           lease_until, wanted_sequence",
    )
    .bind::<Text, _>(run.as_str())
    .bind::<BigInt, _>(LEASE_SECONDS)
    .get_result(conn)
    .await
    .optional()
}

/// What a finished attempt records, as it gives the lease back.
struct Settled<'a> {
    /// The sequence now on the commit (or given up on).
    reported: Option<i64>,
    check_run_id: Option<i64>,
    check_name: Option<&'a str>,
    repo_url: Option<&'a str>,
    /// A failure to retry: its count, the first failure's time, the wait.
    retry: Option<(i32, Option<DateTime<Utc>>, Duration)>,
}

#[derive(QueryableByName)]
struct Again {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    again: bool,
}

/// Gives the lease back with what the attempt did — only if it is still this
/// attempt's — and tells whether the run is due again at once (it moved meanwhile).
/// A failure's count and backoff apply only to the state that failed: a move since
/// the lease was taken starts afresh.
async fn settle(
    conn: &mut AsyncPgConnection,
    run: &RunId,
    lease: &Lease,
    settled: Settled<'_>,
) -> QueryResult<bool> {
    let (failures, first_failure_at, wait) = settled.retry.unwrap_or((0, None, Duration::ZERO));
    let row: Option<Again> = diesel::sql_query(
        "UPDATE commit_status_reports SET lease_until = NULL, \
           reported_sequence = GREATEST(reported_sequence, COALESCE($2, 0)), \
           check_run_id = COALESCE($3, check_run_id), \
           check_name = COALESCE(check_name, $4), repo_url = COALESCE(repo_url, $5), \
           failures = CASE WHEN wanted_sequence > $10 THEN 0 ELSE $6 END, \
           first_failure_at = CASE WHEN wanted_sequence > $10 THEN NULL ELSE $7 END, \
           next_attempt_at = CASE WHEN wanted_sequence > $10 THEN now() \
             ELSE now() + make_interval(secs => $8) END, \
           updated_at = now() \
         WHERE run_id = $1 AND lease_until = $9 \
         RETURNING wanted_sequence > reported_sequence AND next_attempt_at <= now() AS again",
    )
    .bind::<Text, _>(run.as_str())
    .bind::<Nullable<BigInt>, _>(settled.reported)
    .bind::<Nullable<BigInt>, _>(settled.check_run_id)
    .bind::<Nullable<Text>, _>(settled.check_name)
    .bind::<Nullable<Text>, _>(settled.repo_url)
    .bind::<diesel::sql_types::Integer, _>(failures)
    .bind::<Nullable<diesel::sql_types::Timestamptz>, _>(first_failure_at)
    .bind::<diesel::sql_types::Double, _>(wait.as_secs_f64())
    .bind::<diesel::sql_types::Timestamptz, _>(lease.lease_until)
    .bind::<BigInt, _>(lease.wanted_sequence)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.is_some_and(|row| row.again))
}

async fn record_event(
    conn: &mut AsyncPgConnection,
    run: &Run,
    kind: &str,
    message: &str,
) -> QueryResult<usize> {
    diesel::insert_into(vcs_events::table)
        .values((
            vcs_events::workspace_id.eq(&run.workspace_id),
            vcs_events::kind.eq(kind),
            vcs_events::commit_sha.eq(&run.vcs_commit_sha),
            vcs_events::pull_request_number.eq(run.vcs_pull_request_number),
            vcs_events::message.eq(short_error(message)),
            vcs_events::run_id.eq(run.id.as_str()),
        ))
        .execute(conn)
        .await
}

/// Reports `run` while it is due and this replica holds it: the current state, again
/// if the run moved meanwhile.
pub async fn report_run(ctx: &PollContext, run_id: &RunId) -> Result<Reported, ReportError> {
    let mut conn = ctx.events_pool.get().await?;
    let mut outcome = Reported::NotNeeded;
    loop {
        let Some(lease) = take_lease(&mut conn, run_id).await? else {
            return Ok(outcome);
        };
        let Some((run, workspace, connection)) = load(&mut conn, run_id).await? else {
            return Ok(Reported::NothingToReport); // deleted: its report row went too
        };
        let connection = connection.filter(|c| c.status == ConnectionStatus::Active);
        let Some(connection) = connection else {
            let why = if workspace.vcs_connection_id.is_some() {
                "the workspace's VCS connection is disabled: the run's state was not reported on its commit"
            } else {
                "the workspace is not linked to a VCS connection: the run's state was not reported on its commit"
            };
            record_event(&mut conn, &run, "status-failed", why).await?;
            let settled = Settled {
                reported: Some(run.status_sequence),
                check_run_id: None,
                check_name: None,
                repo_url: None,
                retry: None,
            };
            settle(&mut conn, run_id, &lease, settled).await?;
            return Ok(Reported::NothingToReport);
        };
        // The run's first report fixes its name and repository for the later ones.
        let name = lease.check_name.clone().unwrap_or_else(|| {
            format!(
                "terrapod/{}/{}",
                workspace.organization_name, workspace.name
            )
        });
        let repo_url = lease
            .repo_url
            .clone()
            .unwrap_or_else(|| workspace.vcs_repo_url.clone());
        let attempt = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            send(
                ctx,
                &connection,
                &run,
                &workspace,
                &name,
                &repo_url,
                lease.check_run_id,
            ),
        )
        .await
        .unwrap_or(Err(ReportError::TimedOut));
        match attempt {
            Ok(check_run_id) => {
                record_event(
                    &mut conn,
                    &run,
                    "status-reported",
                    &status::describe(connection.provider, &name, run.status),
                )
                .await?;
                ctx.metrics
                    .commit_status_reports
                    .with_label_values(&["reported"])
                    .inc();
                let settled = Settled {
                    reported: Some(run.status_sequence),
                    check_run_id,
                    check_name: Some(&name),
                    repo_url: Some(&repo_url),
                    retry: None,
                };
                outcome = Reported::Reported;
                if !settle(&mut conn, run_id, &lease, settled).await? {
                    return Ok(outcome);
                }
            }
            Err(ReportError::Provider(VcsError::Interrupted)) => {
                // Shutting down: the lease is given back, the sweep of another replica
                // (or of the next start) reports it.
                let settled = Settled {
                    reported: None,
                    check_run_id: None,
                    check_name: None,
                    repo_url: None,
                    retry: Some((lease.failures, lease.first_failure_at, Duration::ZERO)),
                };
                settle(&mut conn, run_id, &lease, settled).await?;
                return Ok(Reported::RetryLater);
            }
            Err(err) => {
                let first_failure = lease.first_failure_at.unwrap_or_else(Utc::now);
                let failing_for = (Utc::now() - first_failure).to_std().unwrap_or_default();
                if err.is_transient() && failing_for < ctx.report_persistence {
                    let failures = lease.failures + 1;
                    let wait = retry_wait(&err, failures);
                    tracing::info!(error = %err, retry_in_ms = wait.as_millis() as u64, "reporting the run on its commit failed; retrying");
                    let settled = Settled {
                        reported: None,
                        check_run_id: None,
                        check_name: Some(&name),
                        repo_url: Some(&repo_url),
                        retry: Some((failures, Some(first_failure), wait)),
                    };
                    settle(&mut conn, run_id, &lease, settled).await?;
                    return Ok(Reported::RetryLater);
                }
                tracing::warn!(error = %err, "reporting the run on its commit failed for good");
                ctx.metrics
                    .commit_status_reports
                    .with_label_values(&["failed"])
                    .inc();
                record_event(
                    &mut conn,
                    &run,
                    "status-failed",
                    &format!(
                        "the run's {} state could not be reported on its commit: {err}",
                        run.status
                    ),
                )
                .await?;
                let settled = Settled {
                    reported: Some(run.status_sequence),
                    check_run_id: None,
                    check_name: Some(&name),
                    repo_url: Some(&repo_url),
                    retry: None,
                };
                settle(&mut conn, run_id, &lease, settled).await?;
                return Ok(Reported::Failed);
            }
        }
    }
}

/// The wait before the next try: the rate limit's reset when the provider named one,
/// else 250 ms doubling per failure up to a minute.
fn retry_wait(err: &ReportError, failures: i32) -> Duration {
    if let ReportError::Provider(VcsError::RateLimited {
        retry_after: Some(wait),
        ..
    }) = err
    {
        return (*wait).min(MAX_RATE_LIMIT_WAIT);
    }
    let doublings = u32::try_from(failures.clamp(1, 16) - 1).unwrap_or(0);
    let backoff = (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_RETRY_WAIT);
    // A write whose answer never came may still land: let it, before a newer state
    // is sent after it.
    let unclear = matches!(
        err,
        ReportError::TimedOut
            | ReportError::Provider(VcsError::Timeout { .. } | VcsError::Transport { .. })
    );
    if unclear {
        backoff.max(UNCLEAR_WRITE_PAUSE)
    } else {
        backoff
    }
}

/// One report to the provider; the check run's id on GitHub.
async fn send(
    ctx: &PollContext,
    connection: &VcsConnection,
    run: &Run,
    workspace: &Workspace,
    name: &str,
    repo_url: &str,
    check_run_id: Option<i64>,
) -> Result<Option<i64>, ReportError> {
    let unreportable = |what: &str| ReportError::Unreportable(what.to_owned());
    let repo = RepoUrl::parse(connection.provider, repo_url)
        .map_err(|_| unreportable("the workspace's repository URL does not parse"))?;
    let sha = CommitSha::parse(&run.vcs_commit_sha)
        .map_err(|_| unreportable("the run's commit SHA does not parse"))?;
    let client = ProviderClient::for_connection(
        &ctx.vcs,
        connection,
        ctx.settings.encryption.as_ref(),
        Priority::Requested,
    )?;
    debug_assert_eq!(client.provider(), connection.provider);
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
        name,
        run_id: run.id.as_str(),
        details_url: &details_url,
        status: run.status,
    };
    Ok(status::report(&client, &report, check_run_id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_wait_for_a_rate_limits_reset() {
        let transient = ReportError::Provider(VcsError::Status {
            provider: terrapod_shared::domain::Provider::GitHub,
            status: 502,
            message: String::new(),
        });
        assert_eq!(retry_wait(&transient, 1), Duration::from_millis(250));
        assert_eq!(retry_wait(&transient, 3), Duration::from_secs(1));
        assert_eq!(retry_wait(&transient, 40), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(&ReportError::TimedOut, 1), UNCLEAR_WRITE_PAUSE);
        let limited = ReportError::Provider(VcsError::RateLimited {
            provider: terrapod_shared::domain::Provider::GitHub,
            retry_after: Some(Duration::from_secs(300)),
        });
        assert_eq!(retry_wait(&limited, 1), Duration::from_secs(300));
    }
}
