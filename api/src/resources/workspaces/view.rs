use serde_json::{json, Value};
use terrapod_shared::db::models::Workspace;

use crate::jsonapi::{optional_timestamp, relationship, timestamp};

pub fn render(workspace: &Workspace) -> Value {
    json!({
        "id": workspace.id,
        "type": "workspaces",
        "attributes": {
            "name": workspace.name,
            "execution-mode": workspace.execution_mode,
            "auto-apply": workspace.auto_apply,
            "vcs-repo-url": workspace.vcs_repo_url,
            "vcs-branch": workspace.vcs_branch,
            "vcs-working-directory": workspace.working_directory,
            "working-directory": workspace.working_directory,
            "vcs-last-commit-sha": workspace.vcs_last_commit_sha,
            "vcs-last-polled-at": optional_timestamp(workspace.vcs_last_polled_at),
            "vcs-last-error": workspace.vcs_last_error,
            "vcs-last-error-at": optional_timestamp(workspace.vcs_last_error_at),
            "file-triggers-enabled": workspace.file_triggers_enabled,
            "trigger-prefixes": workspace.trigger_prefixes,
            "trigger-patterns": workspace.trigger_patterns,
            "speculative-enabled": workspace.speculative_enabled,
            "vcs-tags-regex": workspace.vcs_tags_regex,
            "created-at": timestamp(workspace.created_at),
            "updated-at": timestamp(workspace.updated_at),
        },
        "relationships": {
            "organization": relationship("organizations", Some(&workspace.organization_name)),
            "vcs-connection": relationship("vcs-connections", workspace.vcs_connection_id.as_ref().map(|id| id.as_str())),
        },
        "links": { "self": format!("/api/v2/workspaces/{}", workspace.id) },
    })
}
