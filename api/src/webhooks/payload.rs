//! What a push or PR/MR delivery says, and which workspaces it concerns. A webhook
//! only makes a poll happen sooner; the poll decides what, if anything, changed.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;
use terrapod_shared::db::schema::{vcs_connections, workspaces};
use terrapod_shared::domain::{ConnectionStatus, Provider};
use terrapod_shared::ids::WorkspaceId;

/// What a push or PR/MR delivery tells us.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `owner/repo` or `group/sub/project`.
    pub repository: String,
    /// GitHub: the App installation that sent it, when the payload says.
    pub installation_id: Option<i64>,
    /// False for changes that cannot bring a new commit (a GitLab MR edit without one).
    pub may_have_new_commit: bool,
}

#[derive(Deserialize)]
struct GitHubPayload {
    repository: Option<GitHubRepository>,
    installation: Option<GitHubInstallation>,
}

#[derive(Deserialize)]
struct GitHubRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct GitHubInstallation {
    id: i64,
}

#[derive(Deserialize)]
struct GitLabPayload {
    project: Option<GitLabProject>,
    object_attributes: Option<GitLabAttributes>,
}

#[derive(Deserialize)]
struct GitLabProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GitLabAttributes {
    action: Option<String>,
    oldrev: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the payload names no repository")]
    NoRepository,
}

pub fn parse_github(body: &[u8]) -> Result<Delivery, PayloadError> {
    let payload: GitHubPayload =
        serde_json::from_slice(body).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let repository = payload
        .repository
        .ok_or(PayloadError::NoRepository)?
        .full_name;
    Ok(Delivery {
        repository,
        installation_id: payload.installation.map(|i| i.id),
        may_have_new_commit: true,
    })
}

pub fn parse_gitlab(body: &[u8]) -> Result<Delivery, PayloadError> {
    let payload: GitLabPayload =
        serde_json::from_slice(body).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    let repository = payload
        .project
        .ok_or(PayloadError::NoRepository)?
        .path_with_namespace;
    // An MR "update" carries `oldrev` only when its head moved.
    let may_have_new_commit = match payload.object_attributes {
        Some(GitLabAttributes {
            action: Some(action),
            oldrev,
        }) if action == "update" => oldrev.is_some_and(|rev| !rev.is_empty()),
        _ => true,
    };
    Ok(Delivery {
        repository,
        installation_id: None,
        may_have_new_commit,
    })
}

/// The linked workspaces a delivery concerns: same provider, same repository (case
/// ignored), an active connection, and on GitHub the sending installation if named.
pub async fn matching_workspaces(
    conn: &mut AsyncPgConnection,
    provider: Provider,
    delivery: &Delivery,
) -> QueryResult<Vec<WorkspaceId>> {
    let mut query = workspaces::table
        .inner_join(vcs_connections::table)
        .filter(vcs_connections::provider.eq(provider))
        .filter(vcs_connections::status.eq(ConnectionStatus::Active))
        .filter(workspaces::vcs_repo_path.eq(delivery.repository.to_ascii_lowercase()))
        // Repeats the partial index's predicate as text: the API's generic plans cannot
        // prove it from a bound value, and would scan every workspace without it.
        .filter(crate::resources::FixedCondition(
            "workspaces.vcs_repo_path <> ''".into(),
        ))
        .select(workspaces::id)
        .into_boxed();
    if let Some(installation) = delivery.installation_id {
        query = query.filter(vcs_connections::github_installation_id.eq(installation));
    }
    query.load(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_repository() {
        let github =
            parse_github(br#"{"repository":{"full_name":"Acme/Infra"},"installation":{"id":7}}"#)
                .unwrap();
        assert_eq!(
            (github.repository.as_str(), github.installation_id),
            ("Acme/Infra", Some(7))
        );
        assert_eq!(parse_github(b"{}"), Err(PayloadError::NoRepository));
        assert!(matches!(
            parse_github(b"{"),
            Err(PayloadError::Malformed(_))
        ));
        let edit = parse_gitlab(
            br#"{"project":{"path_with_namespace":"g/p"},"object_attributes":{"action":"update"}}"#,
        )
        .unwrap();
        assert!(!edit.may_have_new_commit);
        let moved = parse_gitlab(
            br#"{"project":{"path_with_namespace":"g/p"},"object_attributes":{"action":"update","oldrev":"abc"}}"#,
        )
        .unwrap();
        assert!(moved.may_have_new_commit);
    }
}
