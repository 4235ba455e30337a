//! What each subcommand does, as plain functions the tests call too.

use std::time::Duration;

use backon::Retryable;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use secrecy::{ExposeSecret, SecretString};
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::{self, DbPool};
use terrapod_shared::domain::Role;
use terrapod_shared::ids::ApiTokenId;
use terrapod_shared::tokens::{self, Bootstrap, Revocation};
use terrapod_shared::Settings;

use crate::resources::vcs_connections::service::{reencrypt_all, RotateError};
use crate::startup::Application;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Database(#[from] db::DbSetupError),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Rotate(#[from] RotateError),
    #[error("TERRAPOD_ENCRYPTION__KEY is not set; `keys rotate` needs the new key first, then the old ones")]
    NoEncryptionKey,
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Until PostgreSQL answers, retries `connect` with capped exponential backoff (250 ms
/// doubling to 10 s, at most `attempts` tries), logging each failure, so a program
/// started before its database waits instead of crash-looping silently. A database
/// that is not migrated fails at once, unless `wait_for_migrate` (a server started
/// beside its migration job waits for it, saying so).
pub async fn with_backoff<T, F>(
    attempts: usize,
    wait_for_migrate: bool,
    connect: impl FnMut() -> F,
) -> Result<T, db::DbSetupError>
where
    F: std::future::Future<Output = Result<T, db::DbSetupError>>,
{
    let mut attempt = 0u32;
    connect
        .retry(db::retry_delays().with_max_times(attempts.saturating_sub(1)))
        .when(|err: &db::DbSetupError| {
            err.is_transient()
                || (wait_for_migrate && matches!(err, db::DbSetupError::NotMigrated(_)))
        })
        .notify(|err: &db::DbSetupError, delay: Duration| {
            attempt += 1;
            err.log_retry(attempt, delay);
        })
        .await
}

/// A connection for a one-shot command: waits for PostgreSQL, then refuses a database
/// that `terrapod-api migrate` has not prepared.
async fn connect(settings: &Settings) -> Result<AsyncPgConnection, db::DbSetupError> {
    let url = settings.database_url.expose_secret();
    let mut conn = with_backoff(30, false, || async {
        AsyncPgConnection::establish(url)
            .await
            .map_err(|err| db::DbSetupError::from_connect(err, url))
    })
    .await?;
    db::check_schema(&mut conn).await?;
    Ok(conn)
}

pub async fn migrate(settings: &Settings) -> Result<usize, CommandError> {
    let url = settings.database_url.expose_secret();
    with_backoff(30, false, || db::create_database_if_missing(url)).await?;
    Ok(db::run_migrations(url).await?)
}

pub async fn create_token(
    settings: &Settings,
    role: Role,
    description: &str,
) -> Result<SecretString, CommandError> {
    let mut conn = connect(settings).await?;
    let token = tokens::generate();
    tokens::store(&mut conn, &token, role, description).await?;
    Ok(token)
}

/// `token list`: one tab-separated line per token.
pub async fn list_tokens(settings: &Settings, all: bool) -> Result<Vec<String>, CommandError> {
    let mut conn = connect(settings).await?;
    let printable = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let at = |time: chrono::DateTime<chrono::Utc>| {
        time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    Ok(tokens::list(&mut conn, all)
        .await?
        .into_iter()
        .map(|token| {
            let mut line = format!(
                "{}\t{}\t{}\t{}\t{}",
                token.public_id,
                token.role,
                printable(&token.description),
                at(token.created_at),
                token.last_used_at.map_or_else(|| "never".to_owned(), at),
            );
            if let Some(revoked) = token.revoked_at {
                line.push_str(&format!("\trevoked {}", at(revoked)));
            }
            line
        })
        .collect())
}

/// `token revoke ID`.
pub async fn revoke_token(settings: &Settings, id: &str) -> Result<Revocation, CommandError> {
    let Ok(id) = ApiTokenId::parse(id) else {
        return Ok(Revocation::Unknown);
    };
    let mut conn = connect(settings).await?;
    Ok(tokens::revoke(&mut conn, &id).await?)
}

pub async fn rotate_keys(settings: &Settings) -> Result<usize, CommandError> {
    let keys: &KeyRing = settings
        .encryption
        .as_ref()
        .ok_or(CommandError::NoEncryptionKey)?;
    let mut conn = connect(settings).await?;
    Ok(reencrypt_all(&mut conn, keys).await?)
}

/// Connects (with backoff), ensures the bootstrap token, and builds the server.
pub async fn build_server(settings: Settings) -> Result<Application, CommandError> {
    let pool: DbPool = db::api_pool(settings.database_url.expose_secret(), "terrapod-api", 16)?;
    // Waits for PostgreSQL and its schema (logging each failed attempt) before serving.
    let url = settings.database_url.expose_secret();
    let mut conn = with_backoff(usize::MAX, true, || db::ready_connection(&pool, url)).await?;
    if let Some(token) = &settings.bootstrap_token {
        match tokens::ensure_bootstrap(&mut conn, token).await? {
            Bootstrap::Active { replaced: 0 } => {}
            Bootstrap::Active { replaced } => {
                tracing::info!(revoked = replaced, "TERRAPOD_AUTH__BOOTSTRAP_TOKEN changed: the previous bootstrap token was revoked");
            }
            Bootstrap::Revoked => tracing::warn!(
                "the bootstrap token (TERRAPOD_AUTH__BOOTSTRAP_TOKEN) was revoked and stays revoked; set a new one"
            ),
        }
    }
    drop(conn);
    Ok(Application::build(settings, pool)?)
}
