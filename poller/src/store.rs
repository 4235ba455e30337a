//! The poller's reads and writes of workspaces. Every statement is short; none is
//! held open across a provider call.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Double, Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::db::schema::{runs, vcs_connections, workspaces};
use terrapod_shared::domain::TriggerReason;
use terrapod_shared::ids::WorkspaceId;

/// Advisory-lock namespace of workspace polls (the first key of the two-key form).
const LOCK_NAMESPACE: i32 = 0x7470;
/// The longest error kept in `vcs-last-error`.
const MAX_ERROR_CHARS: usize = 500;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    id: String,
}

/// Takes the workspace's session-level advisory lock if it is free.
pub async fn try_lock(conn: &mut AsyncPgConnection, workspace: &WorkspaceId) -> QueryResult<bool> {
    diesel::sql_query("SELECT pg_try_advisory_lock($1, hashtext($2)) AS locked")
        .bind::<Integer, _>(LOCK_NAMESPACE)
        .bind::<Text, _>(workspace.as_str())
        .get_result::<Locked>(conn)
        .await
        .map(|row| row.locked)
}

pub async fn unlock(conn: &mut AsyncPgConnection, workspace: &WorkspaceId) -> QueryResult<bool> {
    diesel::sql_query("SELECT pg_advisory_unlock($1, hashtext($2)) AS locked")
        .bind::<Integer, _>(LOCK_NAMESPACE)
        .bind::<Text, _>(workspace.as_str())
        .get_result::<Locked>(conn)
        .await
        .map(|row| row.locked)
}

/// Claims up to `limit` linked workspaces with no poll attempt within `interval`,
/// marking the attempt now (`vcs_last_attempt_at` is the same for a whole batch, so
/// the batch stays grouped by repository next interval too). `SKIP LOCKED` lets replicas claim side by side without
/// waiting for, or taking, each other's rows.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    interval_seconds: f64,
    limit: i64,
) -> QueryResult<Vec<WorkspaceId>> {
    let claimed: Vec<Claimed> = diesel::sql_query(
        "UPDATE workspaces SET vcs_last_attempt_at = now()
         WHERE id IN (
             SELECT id FROM workspaces
             WHERE vcs_repo_url <> ''
               AND (vcs_last_attempt_at IS NULL OR vcs_last_attempt_at <= now() - make_interval(secs => $1))
             -- Oldest first; a repository's workspaces together, so one replica's cycle
             -- cache serves them all instead of each replica fetching the same archive.
             ORDER BY vcs_last_attempt_at NULLS FIRST, vcs_connection_id, vcs_repo_path
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind::<Double, _>(interval_seconds)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(claimed
        .into_iter()
        .filter_map(|row| WorkspaceId::parse(&row.id).ok())
        .collect())
}

pub async fn mark_attempt(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<()> {
    diesel::update(workspaces::table.find(workspace))
        .set(workspaces::vcs_last_attempt_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}

/// The workspace and its connection (if it still has one).
pub async fn load(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<Option<(Workspace, Option<VcsConnection>)>> {
    workspaces::table
        .find(workspace)
        .left_join(vcs_connections::table)
        .select((Workspace::as_select(), Option::<VcsConnection>::as_select()))
        .first(conn)
        .await
        .optional()
}

pub async fn record_success(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<()> {
    diesel::update(workspaces::table.find(workspace))
        .set((
            workspaces::vcs_last_polled_at.eq(diesel::dsl::now),
            workspaces::vcs_last_error.eq(None::<String>),
            workspaces::vcs_last_error_at.eq(None::<chrono::DateTime<chrono::Utc>>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn record_error(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    error: &str,
) -> QueryResult<()> {
    let short: String = error.chars().take(MAX_ERROR_CHARS).collect();
    diesel::update(workspaces::table.find(workspace))
        .set((
            workspaces::vcs_last_error.eq(short),
            workspaces::vcs_last_error_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// True when this PR head already has its speculative run, so nothing is downloaded.
pub async fn pull_request_run_exists(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    number: i64,
    sha: &str,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        runs::table
            .filter(runs::workspace_id.eq(workspace))
            .filter(runs::trigger_reason.eq(TriggerReason::PullRequest))
            .filter(runs::vcs_pull_request_number.eq(number))
            .filter(runs::vcs_commit_sha.eq(sha)),
    ))
    .get_result(conn)
    .await
}
