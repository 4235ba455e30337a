//! Runs: listing, and moving them through the lifecycle (executors' transitions and
//! people's cancel, apply and discard). Runs are created only by the poller
//! (`terrapod_shared::runs::create_vcs_run`).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;
use terrapod_shared::db::models::Run;
use terrapod_shared::db::schema::{runs, workspaces};
use terrapod_shared::domain::RunStatus;
use terrapod_shared::ids::{RunId, WorkspaceId};
use terrapod_shared::lifecycle::{Mover, Refusal};
use terrapod_shared::runs::{move_run, MoveError};

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

/// Moves the run through the lifecycle (`terrapod_shared::runs::move_run`).
pub async fn move_to(
    conn: &mut AsyncPgConnection,
    id: &str,
    to: RunStatus,
    mover: Mover,
    message: Option<&str>,
) -> Result<Run, ApiError> {
    let parsed = RunId::parse(id).map_err(|_| ApiError::not_found("run", id))?;
    move_run(conn, &parsed, to, mover, message)
        .await
        .map_err(|err| match err {
            MoveError::NotFound => ApiError::not_found("run", id),
            MoveError::Refused(refusal) => ApiError::Conflict(refusal.to_string()),
            MoveError::Database(err) => err.into(),
        })
}

/// Confirms a run that is waiting for it (`planned` → `confirmed`). Plan-only runs
/// never apply, whatever their status.
pub async fn apply(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    if find(conn, id).await?.plan_only {
        return Err(ApiError::Conflict(Refusal::PlanOnly.to_string()));
    }
    move_to(conn, id, RunStatus::Confirmed, Mover::Person, None).await
}

/// What an executor sends to move a run: `{"status":"planning","message":"…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub status: RunStatus,
    #[serde(default)]
    pub message: Option<String>,
}
