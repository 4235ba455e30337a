//! Housekeeping every replica does now and then (each deletion is idempotent):
//! budgets unused for a day, and what is known of commits' archives after 30 days.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::poll::PollContext;
use crate::store;

const EVERY: Duration = Duration::from_secs(3600);
/// Commit archive rows older than this are forgotten.
const COMMIT_ARCHIVE_DAYS: i32 = 30;
/// The event log keeps 30 days (SPEC section 9).
const VCS_EVENT_DAYS: i32 = 30;

pub async fn run_housekeeping(ctx: Arc<PollContext>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Some(budget) = ctx.vcs.http.budget() {
            match budget.purge_stale().await {
                Ok(purged) => tracing::debug!(purged, "stale request budgets purged"),
                Err(err) => tracing::warn!(error = %err, "cannot purge stale request budgets"),
            }
        }
        let purged = match ctx.pool.get().await {
            Ok(mut conn) => store::purge_commit_archives(&mut conn, COMMIT_ARCHIVE_DAYS)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match purged {
            Ok(purged) => tracing::debug!(purged, "old commit archive records purged"),
            Err(err) => tracing::warn!(error = %err, "cannot purge old commit archive records"),
        }
        let purged = match ctx.pool.get().await {
            Ok(mut conn) => store::purge_vcs_events(&mut conn, VCS_EVENT_DAYS)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match purged {
            Ok(purged) => tracing::debug!(purged, "old VCS events purged"),
            Err(err) => tracing::warn!(error = %err, "cannot purge old VCS events"),
        }
    }
}
