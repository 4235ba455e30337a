use serde_json::{json, Value};
use terrapod_shared::db::models::Run;

use crate::jsonapi::{relationship, timestamp};

pub fn render(run: &Run) -> Value {
    json!({
        "id": run.id,
        "type": "runs",
        "attributes": {
            "status": run.status,
            "source": run.source,
            "plan-only": run.plan_only,
            "auto-apply": run.auto_apply,
            "message": run.message,
            "trigger-reason": run.trigger_reason,
            "vcs-commit-sha": run.vcs_commit_sha,
            "vcs-branch": run.vcs_branch,
            "vcs-pull-request-number": run.vcs_pull_request_number,
            "created-at": timestamp(run.created_at),
        },
        "relationships": {
            "workspace": relationship("workspaces", Some(run.workspace_id.as_str())),
            "configuration-version": relationship("configuration-versions", Some(run.configuration_version_id.as_str())),
        },
        "links": { "self": format!("/api/v2/runs/{}", run.id) },
    })
}
