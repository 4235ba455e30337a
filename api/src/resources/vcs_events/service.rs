//! A workspace's event log: read here; written by the poller, the run recorder, the
//! commit-status reporter and (webhook deliveries) here.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::models::VcsEvent;
use terrapod_shared::db::schema::{vcs_events, workspaces};
use terrapod_shared::ids::WorkspaceId;

use crate::error::ApiError;
use crate::jsonapi::Page;

/// A page of the workspace's events, newest first, with how many it has.
pub async fn list_for_workspace(
    conn: &mut AsyncPgConnection,
    workspace_id: &str,
    page: Page,
) -> Result<(Vec<VcsEvent>, i64), ApiError> {
    let not_found = || ApiError::not_found("workspace", workspace_id);
    let id = WorkspaceId::parse(workspace_id).map_err(|_| not_found())?;
    let exists: bool = diesel::select(diesel::dsl::exists(workspaces::table.find(&id)))
        .get_result(conn)
        .await?;
    if !exists {
        return Err(not_found());
    }
    let total: i64 = vcs_events::table
        .filter(vcs_events::workspace_id.eq(&id))
        .count()
        .get_result(conn)
        .await?;
    let rows = vcs_events::table
        .filter(vcs_events::workspace_id.eq(&id))
        .order(vcs_events::id.desc())
        .limit(page.size)
        .offset(page.offset())
        .select(VcsEvent::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
}

/// Records that a webhook delivery asked each of `workspaces` to poll (SPEC section 9).
pub async fn record_webhook(
    conn: &mut AsyncPgConnection,
    workspaces: &[WorkspaceId],
    message: &str,
) -> QueryResult<usize> {
    let rows: Vec<_> = workspaces
        .iter()
        .map(|id| {
            (
                vcs_events::workspace_id.eq(id),
                vcs_events::kind.eq("webhook-received"),
                vcs_events::message.eq(message),
            )
        })
        .collect();
    diesel::insert_into(vcs_events::table)
        .values(rows)
        .execute(conn)
        .await
}
