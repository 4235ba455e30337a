//! Asking the poller to poll now, through RabbitMQ.
//!
//! At most one message per workspace waits in the queue: while one is queued and not
//! yet taken by a poller, more requests (a burst of `poll-vcs`, a flurry of webhooks)
//! publish nothing, since the queued poll will see what they announce. A poller
//! clears the mark when it takes the message, so a request arriving during a poll
//! queues exactly one more. No database connection is held while publishing.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::workspaces;
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::queue::{PollMessage, PollReason};

use crate::error::ApiError;
use crate::startup::AppState;

/// A queued message not taken within this long is presumed lost (a broker that
/// restarted without it); a new request queues another.
const QUEUED_AT_MOST_MINUTES: i64 = 10;

/// Publishes one confirmed poll message per workspace that has none queued yet; 503
/// when the broker cannot take them (the schedule still polls within one interval).
pub async fn queue(
    state: &AppState,
    workspaces: &[WorkspaceId],
    reason: PollReason,
    delivery_id: Option<&str>,
) -> Result<(), ApiError> {
    if workspaces.is_empty() {
        return Ok(());
    }
    let stale = chrono::Utc::now() - chrono::Duration::minutes(QUEUED_AT_MOST_MINUTES);
    let to_publish: Vec<WorkspaceId> = {
        let mut conn = state.pool.get().await?;
        diesel::update(workspaces::table)
            .filter(workspaces::id.eq_any(workspaces))
            .filter(
                workspaces::vcs_poll_queued_at
                    .is_null()
                    .or(workspaces::vcs_poll_queued_at.lt(stale)),
            )
            .set(workspaces::vcs_poll_queued_at.eq(now))
            .returning(workspaces::id)
            .get_results(&mut conn)
            .await?
    };
    for (published, workspace) in to_publish.iter().enumerate() {
        let sent = state
            .publisher
            .publish(&PollMessage::new(workspace, reason), delivery_id)
            .await;
        if let Err(err) = sent {
            tracing::warn!(error = %err, workspace.id = %workspace, "cannot queue a poll");
            // Nothing is queued for these after all: the next request tries again.
            let mut conn = state.pool.get().await?;
            diesel::update(workspaces::table)
                .filter(workspaces::id.eq_any(&to_publish[published..]))
                .set(workspaces::vcs_poll_queued_at.eq(None::<chrono::DateTime<chrono::Utc>>))
                .execute(&mut conn)
                .await?;
            return Err(ApiError::Unavailable(format!(
                "the poll could not be queued ({err}); the schedule will poll within one interval"
            )));
        }
    }
    Ok(())
}

/// Like [`queue`], for changes whose request must succeed anyway: a failure is only
/// logged, and the schedule picks the workspace up.
pub async fn queue_best_effort(state: &AppState, workspace: &WorkspaceId, reason: PollReason) {
    if queue(state, std::slice::from_ref(workspace), reason, None)
        .await
        .is_ok()
    {
        tracing::debug!(workspace.id = %workspace, ?reason, "immediate poll queued");
    }
}
