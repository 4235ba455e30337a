//! PostgreSQL: connection pool, embedded migrations, schema and models.

pub mod models;
pub mod schema;

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::{BuildError, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;
use url::Url;

pub use diesel_async::pooled_connection::deadpool::{Object as PooledConnection, PoolError};

pub type DbPool = Pool<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Every statement of the service is short; a runaway one is cancelled, not waited on.
const STATEMENT_TIMEOUT: &str = "30s";

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database URL has no database name")]
    NoDatabaseName,
    #[error("cannot build the connection pool: {0}")]
    Pool(#[from] BuildError),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("no database connection: {0}")]
    Unreachable(String),
    /// Retrying cannot help: a person must run `terrapod-api migrate`.
    #[error("{0}")]
    NotMigrated(#[from] NotMigrated),
}

/// Why the database cannot be used yet although PostgreSQL answers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotMigrated {
    #[error("database `{0}` does not exist: `terrapod-api migrate` creates it and its schema")]
    NoDatabase(String),
    #[error("the database has no Terrapod schema: run `terrapod-api migrate`")]
    NoSchema,
    #[error("the database schema is older than this program ({0} migrations pending): run `terrapod-api migrate`")]
    Behind(usize),
}

impl DbSetupError {
    /// Worth waiting for (PostgreSQL not up yet), as opposed to a database that needs
    /// `terrapod-api migrate` or a setting that is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DbSetupError::Connect(_) | DbSetupError::Query(_) | DbSetupError::Unreachable(_)
        )
    }

    /// Logs a failed attempt to reach a usable database, before waiting `delay`.
    pub fn log_retry(&self, attempt: u32, delay: Duration) {
        let retry_in_ms = delay.as_millis() as u64;
        if matches!(self, DbSetupError::NotMigrated(_)) {
            tracing::warn!(attempt, error = %self, retry_in_ms, "waiting for `terrapod-api migrate`");
        } else {
            tracing::warn!(attempt, error = %self, retry_in_ms, "cannot reach PostgreSQL yet");
        }
    }

    /// A connection refused because its database does not exist (SQLSTATE 3D000) is a
    /// missing migration, not an outage.
    pub fn from_connect(err: ConnectionError, database_url: &str) -> DbSetupError {
        match missing_database(&err.to_string(), database_url) {
            Some(missing) => missing.into(),
            None => DbSetupError::Connect(err),
        }
    }
}

/// `NotMigrated::NoDatabase` when a connection error says the URL's database does not
/// exist (PostgreSQL: `database "name" does not exist`).
pub fn missing_database(error: &str, database_url: &str) -> Option<NotMigrated> {
    let name = Url::parse(database_url)
        .ok()
        .map(|url| url.path().trim_start_matches('/').to_owned())
        .filter(|name| !name.is_empty())?;
    error
        .contains(&format!("database \"{name}\" does not exist"))
        .then_some(NotMigrated::NoDatabase(name))
}

/// The delays between attempts to reach the database at start: 250 ms doubling to 10 s.
pub fn retry_delays() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
}

/// A pooled connection to a database that `terrapod-api migrate` has prepared.
pub async fn ready_connection(
    pool: &DbPool,
    database_url: &str,
) -> Result<PooledConnection<AsyncPgConnection>, DbSetupError> {
    let mut conn = pool.get().await.map_err(|err| {
        let text = err.to_string();
        match missing_database(&text, database_url) {
            Some(missing) => DbSetupError::NotMigrated(missing),
            None => DbSetupError::Unreachable(text),
        }
    })?;
    check_schema(&mut conn).await?;
    Ok(conn)
}

/// Checks that every migration this program embeds has been applied.
pub async fn check_schema(conn: &mut AsyncPgConnection) -> Result<(), DbSetupError> {
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let applied: Vec<Applied> =
        match diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load(conn)
            .await
        {
            Ok(applied) => applied,
            // Only a missing table: a permission error is an error, not a migration to run.
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message() == "relation \"__diesel_schema_migrations\" does not exist" =>
            {
                return Err(NotMigrated::NoSchema.into())
            }
            Err(err) => return Err(err.into()),
        };
    let embedded = diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|err| DbSetupError::Migration(err.to_string()))?;
    let pending = embedded
        .iter()
        .filter(|migration| {
            let version = migration.name().version().to_string();
            !applied.iter().any(|row| row.version == version)
        })
        .count();
    match pending {
        0 => Ok(()),
        n if n == embedded.len() => Err(NotMigrated::NoSchema.into()),
        n => Err(NotMigrated::Behind(n).into()),
    }
}

