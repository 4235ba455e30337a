//! A whole Terrapod VCS in one process for benchmarks: a fresh database, a vhost of
//! its own, the VCS simulator, the API and a poller.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use terrapod_api::startup::Application;
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::domain::Role;
use terrapod_shared::{db, tokens, Settings};
use terrapod_test_support::{
    TestDatabase, TestVhost, GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY,
};
use terrapod_vcs_sim::Simulator;

pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";

pub struct System {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub sim: Simulator,
    pub api: String,
    pub token: String,
    pub client: reqwest::Client,
    pub env: Vec<(String, String)>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl System {
    /// Starts everything; `interval` is the poll interval in seconds.
    pub async fn start(interval: u64, concurrency: usize) -> System {
        let db = TestDatabase::new().await;
        let vhost = TestVhost::new();
        let sim = Simulator::start().await.unwrap();
        sim.add_github_app(1, GITHUB_APP_TEST_PUBLIC_KEY);
        sim.add_installation(1, 1, "bench", None);
        sim.add_gitlab_token("glpat-bench", None);
        let env: Vec<(String, String)> = vec![
            ("TERRAPOD_DATABASE__URL".into(), db.url().to_owned()),
            ("TERRAPOD_AMQP__URL".into(), vhost.url()),
            ("TERRAPOD_ENCRYPTION__KEY".into(), KeyRing::generate_key()),
            ("TERRAPOD_API__LISTEN".into(), "127.0.0.1:0".into()),
            ("TERRAPOD_POLLER__LISTEN".into(), "127.0.0.1:0".into()),
            (
                "TERRAPOD_VCS__POLL_INTERVAL_SECONDS".into(),
                interval.to_string(),
            ),
            (
                "TERRAPOD_POLLER__CONCURRENCY".into(),
                concurrency.to_string(),
            ),
            (
                "TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET".into(),
                WEBHOOK_SECRET.into(),
            ),
        ];
        let settings = settings(&env);
        let pool = db::pool(db.url(), "terrapod-api", 16).unwrap();
        let token = tokens::generate();
        tokens::store(&mut pool.get().await.unwrap(), &token, Role::Admin, "bench")
            .await
            .unwrap();
        let app = Application::build(settings, pool).unwrap();
        let api = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        let (stop, _) = tokio::sync::watch::channel(false);
        let system = System {
            db,
            vhost,
            sim,
            api,
            token: token.expose_secret().to_owned(),
            client: reqwest::Client::new(),
            env,
            stop,
        };
        system.start_poller();
        system
    }

    /// Starts one more poller replica in this process.
    pub fn start_poller(&self) {
        let ctx = terrapod_poller::context(settings(&self.env)).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tokio::spawn(terrapod_poller::run(ctx, listener, self.stop.subscribe()));
    }

    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A GitHub connection to the simulator; returns its id.
    pub async fn github_connection(&self) -> String {
        let body = json!({"data": {"type": "vcs-connections", "attributes": {
            "name": "github", "provider": "github", "server-url": self.sim.url(),
            "github-app-id": 1, "github-installation-id": 1, "private-key": GITHUB_APP_TEST_KEY}}});
        self.post("/api/v2/organizations/default/vcs-connections", &body)
            .await["data"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn workspace(&self, name: &str, connection: &str, repo: &str) -> String {
        let body = json!({"data": {"type": "workspaces",
            "attributes": {"name": name, "vcs-repo-url": format!("https://github.com/{repo}"), "vcs-branch": "main"},
            "relationships": {"vcs-connection": {"data": {"id": connection, "type": "vcs-connections"}}}}});
        self.post("/api/v2/organizations/default/workspaces", &body)
            .await["data"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// True when the workspace's newest run is for `sha`.
    pub async fn has_run(&self, workspace: &str, sha: &str) -> bool {
        let runs = self
            .get(&format!("/api/v2/workspaces/{workspace}/runs?page[size]=1"))
            .await;
        runs["data"][0]["attributes"]["vcs-commit-sha"] == sha
    }
}

pub fn settings(env: &[(String, String)]) -> Settings {
    Settings::from_lookup(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        .unwrap()
}

/// The value below which `p` of `sorted` lies (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// CPU seconds (user + system) used so far by process `pid`.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by every PostgreSQL server process (all sessions).
pub fn postgres_cpu_seconds() -> f64 {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "postgres")
                })
                .map(cpu_seconds_of)
                .sum()
        })
        .unwrap_or(0.0)
}

/// A child process of the benchmark, measured through /proc and stopped on drop.
pub struct Measured {
    pub child: std::process::Child,
    pub started: std::time::Instant,
}

impl Measured {
    /// Spawns a release binary of this workspace with `env`.
    pub fn spawn(binary: &str, args: &[&str], env: &[(String, String)]) -> Measured {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/release")
            .join(binary);
        // BENCH_LOGS=DIR keeps each process's log (at info) in DIR.
        let stderr = match std::env::var("BENCH_LOGS") {
            Ok(dir) => {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::process::Stdio::from(
                    std::fs::File::create(format!("{dir}/{binary}-{n}.log")).expect("log file"),
                )
            }
            Err(_) => std::process::Stdio::null(),
        };
        let level = if std::env::var("BENCH_LOGS").is_ok() {
            "info"
        } else {
            "warn"
        };
        let child = std::process::Command::new(path)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", level)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("{binary}: {err} (build it with cargo build --release)"));
        Measured {
            child,
            started: std::time::Instant::now(),
        }
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.child.id())
    }

