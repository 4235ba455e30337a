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
        let database = TestDatabase::unmigrated().await;
        db::run_migrations(&database.url)
            .await
            .unwrap_or_else(|err| panic!("cannot migrate test database {}: {err}", database.name));
        database
    }

    /// A freshly created database that `terrapod-api migrate` has not prepared.
    pub async fn unmigrated() -> TestDatabase {
        let name = format!("terrapod_test_{}", random_base58(12).to_lowercase());
        let url = database_url(&name);
        db::create_database_if_missing(&url)
            .await
            .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
        TestDatabase { name, url }
    }

    /// The URL of a database on the test server that does not exist.
    pub fn missing_url() -> String {
        database_url(&format!(
            "terrapod_test_missing_{}",
            random_base58(12).to_lowercase()
        ))
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

/// A RabbitMQ virtual host of its own for one test, removed when dropped.
pub struct TestVhost {
    name: String,
}

fn rabbitmqctl(args: &[&str]) -> std::io::Result<std::process::Output> {
    std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
}

impl TestVhost {
    pub fn new() -> TestVhost {
        let name = format!("terrapod_test_{}", random_base58(12).to_lowercase());
        for args in [
            vec!["add_vhost", name.as_str()],
            vec![
                "set_permissions",
                "-p",
                name.as_str(),
                "guest",
                ".*",
                ".*",
                ".*",
            ],
        ] {
            let output = rabbitmqctl(&args).expect("rabbitmqctl runs");
            assert!(
                output.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        TestVhost { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An AMQP URL for this vhost on `host:port` (the broker, or a proxy in front of it).
    pub fn url_via(&self, address: &str) -> String {
        format!("amqp://guest:guest@{address}/{}", self.name)
    }

    pub fn url(&self) -> String {
        self.url_via("127.0.0.1:5672")
    }
}

impl Default for TestVhost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// A TCP proxy that can be cut and restored, to take a service away from one test
/// without stopping it for the others.
pub struct TcpProxy {
    address: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> TcpProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let open = std::sync::Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let target = target.to_owned();
        let (accept_open, accept_generation) = (open.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accept_open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = target.clone();
                let mut cut = accept_generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            address,
            open,
            generation,
        }
    }

    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An HTTP server on its own origin that records the head of every request it gets
/// and answers each with the same fixed response: the "other host" of redirect and
/// pagination tests, to see which headers reached it.
pub struct HeaderTrap {
    address: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HeaderTrap {
    pub async fn start(content_type: &str, body: Vec<u8>) -> HeaderTrap {
        Self::start_with_status("200 OK", content_type, body).await
    }

    /// Like [`HeaderTrap::start`], answering with `status` (e.g. `"404 Not Found"`).
    pub async fn start_with_status(status: &str, content_type: &str, body: Vec<u8>) -> HeaderTrap {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        let response = std::sync::Arc::new(response);
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (recorded, response) = (recorded.clone(), response.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    recorded
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).to_lowercase());
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        HeaderTrap { address, heads }
    }

    /// The trap's origin, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The request heads received so far, lowercased.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}
