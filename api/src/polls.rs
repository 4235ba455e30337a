//! Asking the poller to poll now, through RabbitMQ.

use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::queue::{PollMessage, PollReason};

use crate::error::ApiError;
use crate::startup::AppState;

/// Publishes one confirmed poll message per workspace; 503 when the broker cannot
/// take them (the schedule still polls within one interval).
pub async fn queue(
    state: &AppState,
    workspaces: &[WorkspaceId],
    reason: PollReason,
) -> Result<(), ApiError> {
    for workspace in workspaces {
        state
            .publisher
            .publish(&PollMessage::new(workspace, reason))
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, workspace.id = %workspace, "cannot queue a poll");
                ApiError::Unavailable(format!(
                    "the poll could not be queued ({err}); the schedule will poll within one interval"
                ))
            })?;
    }
    Ok(())
}

/// Like [`queue`], for changes whose request must succeed anyway: a failure is only
/// logged, and the schedule picks the workspace up.
pub async fn queue_best_effort(state: &AppState, workspace: &WorkspaceId, reason: PollReason) {
    if queue(state, std::slice::from_ref(workspace), reason)
        .await
        .is_ok()
    {
        tracing::debug!(workspace.id = %workspace, ?reason, "immediate poll queued");
    }
}
