//! What each subcommand does, as plain functions the tests call too.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

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
    #[error("no database connection: {0}")]
    Pool(#[from] db::PoolError),
}

/// Retries `connect` with capped exponential backoff (250 ms doubling to 10 s, at
/// most `attempts` tries), logging each failure, so a program started before its
/// database waits instead of crash-looping silently.
pub async fn with_backoff<T, E, F>(
    what: &str,
    attempts: usize,
    connect: impl FnMut() -> F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    connect
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(attempts.saturating_sub(1)),
        )
        .notify(|err: &E, delay: Duration| {
            attempt += 1;
            tracing::warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot reach {what} yet");
        })
        .await
}

async fn connect(settings: &Settings) -> Result<AsyncPgConnection, db::DbSetupError> {
    with_backoff("PostgreSQL", 30, || async {
        AsyncPgConnection::establish(settings.database_url.expose_secret())
            .await
            .map_err(db::DbSetupError::from)
    })
    .await
}

pub async fn migrate(settings: &Settings) -> Result<usize, CommandError> {
    let url = settings.database_url.expose_secret();
    with_backoff("PostgreSQL", 30, || db::create_database_if_missing(url)).await?;
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
    // Waits for PostgreSQL (logging each failed attempt) before serving.
    let mut conn = with_backoff("PostgreSQL", usize::MAX, || pool.get()).await?;
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
