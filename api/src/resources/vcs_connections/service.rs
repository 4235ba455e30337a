//! VCS connections: validation of what admins send, encryption of credentials, storage.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::models::{NewVcsConnection, VcsConnection, VcsConnectionChanges};
use terrapod_shared::db::schema::{vcs_connections, workspaces};
use terrapod_shared::domain::{ConnectionStatus, Provider};
use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
use url::Url;

use crate::error::ApiError;
use crate::jsonapi::Page;
use crate::resources::{organizations, unique_violation};

const MAX_NAME_CHARS: usize = 255;

/// What a create or update request may carry. `private-key` and `token` are
/// write-only and held as secrets from the moment they are parsed.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectionAttributes {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub server_url: Option<String>,
    pub status: Option<String>,
    pub github_app_id: Option<PositiveId>,
    pub github_installation_id: Option<PositiveId>,
    pub github_account_login: Option<String>,
    pub github_account_type: Option<String>,
    pub private_key: Option<SecretString>,
    pub token: Option<SecretString>,
}

/// A GitHub numeric id, accepted as a JSON number or a numeric string.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "IdRepr")]
pub struct PositiveId(i64);

#[derive(Deserialize)]
#[serde(untagged)]
enum IdRepr {
    Number(i64),
    Text(String),
}

impl TryFrom<IdRepr> for PositiveId {
    type Error = String;
    fn try_from(raw: IdRepr) -> Result<Self, String> {
        let value = match raw {
            IdRepr::Number(n) => Some(n),
            IdRepr::Text(s) => s.trim().parse().ok(),
        };
        value
            .filter(|n| *n > 0)
            .map(PositiveId)
            .ok_or_else(|| "expected a positive integer id".to_owned())
    }
}

