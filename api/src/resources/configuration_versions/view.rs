use serde_json::{json, Value};
use terrapod_shared::db::models::ConfigurationVersion;

use crate::jsonapi::relationship;

pub fn render(cv: &ConfigurationVersion) -> Value {
    json!({
        "id": cv.id,
        "type": "configuration-versions",
        "attributes": {
            "source": cv.source,
            "status": cv.status,
            "speculative": cv.speculative,
            "vcs-commit-sha": cv.vcs_commit_sha,
            "vcs-branch": cv.vcs_branch,
            "vcs-pull-request-number": cv.vcs_pull_request_number,
            "working-directory": cv.working_directory,
            "size": cv.size,
            "sha256": cv.archive_sha256,
        },
        "relationships": {
            "workspace": relationship("workspaces", Some(cv.workspace_id.as_str())),
        },
        "links": {
            "self": format!("/api/v2/configuration-versions/{}", cv.id),
            "download": format!("/api/v2/configuration-versions/{}/download", cv.id),
        },
    })
}
