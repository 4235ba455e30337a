use serde_json::{json, Value};
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::domain::Role;
use terrapod_shared::vcs::repo_url::{service_provider, web_base};
use terrapod_shared::vcs::RepoUrl;

use crate::jsonapi::{optional_timestamp, relationship, timestamp};

/// TFE's `vcs-repo` object (SPEC section 10); `null` when the workspace is unlinked.
fn vcs_repo(workspace: &Workspace, connection: Option<&VcsConnection>) -> Value {
    let Some(connection) = connection else {
        return Value::Null;
    };
    let Ok(repo) = RepoUrl::parse(connection.provider, &workspace.vcs_repo_url) else {
        return Value::Null;
    };
    let identifier = repo.full_path();
    json!({
        "identifier": identifier,
        "display-identifier": identifier,
        "branch": workspace.vcs_branch,
        "oauth-token-id": connection.id,
        "ingress-submodules": false,
        "tags-regex": workspace.vcs_tags_regex,
        "repository-http-url": format!("{}/{identifier}", web_base(connection.provider, &connection.server_url)),
        "service-provider": service_provider(connection.provider, &connection.server_url),
    })
}

/// What the caller may do with the workspace (TFE's `permissions`): executors read.
fn permissions(role: Role) -> Value {
    let writes = role != Role::Executor;
    json!({
        "can-update": writes,
        "can-destroy": writes,
        "can-queue-run": writes,
        "can-queue-apply": writes,
        "can-queue-destroy": false,
        "can-read-settings": true,
        "can-update-variable": false,
        "can-read-variable": false,
        "can-force-delete": writes,
        "can-lock": false,
        "can-unlock": false,
        "can-force-unlock": false,
        "can-read-state-versions": false,
    })
}

pub fn render(workspace: &Workspace, connection: Option<&VcsConnection>, role: Role) -> Value {
    let repo = vcs_repo(workspace, connection);
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
            "vcs-repo-identifier": repo.get("identifier"),
            "vcs-repo": repo,
            "permissions": permissions(role),
            "actions": {"is-destroyable": role != Role::Executor},
            // TFE attributes not implemented here, at the only values accepted.
            "allow-destroy-plan": true,
            "queue-all-runs": true,
            "global-remote-state": false,
            "structured-run-output-enabled": true,
            "assessments-enabled": false,
            "locked": false,
            "operations": workspace.execution_mode == terrapod_shared::domain::ExecutionMode::Remote,
            "terraform-version": null,
            "description": null,
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
