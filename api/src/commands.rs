//! What each subcommand does, as plain functions the tests call too.

use std::time::Duration;

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

/// Retries `connect` with capped exponential backoff, logging each failure, so a
/// program started before its database waits instead of crash-looping silently.
pub async fn with_backoff<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
    what: &str,
    attempts: u32,
    mut connect: impl FnMut() -> F,
) -> Result<T, E> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < attempts => {
                tracing::warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "cannot reach {what} yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
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
    let mut conn = with_backoff("PostgreSQL", u32::MAX, || pool.get()).await?;
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