/// A pool whose connections carry `application_name`, a statement timeout and TCP
/// keepalives. A connection is checked out without a round trip: one whose session
/// ended (a database restart) is recognised as broken and replaced. Code that takes
/// session advisory locks closes its connection rather than return it holding one.
pub fn pool(
    database_url: &str,
    application_name: &'static str,
    max_size: usize,
) -> Result<DbPool, DbSetupError> {
    build_pool(database_url, application_name, max_size, "")
}

/// The API's pool: as [`pool`], but its sessions always use a prepared statement's
/// generic plan. Every API statement is a key or index-prefix lookup whose best plan
/// does not depend on the values; PostgreSQL's default would plan a page query
/// (`LIMIT $n OFFSET $m`, estimated at a tenth of the rows when generic) afresh on
/// every execution, which cost more than running it (docs/benchmarks.md, section 4).
pub fn api_pool(
    database_url: &str,
    application_name: &'static str,
    max_size: usize,
) -> Result<DbPool, DbSetupError> {
    build_pool(
        database_url,
        application_name,
        max_size,
        "; SET plan_cache_mode = force_generic_plan",
    )
}

fn build_pool(
    database_url: &str,
    application_name: &'static str,
    max_size: usize,
    more_settings: &'static str,
) -> Result<DbPool, DbSetupError> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            // Keepalives: the server notices a peer that died without closing (a node
            // lost) within about a minute, ending its session and the advisory locks it held.
            conn.batch_execute(&format!(
                "SET application_name = '{application_name}'; SET statement_timeout = '{STATEMENT_TIMEOUT}'; \
                 SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3{more_settings}"
            ))
            .await
            .map_err(ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager =
        AsyncDieselConnectionManager::new_with_config(with_client_keepalives(database_url), config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Client-side keepalives and a TCP user timeout (tokio-postgres reads both in
/// seconds), unless the URL sets them: without them a connection whose server vanished
/// behind a partition hangs for the kernel's ~15 minutes of retransmissions, since the
/// pool checks connections out without a round trip.
fn with_client_keepalives(database_url: &str) -> String {
    let Ok(mut url) = url::Url::parse(database_url) else {
        return database_url.to_owned(); // key=value form: left as written
    };
    let present: Vec<String> = url.query_pairs().map(|(key, _)| key.into_owned()).collect();
    let mut pairs = url.query_pairs_mut();
    for (key, value) in [
        ("keepalives_idle", "30"),
        ("keepalives_interval", "10"),
        ("keepalives_retries", "3"),
        ("tcp_user_timeout", "60"),
    ] {
        if !present.iter().any(|p| p == key) {
            pairs.append_pair(key, value);
        }
    }
    drop(pairs);
    url.into()
}

/// Creates the database named in `database_url` when it does not exist yet, by
/// connecting to the server's `postgres` database.
pub async fn create_database_if_missing(database_url: &str) -> Result<bool, DbSetupError> {
    let mut url = Url::parse(database_url).map_err(|_| DbSetupError::NoDatabaseName)?;
    let name = url.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Err(DbSetupError::NoDatabaseName);
    }
    url.set_path("/postgres");
    let mut conn = AsyncPgConnection::establish(url.as_str()).await?;
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut conn)
            .await?;
    if found.exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// Applies pending migrations; returns how many ran.
pub async fn run_migrations(database_url: &str) -> Result<usize, DbSetupError> {
    let conn = AsyncPgConnection::establish(database_url).await?;
    // The harness blocks; keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|err| DbSetupError::Migration(err.to_string()))
    })
    .await
    .map_err(|err| DbSetupError::Migration(err.to_string()))?
}

/// True when the database answers a trivial query.
pub async fn ping(pool: &DbPool) -> bool {
    let Ok(mut conn) = pool.get().await else {
        return false;
    };
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::with_client_keepalives;

    #[test]
    fn client_keepalives_are_added_unless_the_url_sets_them() {
        let url = with_client_keepalives("postgres://u:p@db:5432/terrapod?sslmode=disable");
        assert!(url.starts_with("postgres://u:p@db:5432/terrapod?sslmode=disable&"));
        assert!(url.contains("keepalives_idle=30") && url.contains("tcp_user_timeout=60"));
        let own = with_client_keepalives("postgres://db/terrapod?tcp_user_timeout=5");
        assert!(own.contains("tcp_user_timeout=5") && !own.contains("tcp_user_timeout=60"));
        assert_eq!(
            with_client_keepalives("host=db dbname=terrapod"),
            "host=db dbname=terrapod"
        );
    }
}