    /// Peak resident set size so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value following `name` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Many repositories and workspaces over several GitHub App installations on one
/// simulator, for the polling benchmarks (pollers run as release processes).
pub struct Fleet {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub sim: Simulator,
    pub key: String,
    /// Each repository's path and its workspaces.
    pub repos: Vec<(String, Vec<terrapod_shared::ids::WorkspaceId>)>,
}

impl Fleet {
    /// `repos` repositories (round-robin over `installations` installations, each
    /// seeing only its own), `per_repo` workspaces each.
    pub async fn build(repos: usize, per_repo: usize, installations: usize) -> Fleet {
        use diesel_async::RunQueryDsl;
        use terrapod_shared::db::models::{NewVcsConnection, NewWorkspace};
        use terrapod_shared::db::schema::{vcs_connections, workspaces};
        use terrapod_shared::domain::{ConnectionStatus, ExecutionMode, Provider};
        use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
        use terrapod_vcs_sim::Kind;

        let db = TestDatabase::new().await;
        let vhost = TestVhost::new();
        let sim = Simulator::start().await.unwrap();
        sim.add_github_app(1, GITHUB_APP_TEST_PUBLIC_KEY);
        sim.set_rate_limit(Kind::Github, 100_000_000, 3600);
        let paths: Vec<String> = (0..repos).map(|r| format!("bench/repo-{r}")).collect();
        for installation in 0..installations {
            let own: Vec<&str> = paths
                .iter()
                .enumerate()
                .filter(|(r, _)| r % installations == installation)
                .map(|(_, p)| p.as_str())
                .collect();
            sim.add_installation(installation as i64 + 1, 1, "bench", Some(&own));
        }
        for (r, path) in paths.iter().enumerate() {
            sim.create_repo(Kind::Github, path, &[("main.tf", &format!("# repo {r}\n"))]);
        }
        let key = KeyRing::generate_key();
        let credential = KeyRing::parse(&key).unwrap().encrypt(GITHUB_APP_TEST_KEY);
        let connections: Vec<VcsConnectionId> = (0..installations)
            .map(|_| VcsConnectionId::generate())
            .collect();
        let mut conn = db.connection().await;
        for (installation, id) in connections.iter().enumerate() {
            let name = format!("github-{installation}");
            diesel::insert_into(vcs_connections::table)
                .values(NewVcsConnection {
                    id,
                    organization_name: "default",
                    name: &name,
                    provider: Provider::GitHub,
                    server_url: sim.url(),
                    status: ConnectionStatus::Active,
                    github_app_id: Some(1),
                    github_installation_id: Some(installation as i64 + 1),
                    github_account_login: None,
                    github_account_type: None,
                    encrypted_credential: Some(&credential),
                })
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let mut fleet_repos = Vec::new();
        let mut rows: Vec<(WorkspaceId, String, String, String, usize)> = Vec::new();
        for (r, path) in paths.iter().enumerate() {
            let ids: Vec<WorkspaceId> = (0..per_repo).map(|_| WorkspaceId::generate()).collect();
            for (w, id) in ids.iter().enumerate() {
                rows.push((
                    id.clone(),
                    format!("ws-{r}-{w}"),
                    format!("https://github.com/{path}"),
                    path.clone(),
                    r % installations,
                ));
            }
            fleet_repos.push((path.clone(), ids));
        }
        for chunk in rows.chunks(1000) {
            let values: Vec<NewWorkspace> = chunk
                .iter()
                .map(|(id, name, url, path, installation)| NewWorkspace {
                    id,
                    organization_name: "default",
                    name,
                    execution_mode: ExecutionMode::Remote,
                    auto_apply: false,
                    vcs_connection_id: Some(&connections[*installation]),
                    vcs_repo_url: url,
                    vcs_repo_path: path,
                    vcs_branch: "main",
                    working_directory: "",
                    // Every commit runs, as before file triggers existed.
                    file_triggers_enabled: false,
                    trigger_prefixes: &[],
                    trigger_patterns: &[],
                    speculative_enabled: true,
                    vcs_tags_regex: None,
                })
                .collect();
            diesel::insert_into(workspaces::table)
                .values(values)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Fleet {
            db,
            vhost,
            sim,
            key,
            repos: fleet_repos,
        }
    }

    pub fn workspaces(&self) -> i64 {
        self.repos.iter().map(|(_, ids)| ids.len() as i64).sum()
    }

    /// A poller's environment on a free port, with `extra` settings.
    pub fn poller_env(&self, interval: u64, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("TERRAPOD_DATABASE__URL".into(), self.db.url().to_owned()),
            ("TERRAPOD_AMQP__URL".into(), self.vhost.url()),
            ("TERRAPOD_ENCRYPTION__KEY".into(), self.key.clone()),
            (
                "TERRAPOD_VCS__POLL_INTERVAL_SECONDS".into(),
                interval.to_string(),
            ),
            (
                "TERRAPOD_POLLER__LISTEN".into(),
                format!("127.0.0.1:{}", free_port()),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Runs a `SELECT count(*) AS n …` query.
    pub async fn count(&self, query: &str) -> i64 {
        count(&self.db, query).await
    }

    /// Records every repository's head as polled (its run exists), as after a first
    /// pass: what follows costs no archive.
    pub async fn mark_heads_polled(&self) {
        use terrapod_vcs_sim::Kind;
        for (path, _) in &self.repos {
            let head = self.sim.sim().repo(Kind::Github, path).unwrap().branches["main"].clone();
            self.count(&format!(
                "WITH h AS (UPDATE workspaces SET vcs_last_commit_sha = '{head}' WHERE vcs_repo_path = '{path}' RETURNING 1) SELECT count(*) AS n FROM h"
            ))
            .await;
        }
    }

    /// Every workspace due now, as if the interval had passed.
    pub async fn make_all_due(&self) {
        self.count("WITH u AS (UPDATE workspaces SET vcs_last_attempt_at = NULL RETURNING 1) SELECT count(*) AS n FROM u")
            .await;
    }

    /// Serves the API in this process (for webhooks); returns its base URL.
    pub async fn start_api(&self, webhook_secret: &str) -> String {
        let env = vec![
            (
                "TERRAPOD_DATABASE__URL".to_owned(),
                self.db.url().to_owned(),
            ),
            ("TERRAPOD_AMQP__URL".to_owned(), self.vhost.url()),
            ("TERRAPOD_ENCRYPTION__KEY".to_owned(), self.key.clone()),
            ("TERRAPOD_API__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            (
                "TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET".to_owned(),
                webhook_secret.to_owned(),
            ),
        ];
        let pool = db::pool(self.db.url(), "terrapod-api", 16).unwrap();
        let app = Application::build(settings(&env), pool).unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped());
        url
    }
}

/// Runs a `SELECT count(*) AS n …` query.
pub async fn count(db: &TestDatabase, query: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.connection().await;
    diesel::sql_query(query)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

/// Waits (checking every 100 ms) until `done`; returns how long it took.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(started.elapsed() < timeout, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// A gauge or counter of a Prometheus text page, by full series name.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}
