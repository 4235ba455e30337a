//! Webhook verification and routing: which deliveries are genuine, new, and which
//! workspaces they concern. A webhook only makes a poll happen sooner; the poll
//! decides what, if anything, changed.

use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ring::hmac;
use serde::Deserialize;
use terrapod_shared::db::schema::{vcs_connections, webhook_deliveries, workspaces};
use terrapod_shared::domain::{ConnectionStatus, Provider};
use terrapod_shared::ids::WorkspaceId;

/// How long a delivery id is remembered (a day, plus slack for clock skew).
const REMEMBER_HOURS: i32 = 25;
/// Old deliveries are purged on one claim in this many.
const PURGE_EVERY: u64 = 100;

static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, checked in
/// constant time.
pub fn github_signature_is_valid(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_signature) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(signature) = hex::decode(hex_signature) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, body, &signature).is_ok()
}

/// `X-Gitlab-Token` equal to the secret, compared in constant time (as HMACs under a
/// one-off key, which also hides the secret's length).
pub fn gitlab_token_is_valid(secret: &str, header: Option<&str>) -> bool {
    let Some(token) = header else {
        return false;
    };
    let rng = ring::rand::SystemRandom::new();
    let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &rng) else {
        return false;
    };
    let expected = hmac::sign(&key, secret.as_bytes());
    hmac::verify(&key, token.as_bytes(), expected.as_ref()).is_ok()
}

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
        .select(workspaces::id)
        .into_boxed();
    if let Some(installation) = delivery.installation_id {
        query = query.filter(vcs_connections::github_installation_id.eq(installation));
    }
    query.load(conn).await
}

/// Records a delivery id; false when it was seen before. Now and then, forgets ids
/// older than a day.
pub async fn claim_delivery(
    conn: &mut AsyncPgConnection,
    provider: Provider,
    id: &str,
) -> QueryResult<bool> {
    if CLAIMS
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(PURGE_EVERY)
    {
        diesel::sql_query(format!(
            "DELETE FROM webhook_deliveries WHERE received_at < now() - interval '{REMEMBER_HOURS} hours'"
        ))
        .execute(conn)
        .await?;
    }
    let inserted = diesel::insert_into(webhook_deliveries::table)
        .values((
            webhook_deliveries::provider.eq(provider),
            webhook_deliveries::delivery_id.eq(id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Forgets a delivery whose polls could not be queued, so a redelivery is handled.
pub async fn release_delivery(
    conn: &mut AsyncPgConnection,
    provider: Provider,
    id: &str,
) -> QueryResult<()> {
    diesel::delete(webhook_deliveries::table.find((provider.as_str(), id)))
        .execute(conn)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_are_checked_against_the_raw_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()));
        assert!(github_signature_is_valid("secret", body, Some(&good)));
        assert!(!github_signature_is_valid("other", body, Some(&good)));
        assert!(!github_signature_is_valid(
            "secret",
            b"tampered",
            Some(&good)
        ));
        assert!(!github_signature_is_valid("secret", body, None));
        assert!(!github_signature_is_valid("secret", body, Some("sha1=abc")));
        assert!(!github_signature_is_valid(
            "secret",
            body,
            Some("sha256=zz")
        ));
    }

    #[test]
    fn gitlab_tokens_must_match_exactly() {
        assert!(gitlab_token_is_valid("s3cret", Some("s3cret")));
        assert!(!gitlab_token_is_valid("s3cret", Some("s3cre")));
        assert!(!gitlab_token_is_valid("s3cret", Some("s3cret ")));
        assert!(!gitlab_token_is_valid("s3cret", None));
    }

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