fn missing_key() -> ApiError {
    ApiError::Unavailable(
        "TERRAPOD_ENCRYPTION__KEY is not set: VCS credentials cannot be encrypted, so connections cannot be created or their credentials changed".into(),
    )
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::Unprocessable(format!(
            "name must be 1 to {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// An `http(s)` base URL without credentials, query or fragment, with no trailing `/`.
fn parse_server_url(raw: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::Unprocessable(
            "server-url must be an http:// or https:// URL without credentials, query or fragment"
                .into(),
        )
    };
    let url = Url::parse(raw.trim()).map_err(|_| invalid())?;
    let acceptable = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    if !acceptable {
        return Err(invalid());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A GitHub App key must be an RSA private key that can sign the app's JWTs; it is
/// proven by signing a throwaway token. The key never appears in the error.
fn validate_private_key(pem: &SecretString) -> Result<(), ApiError> {
    let invalid =
        || ApiError::Unprocessable("private-key must be a PEM-encoded RSA private key".into());
    let key = EncodingKey::from_rsa_pem(pem.expose_secret().as_bytes()).map_err(|_| invalid())?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &serde_json::json!({"probe": true}),
        &key,
    )
    .map(drop)
    .map_err(|_| invalid())
}

fn validate_token(token: &SecretString) -> Result<(), ApiError> {
    let token = token.expose_secret();
    if token.trim().is_empty()
        || token.len() > 4096
        || token.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ApiError::Unprocessable(
            "token must be a non-empty GitLab access token without spaces".into(),
        ));
    }
    Ok(())
}

/// Checks the attributes that only make sense for one provider, and returns the
/// credential to encrypt, if the request carries one.
fn credential_for(
    provider: Provider,
    attrs: &ConnectionAttributes,
) -> Result<Option<SecretString>, ApiError> {
    match provider {
        Provider::GitHub => {
            if attrs.token.is_some() {
                return Err(ApiError::Unprocessable(
                    "token is for GitLab connections; GitHub connections take private-key".into(),
                ));
            }
            if let Some(key) = &attrs.private_key {
                validate_private_key(key)?;
            }
            Ok(attrs.private_key.clone())
        }
        Provider::GitLab => {
            let github_only = attrs.private_key.is_some()
                || attrs.github_app_id.is_some()
                || attrs.github_installation_id.is_some()
                || attrs.github_account_login.is_some()
                || attrs.github_account_type.is_some();
            if github_only {
                return Err(ApiError::Unprocessable(
                    "private-key and github-* attributes are for GitHub connections; GitLab connections take token".into(),
                ));
            }
            if let Some(token) = &attrs.token {
                validate_token(token)?;
            }
            Ok(attrs.token.clone())
        }
    }
}

fn parse_status(raw: &str) -> Result<ConnectionStatus, ApiError> {
    raw.parse()
        .map_err(|err| ApiError::Unprocessable(format!("status: {err}")))
}

fn map_conflict(err: diesel::result::Error) -> ApiError {
    match unique_violation(&err) {
        Some("vcs_connections_name_unique") => ApiError::Unprocessable(
            "name has already been taken by another VCS connection in this organization".into(),
        ),
        Some("vcs_connections_github_installation_unique") => ApiError::Unprocessable(
            "a VCS connection for this GitHub App installation on this server already exists"
                .into(),
        ),
        _ => err.into(),
    }
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    keys: Option<&KeyRing>,
    organization: &str,
    attrs: ConnectionAttributes,
) -> Result<VcsConnection, ApiError> {
    organizations::ensure_exists(conn, organization).await?;
    let name = parse_name(
        attrs
            .name
            .as_deref()
            .ok_or_else(|| ApiError::Unprocessable("name is required".into()))?,
    )?;
    let provider: Provider = attrs
        .provider
        .as_deref()
        .ok_or_else(|| {
            ApiError::Unprocessable("provider is required (`github` or `gitlab`)".into())
        })?
        .parse()
        .map_err(|err| ApiError::Unprocessable(format!("provider: {err}")))?;
    let server_url = match attrs
        .server_url
        .as_deref()
        .filter(|url| !url.trim().is_empty())
    {
        Some(raw) => parse_server_url(raw)?,
        None => provider.default_server_url().to_owned(),
    };
    let status = attrs
        .status
        .as_deref()
        .map(parse_status)
        .transpose()?
        .unwrap_or(ConnectionStatus::Active);
    if provider == Provider::GitHub
        && (attrs.github_app_id.is_none() || attrs.github_installation_id.is_none())
    {
        return Err(ApiError::Unprocessable(
            "github-app-id and github-installation-id are required for GitHub connections".into(),
        ));
    }
    let credential = credential_for(provider, &attrs)?;
    let keys = keys.ok_or_else(missing_key)?;
    let encrypted = credential.map(|secret| keys.encrypt(secret.expose_secret()));
    let id = VcsConnectionId::generate();
    diesel::insert_into(vcs_connections::table)
        .values(NewVcsConnection {
            id: &id,
            organization_name: organization,
            name: &name,
            provider,
            server_url: &server_url,
            status,
            github_app_id: attrs.github_app_id.map(|id| id.0),
            github_installation_id: attrs.github_installation_id.map(|id| id.0),
            github_account_login: attrs.github_account_login.as_deref(),
            github_account_type: attrs.github_account_type.as_deref(),
            encrypted_credential: encrypted.as_deref(),
        })
        .returning(VcsConnection::as_returning())
        .get_result(conn)
        .await
        .map_err(map_conflict)
}

pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> Result<VcsConnection, ApiError> {
    let not_found = || ApiError::not_found("VCS connection", id);
    let parsed = VcsConnectionId::parse(id).map_err(|_| not_found())?;
    vcs_connections::table
        .find(&parsed)
        .select(VcsConnection::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    organization: &str,
    page: Page,
) -> Result<(Vec<VcsConnection>, i64), ApiError> {
    organizations::ensure_exists(conn, organization).await?;
    let total: i64 = vcs_connections::table
        .filter(vcs_connections::organization_name.eq(organization))
        .count()
        .get_result(conn)
        .await?;
    let rows = vcs_connections::table
        .filter(vcs_connections::organization_name.eq(organization))
        .order((vcs_connections::created_at.asc(), vcs_connections::id.asc()))
        .limit(page.size)
        .offset(page.offset())
        .select(VcsConnection::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
}

/// A changed connection and the workspaces to poll at once because of the change.
pub struct Updated {
    pub connection: VcsConnection,
    /// Re-enabled, or given new credentials or a new server while active: its
    /// workspaces are polled now, so the change shows (or fails) at once.
    pub to_poll: Vec<WorkspaceId>,
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    keys: Option<&KeyRing>,
    id: &str,
    attrs: ConnectionAttributes,
) -> Result<Updated, ApiError> {
    let existing = find(conn, id).await?;
    if let Some(provider) = attrs.provider.as_deref() {
        if provider != existing.provider.as_str() {
            return Err(ApiError::Unprocessable(
                "provider cannot be changed; create a new connection".into(),
            ));
        }
    }
    let credential = credential_for(existing.provider, &attrs)?;
    let new_server_url = match attrs.server_url.as_deref() {
        Some(raw) if raw.trim().is_empty() => {
            Some(existing.provider.default_server_url().to_owned())
        }
        Some(raw) => Some(parse_server_url(raw)?),
        None => None,
    };
    // A stored credential is never sent to a server it was not given for.
    if new_server_url
        .as_ref()
        .is_some_and(|url| *url != existing.server_url)
        && credential.is_none()
        && existing.encrypted_credential.is_some()
    {
        return Err(ApiError::Unprocessable(format!(
            "changing server-url needs the credential again ({}): the stored one is never sent to a server it was not given for",
            match existing.provider {
                Provider::GitHub => "private-key",
                Provider::GitLab => "token",
            }
        )));
    }
    let encrypted_credential = match credential {
        Some(secret) => Some(
            keys.ok_or_else(missing_key)?
                .encrypt(secret.expose_secret()),
        ),
        None => None,
    };
    let changes = VcsConnectionChanges {
        name: attrs.name.as_deref().map(parse_name).transpose()?,
        server_url: new_server_url,
        status: attrs.status.as_deref().map(parse_status).transpose()?,
        github_app_id: attrs.github_app_id.map(|id| Some(id.0)),
        github_installation_id: attrs.github_installation_id.map(|id| Some(id.0)),
        github_account_login: attrs.github_account_login.map(Some),
        github_account_type: attrs.github_account_type.map(Some),
        encrypted_credential,
        updated_at: Some(Utc::now()),
    };
    // A change of how (or whether) the provider is reached supersedes the polls in
    // flight for the connection's workspaces: they record nothing. (A status change is
    // judged under the row's lock, below.)
    let new_status = changes.status;
    let reach_changed_but_status = changes
        .server_url
        .as_ref()
        .is_some_and(|url| *url != existing.server_url)
        || changes.encrypted_credential.is_some()
        || changes
            .github_app_id
            .is_some_and(|id| id != existing.github_app_id)
        || changes
            .github_installation_id
            .is_some_and(|id| id != existing.github_installation_id);
    conn.transaction::<_, ApiError, _>(async |conn| {
        // The status this change replaces, read under the row's lock: of two PATCHes
        // racing (disable, re-enable), the one that re-enables knows it does.
        let status_before: ConnectionStatus = vcs_connections::table
            .find(&existing.id)
            .select(vcs_connections::status)
            .for_update()
            .first(conn)
            .await
            .optional()?
            .ok_or_else(|| ApiError::not_found("VCS connection", existing.id.as_str()))?;
        // Only if the server is still the one this request judged: a concurrent PATCH
        // of `server-url` must not end up with this request's credential.
        let updated = diesel::update(vcs_connections::table.find(&existing.id))
            .filter(vcs_connections::server_url.eq(&existing.server_url))
            .set(changes)
            .returning(VcsConnection::as_returning())
            .get_result(conn)
            .await
            .optional()
            .map_err(map_conflict)?
            .ok_or_else(|| {
                ApiError::Conflict(
                    "the connection's server-url changed while this request ran; read it again and retry".into(),
                )
            })?;
        let reach_changed = reach_changed_but_status
            || new_status.is_some_and(|status| status != status_before);
        if reach_changed {
            supersede_polls(conn, &existing.id).await?;
        }
        let linked = workspaces::table.filter(workspaces::vcs_connection_id.eq(&existing.id));
        let re_enabled =
            status_before != ConnectionStatus::Active && updated.status == ConnectionStatus::Active;
        if re_enabled {
            // The errors said why the connection could not be used; it can again, and
            // the polls queued now record what is true today.
            diesel::update(linked.filter(workspaces::vcs_last_error.is_not_null()))
                .set((
                    workspaces::vcs_last_error.eq(None::<String>),
                    workspaces::vcs_last_error_at.eq(None::<chrono::DateTime<Utc>>),
                ))
                .execute(conn)
                .await?;
        }
        let active = updated.status == ConnectionStatus::Active;
        let to_poll = if re_enabled || (reach_changed && active) {
            linked.select(workspaces::id).load(conn).await?
        } else {
            Vec::new()
        };
        Ok(Updated {
            connection: updated,
            to_poll,
        })
    })
    .await
}

/// Bumps the settings generation of the connection's workspaces: polls in flight with
/// the old settings record nothing.
async fn supersede_polls(
    conn: &mut AsyncPgConnection,
    connection: &VcsConnectionId,
) -> Result<(), diesel::result::Error> {
    diesel::update(workspaces::table.filter(workspaces::vcs_connection_id.eq(connection)))
        .set(workspaces::vcs_settings_generation.eq(workspaces::vcs_settings_generation + 1))
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes the connection. Linked workspaces keep their repository settings, lose the
/// relationship (the foreign key sets it null), and say why in `vcs-last-error`.
pub async fn delete(conn: &mut AsyncPgConnection, id: &str) -> Result<(), ApiError> {
    let existing = find(conn, id).await?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::update(workspaces::table.filter(workspaces::vcs_connection_id.eq(&existing.id)))
            .set((
                workspaces::vcs_last_error.eq(format!(
                    "VCS connection {} was deleted; link the workspace to another connection to resume VCS runs",
                    existing.id
                )),
                workspaces::vcs_last_error_at.eq(diesel::dsl::now),
                // Polls in flight through this connection record nothing.
                workspaces::vcs_settings_generation.eq(workspaces::vcs_settings_generation + 1),
            ))
            .execute(conn)
            .await?;
        diesel::delete(vcs_connections::table.find(&existing.id))
            .execute(conn)
            .await?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// Re-encrypts every stored credential under the key ring's first key; returns how
/// many were rewritten. One transaction: a failure leaves every row as it was.
pub async fn reencrypt_all(
    conn: &mut AsyncPgConnection,
    keys: &KeyRing,
) -> Result<usize, RotateError> {
    conn.transaction::<_, RotateError, _>(async |conn| {
        let rows: Vec<(VcsConnectionId, Option<String>)> = vcs_connections::table
            .select((vcs_connections::id, vcs_connections::encrypted_credential))
            .for_update()
            .load(conn)
            .await?;
        let mut rewritten = 0;
        for (id, ciphertext) in rows {
            let Some(ciphertext) = ciphertext else {
                continue;
            };
            let clear = keys
                .decrypt(&ciphertext)
                .map_err(|_| RotateError::Undecryptable(id.clone()))?;
            diesel::update(vcs_connections::table.find(&id))
                .set(vcs_connections::encrypted_credential.eq(keys.encrypt(clear.expose_secret())))
                .execute(conn)
                .await?;
            rewritten += 1;
        }
        Ok(rewritten)
    })
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the credential of {0} cannot be decrypted with any configured key; add the key it was encrypted with to TERRAPOD_ENCRYPTION__KEY")]
    Undecryptable(VcsConnectionId),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalised_or_refused() {
        assert_eq!(
            parse_server_url("https://ghe.example.com/api/v3/").unwrap(),
            "https://ghe.example.com/api/v3"
        );
        assert_eq!(
            parse_server_url("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        for bad in ["", "ftp://x", "https://u:p@x", "https://x/?q", "not a url"] {
            assert!(parse_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_key_errors_never_echo_the_key() {
        let secret = SecretString::from(
            "-----BEGIN RSA PRIVATE KEY-----\nhunter2\n-----END RSA PRIVATE KEY-----",
        );
        let err = validate_private_key(&secret).unwrap_err().to_string();
        assert!(!err.contains("hunter2"));
    }
}
