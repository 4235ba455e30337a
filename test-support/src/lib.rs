//! Test helpers shared by the crates' integration tests. Each test gets its own
//! database on the real PostgreSQL, so tests run in parallel without seeing each other.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use terrapod_shared::db;
use terrapod_shared::ids::random_base58;

/// The server tests create their databases on; `TERRAPOD_TEST_DATABASE_URL` overrides it.
pub fn server_url() -> String {
    std::env::var("TERRAPOD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A freshly created and migrated database, dropped when the value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    pub async fn new() -> TestDatabase {
        let name = format!("terrapod_test_{}", random_base58(12).to_lowercase());
        let url = database_url(&name);
        db::create_database_if_missing(&url)
            .await
            .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
        db::run_migrations(&url)
            .await
            .unwrap_or_else(|err| panic!("cannot migrate test database {name}: {err}"));
        TestDatabase { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn connection(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test database connection")
    }
}

fn database_url(name: &str) -> String {
    let server = server_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; use a
        // thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = AsyncPgConnection::establish(&database_url("postgres"))
                    .await
                    .ok()?;
                conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// A GitHub App private key made for tests only (PKCS#1 PEM).
pub const GITHUB_APP_TEST_KEY: &str = include_str!("../fixtures/github-app-test-key.pem");
/// The same key as PKCS#8 PEM.
pub const GITHUB_APP_TEST_KEY_PKCS8: &str =
    include_str!("../fixtures/github-app-test-key-pkcs8.pem");
/// The public half of [`GITHUB_APP_TEST_KEY`], as GitHub holds it.
pub const GITHUB_APP_TEST_PUBLIC_KEY: &str =
    include_str!("../fixtures/github-app-test-key.pub.pem");
