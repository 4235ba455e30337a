//! Runs: listing, cancel and apply. Runs are created only by the poller
//! (`terrapod_shared::runs::create_vcs_run`).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::models::Run;
use terrapod_shared::db::schema::{runs, workspaces};
use terrapod_shared::domain::RunStatus;
use terrapod_shared::ids::{RunId, WorkspaceId};

use crate::error::ApiError;
use crate::jsonapi::Page;

pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    let not_found = || ApiError::not_found("run", id);
    let parsed = RunId::parse(id).map_err(|_| not_found())?;
    runs::table
        .find(&parsed)
        .select(Run::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

/// A workspace's runs, newest first, with the workspace's run count — one round
/// trip on the hot path (the count is kept on the workspace, not counted). The
/// workspace is looked up on its own only when the page is empty.
pub async fn list_for_workspace(
    conn: &mut AsyncPgConnection,
    workspace_id: &str,
    page: Page,
) -> Result<(Vec<Run>, i64), ApiError> {
    let id = WorkspaceId::parse(workspace_id)
        .map_err(|_| ApiError::not_found("workspace", workspace_id))?;
    let rows: Vec<(Run, i64)> = runs::table
        .inner_join(workspaces::table)
        .filter(runs::workspace_id.eq(&id))
        .order((runs::created_at.desc(), runs::id.desc()))
        .limit(page.size)
        .offset(page.offset())
        .select((Run::as_select(), workspaces::run_count))
        .load(conn)
        .await?;
    match rows.as_slice().first() {
        Some(&(_, total)) => Ok((rows.into_iter().map(|(run, _)| run).collect(), total)),
        None => {
            let total = workspaces::table
                .find(&id)
                .select(workspaces::run_count)
                .first(conn)
                .await
                .optional()?
                .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
            Ok((Vec::new(), total))
        }
    }
}

/// Moves the run from `from` to `to` atomically; `None` if it was not in `from`.
async fn transition(
    conn: &mut AsyncPgConnection,
    run: &Run,
    from: RunStatus,
    to: RunStatus,
) -> Result<Option<Run>, ApiError> {
    Ok(diesel::update(runs::table.find(&run.id))
        .filter(runs::status.eq(from))
        .set((runs::status.eq(to), runs::updated_at.eq(diesel::dsl::now)))
        .returning(Run::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Only a pending run can be canceled here; later states belong to the run executor.
pub async fn cancel(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    let run = find(conn, id).await?;
    transition(conn, &run, RunStatus::Pending, RunStatus::Canceled)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "only pending runs can be canceled; this run is {}",
                run.status
            ))
        })
}

/// Confirms a run that is waiting for it (`planned`). Plan-only runs never apply.
pub async fn apply(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    let run = find(conn, id).await?;
    if run.plan_only {
        return Err(ApiError::Conflict(
            "plan-only runs cannot be applied".into(),
        ));
    }
    transition(conn, &run, RunStatus::Planned, RunStatus::ApplyQueued)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "the run is not awaiting confirmation; it is {}",
                run.status
            ))
        })
}
