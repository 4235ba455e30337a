//! Asking the poller to poll now, through RabbitMQ.
//!
//! At most one message per workspace waits in the queue: while one is queued and not
//! yet taken by a poller, more requests (a burst of `poll-vcs`, a flurry of webhooks)
//! publish nothing, since the queued poll will see what they announce. A poller
//! clears the mark when it takes the message, so a request arriving during a poll
//! queues exactly one more. Every request is recorded (`vcs_poll_requested_at`), so
//! the poll that takes a queued message knows it must see what a later request, folded
//! into that message, announced. No database connection is held while publishing.

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Integer, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::workspaces;
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::queue::{PollMessage, PollReason};

use crate::error::ApiError;
use crate::startup::AppState;

/// A queued message not taken within this long is presumed lost (dead-lettered after
/// a database outage, say); a new request queues another.
const QUEUED_AT_MOST_MINUTES: i32 = 5;

#[derive(QueryableByName)]
struct Marked {
    #[diesel(sql_type = Text)]
    id: WorkspaceId,
    /// No message was queued: publish one.
    #[diesel(sql_type = Bool)]
    publish: bool,
    /// The mark this request set (the same for every row of the statement).
    #[diesel(sql_type = Timestamptz)]
    marked_at: chrono::DateTime<chrono::Utc>,
}

/// Records the request on every workspace (so a queued poll knows what it must see)
/// and publishes one confirmed poll message per workspace that has none queued; 503
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
    let (to_publish, marked_at): (Vec<WorkspaceId>, _) = {
        let mut conn = state.pool.get().await?;
        let marked: Vec<Marked> = diesel::sql_query(
            "UPDATE workspaces SET
                 vcs_poll_requested_at = now(),
                 vcs_poll_queued_at = CASE
                     WHEN vcs_poll_queued_at IS NULL
                          OR vcs_poll_queued_at < now() - make_interval(mins => $2)
                     THEN now() ELSE vcs_poll_queued_at END
             WHERE id = ANY($1)
             RETURNING id, vcs_poll_queued_at = now() AS publish, now() AS marked_at",
        )
        .bind::<Array<Text>, _>(
            workspaces
                .iter()
                .map(WorkspaceId::as_str)
                .collect::<Vec<_>>(),
        )
        .bind::<Integer, _>(QUEUED_AT_MOST_MINUTES)
        .load(&mut conn)
        .await?;
        let marked_at = marked.iter().map(|m| m.marked_at).next();
        let ids = marked
            .into_iter()
            .filter(|m| m.publish)
            .map(|m| m.id)
            .collect();
        (ids, marked_at)
    };
    for (published, workspace) in to_publish.iter().enumerate() {
        let sent = state
            .publisher
            .publish(&PollMessage::new(workspace, reason), delivery_id)
            .await;
        if let Err(err) = sent {
            tracing::warn!(error = %err, workspace.id = %workspace, "cannot queue a poll");
            // Nothing is queued for these after all: the next request tries again. Only
            // this request's marks go (a later request may have queued one meanwhile).
            let mut conn = state.pool.get().await?;
            diesel::update(workspaces::table)
                .filter(workspaces::id.eq_any(&to_publish[published..]))
                .filter(workspaces::vcs_poll_queued_at.eq(marked_at))
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
    queue_all_best_effort(state, std::slice::from_ref(workspace), reason).await;
}

/// [`queue_best_effort`] for several workspaces.
pub async fn queue_all_best_effort(
    state: &AppState,
    workspaces: &[WorkspaceId],
    reason: PollReason,
) {
    if !workspaces.is_empty() && queue(state, workspaces, reason, None).await.is_ok() {
        tracing::debug!(
            workspaces = workspaces.len(),
            ?reason,
            "immediate polls queued"
        );
    }
}
