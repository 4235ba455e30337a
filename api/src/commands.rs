//! What each subcommand does, as plain functions the tests call too.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use secrecy::{ExposeSecret, SecretString};
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::{self, DbPool};
use terrapod_shared::domain::Role;
use terrapod_shared::{tokens, Settings};

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
    admin: bool,
    description: &str,
) -> Result<SecretString, CommandError> {
    let mut conn = connect(settings).await?;
    let token = tokens::generate();
    let role = if admin { Role::Admin } else { Role::Member };
    tokens::store(&mut conn, &token, role, description).await?;
    Ok(token)
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
    let pool: DbPool = db::pool(settings.database_url.expose_secret(), "terrapod-api", 16)?;
    // Waits for PostgreSQL (logging each failed attempt) before serving.
    let mut conn = with_backoff("PostgreSQL", usize::MAX, || pool.get()).await?;
    if let Some(token) = &settings.bootstrap_token {
        tokens::store(
            &mut conn,
            token,
            Role::Admin,
            "bootstrap token (TERRAPOD_AUTH__BOOTSTRAP_TOKEN)",
        )
        .await?;
    }
    drop(conn);
    Ok(Application::build(settings, pool)?)
}
