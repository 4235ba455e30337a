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
            "ingress-attributes": {
                "data": cv.ingress.as_ref().map(|_| json!({"type": "ingress-attributes", "id": ingress_id(cv)})),
                "links": {"related": format!("/api/v2/configuration-versions/{}/ingress-attributes", cv.id)},
            },
        },
        "links": {
            "self": format!("/api/v2/configuration-versions/{}", cv.id),
            "download": format!("/api/v2/configuration-versions/{}/download", cv.id),
        },
    })
}

/// The ingress attributes' id: the configuration version's, prefixed `ia-`.
fn ingress_id(cv: &ConfigurationVersion) -> String {
    format!("ia-{}", cv.id.as_str().trim_start_matches("cv-"))
}

/// TFE's `ingress-attributes` resource of a configuration version, if it has one.
pub fn render_ingress(cv: &ConfigurationVersion) -> Option<Value> {
    let attributes = cv.ingress.as_ref()?;
    Some(json!({
        "id": ingress_id(cv),
        "type": "ingress-attributes",
        "attributes": attributes,
        "relationships": {"created-by": {"data": null}},
        "links": {"self": format!("/api/v2/configuration-versions/{}/ingress-attributes", cv.id)},
    }))
}
