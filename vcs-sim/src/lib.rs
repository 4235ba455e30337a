#![recursion_limit = "256"]
//! `terrapod-vcs-sim`: a faithful local stand-in for GitHub's REST API (GitHub App
//! auth included) and GitLab's v4 API, backed by real git repositories. The project's
//! tests, demo and benchmarks use it, since no test machine can reach the real ones.
//!
//! Run it as a binary (admin API under `/_admin`), or in-process with [`Simulator`].

pub mod admin;
pub mod checks;
pub mod git;
pub mod ops;
pub mod render;
pub mod server;
pub mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::{web, App, HttpServer};

pub use ops::{Event, FileSpec, NewPull, PullUpdate};
use server::Context;
pub use state::{
    Fault, Kind, Latency, PullState, SecondaryLimits, Sim, SimError, Stats, UsageReport,
    WebhookTarget,
};

pub struct Simulator {
    ctx: web::Data<Context>,
    url: String,
    handle: actix_web::dev::ServerHandle,
    _dir: Option<tempfile::TempDir>,
}

impl Simulator {
    /// Starts on a free loopback port with repositories in a temporary directory.
    pub async fn start() -> std::io::Result<Simulator> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_owned();
        let mut sim = Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), root).await?;
        sim._dir = Some(dir);
        Ok(sim)
    }

    /// Starts on `addr`, keeping repositories under `root`.
    pub async fn start_at(
        addr: SocketAddr,
        root: std::path::PathBuf,
    ) -> std::io::Result<Simulator> {
        let listener = std::net::TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let url = format!("http://{}:{port}", listener.local_addr()?.ip());
        let ctx = web::Data::new(Context {
            sim: Arc::new(Mutex::new(Sim::new(root))),
            base_url: url.clone(),
            client: reqwest::Client::new(),
            deliveries: Mutex::new(Vec::new()),
        });
        let app_ctx = ctx.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_ctx.clone())
                .app_data(web::PayloadConfig::new(256 << 20))
                .default_service(web::to(server::dispatch))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Simulator {
            ctx,
            url,
            handle,
            _dir: None,
        })
    }

    /// The base URL: a GitHub connection's and a GitLab connection's `server-url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn sim(&self) -> MutexGuard<'_, Sim> {
        self.ctx.sim.lock().expect("sim lock")
    }

    pub fn stats(&self, kind: Kind) -> Stats {
        self.sim().stats.get(&kind).cloned().unwrap_or_default()
    }

    pub fn deliveries(&self) -> Vec<webhooks::Delivery> {
        self.ctx.deliveries.lock().expect("lock").clone()
    }

    async fn send(&self, events: Vec<Event>) {
        let targets = self.sim().webhooks.clone();
        let delivered = webhooks::deliver_all(&self.ctx.client, &targets, &events).await;
        self.ctx.deliveries.lock().expect("lock").extend(delivered);
    }

    pub fn add_github_app(&self, app_id: i64, public_key_pem: &str) {
        ops::add_github_app(&mut self.sim(), app_id, public_key_pem).expect("valid public key");
    }

    pub fn add_installation(&self, id: i64, app_id: i64, account: &str, repos: Option<&[&str]>) {
        let repos = repos.map(|r| r.iter().map(|s| s.to_string()).collect());
        ops::add_installation(&mut self.sim(), id, app_id, account, repos);
    }

    pub fn add_gitlab_token(&self, token: &str, projects: Option<&[&str]>) {
        let projects = projects.map(|p| p.iter().map(|s| s.to_string()).collect());
        ops::add_gitlab_token(&mut self.sim(), token, projects);
    }

    pub fn add_webhook(&self, kind: Kind, url: &str, secret: &str) {
        ops::add_webhook(
            &mut self.sim(),
            WebhookTarget {
                kind,
                url: url.to_owned(),
                secret: secret.to_owned(),
            },
        );
    }

    /// Creates a repository with a first commit of `files`; returns its head SHA.
    pub fn create_repo(&self, kind: Kind, path: &str, files: &[(&str, &str)]) -> String {
        let files = to_specs(files);
        ops::create_repo(&mut self.sim(), kind, path, "main", &files)
            .expect("repository created")
            .1
            .expect("a first commit")
    }

    /// Commits `files` on `branch` and delivers the resulting webhooks; returns the SHA.
    pub async fn commit(
        &self,
        kind: Kind,
        path: &str,
        branch: &str,
        message: &str,
        files: &[(&str, &str)],
    ) -> String {
        let (sha, events) = ops::commit(
            &mut self.sim(),
            kind,
            path,
            branch,
            message,
            &to_specs(files),
        )
        .expect("commit");
        self.send(events).await;
        sha
    }

    /// Commits like [`Simulator::commit`] but returns the webhook events instead of
    /// delivering them (to time the delivery on its own).
    pub fn commit_quietly(
        &self,
        kind: Kind,
        path: &str,
        branch: &str,
        message: &str,
        files: &[(&str, &str)],
    ) -> (String, Vec<Event>) {
        ops::commit(
            &mut self.sim(),
            kind,
            path,
            branch,
            message,
            &to_specs(files),
        )
        .expect("commit")
    }

    /// Delivers events to the registered webhook targets.
    pub async fn deliver(&self, events: Vec<Event>) {
        self.send(events).await;
    }

    /// Opens a PR/MR from `head` into `base`; returns its number (iid on GitLab).
    pub async fn open_pull(&self, kind: Kind, path: &str, new: NewPull) -> i64 {
        let (number, events) =
            ops::open_pull(&mut self.sim(), kind, path, new).expect("pull opened");
        self.send(events).await;
        number
    }

    pub async fn update_pull(&self, kind: Kind, path: &str, number: i64, update: PullUpdate) {
        let events =
            ops::update_pull(&mut self.sim(), kind, path, number, update).expect("pull updated");
        self.send(events).await;
    }

    /// The check runs of a GitHub repository (`owner/name`), oldest first.
    pub fn check_runs(&self, repo: &str) -> Vec<checks::CheckRun> {
        let repo = repo.to_ascii_lowercase();
        self.sim()
            .check_runs
            .iter()
            .filter(|run| run.repo == repo)
            .cloned()
            .collect()
    }

    /// The current commit statuses of a GitLab project (`group/project`), oldest first.
    pub fn commit_statuses(&self, project: &str) -> Vec<checks::CommitStatus> {
        let project = project.to_ascii_lowercase();
        self.sim()
            .commit_statuses
            .iter()
            .filter(|status| status.project == project && !status.retried)
            .cloned()
            .collect()
    }

    pub fn inject_fault(&self, fault: Fault) {
        ops::inject_fault(&mut self.sim(), fault);
    }

    /// Removes every injected fault not used up yet.
    pub fn clear_faults(&self) {
        self.sim().faults.clear();
    }

    /// Every provider answer takes `fixed_ms` plus up to `jitter_ms` from now on.
    pub fn set_latency(&self, fixed_ms: u64, jitter_ms: u64) {
        self.sim().latency = Latency {
            fixed_ms,
            jitter_ms,
        };
    }

    /// GitHub's secondary limits per installation (`None` turns them off).
    pub fn set_secondary_limits(&self, limits: Option<SecondaryLimits>) {
        self.sim().secondary_limits = limits;
    }

    pub fn installation_usage(&self, installation: i64) -> UsageReport {
        ops::installation_usage(&self.sim(), installation)
    }

    pub fn revoke_github_tokens(&self) {
        ops::revoke_github_tokens(&mut self.sim());
    }

    pub fn set_rate_limit(&self, kind: Kind, remaining: u64, reset_in_seconds: i64) {
        ops::set_rate_limit(&mut self.sim(), kind, remaining, reset_in_seconds);
    }

    pub fn override_archive(&self, kind: Kind, path: &str, sha: &str, bytes: Vec<u8>) {
        ops::override_archive(&mut self.sim(), kind, path, sha, bytes).expect("archive override");
    }

    /// Points tag `name` at `sha` (creating or moving it), as `git push --tags` would.
    pub fn set_tag(&self, kind: Kind, path: &str, name: &str, sha: &str) {
        let mut sim = self.sim();
        let repo = sim.repo_mut(kind, path).expect("repository exists");
        assert!(
            repo.commits.contains_key(sha),
            "tag {name} at an unknown commit"
        );
        repo.tags.insert(name.to_owned(), sha.to_owned());
    }

    /// Moves `branch` to `sha` without a new commit (a force-push to an older one).
    pub fn set_branch(&self, kind: Kind, path: &str, branch: &str, sha: &str) {
        let mut sim = self.sim();
        let repo = sim.repo_mut(kind, path).expect("repository exists");
        repo.git.set_branch(branch, sha).expect("git update-ref");
        repo.branches.insert(branch.to_owned(), sha.to_owned());
    }

    /// Makes the repository forget a commit (as after a force-push and garbage
    /// collection): comparisons from it answer 404.
    pub fn forget_commit(&self, kind: Kind, path: &str, sha: &str) {
        let mut sim = self.sim();
        let repo = sim.repo_mut(kind, path).expect("repository exists");
        repo.commits.remove(sha);
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// The public half of the project's test GitHub App key (test-support/fixtures):
/// demo worlds use it, so nothing secret is involved.
pub const DEMO_GITHUB_APP_PUBLIC_KEY: &str =
    include_str!("../../test-support/fixtures/github-app-test-key.pub.pem");

/// A sample world for the demo: see `terrapod-vcs-sim --help`.
pub fn seed_demo(sim: &Simulator) {
    sim.add_github_app(1, DEMO_GITHUB_APP_PUBLIC_KEY);
    sim.add_installation(1, 1, "demo", None);
    sim.add_gitlab_token("glpat-demo", None);
    let terraform = "terraform {\n  required_version = \">= 1.5\"\n}\n\nresource \"null_resource\" \"hello\" {}\n";
    sim.create_repo(
        Kind::Github,
        "demo/infra",
        &[("main.tf", terraform), ("README.md", "# demo/infra\n")],
    );
    sim.create_repo(Kind::Gitlab, "demo/network", &[("main.tf", terraform)]);
}

fn to_specs(files: &[(&str, &str)]) -> Vec<(String, Option<FileSpec>)> {
    files
        .iter()
        .map(|(path, content)| (path.to_string(), Some(FileSpec::Text(content.to_string()))))
        .collect()
}

/// A fault that fails the next `count` requests whose path contains `path_contains`.
pub fn fault(path_contains: &str, status: u16, count: u64) -> Fault {
    Fault {
        status: Some(status),
        count,
        ..Fault::matching(path_contains)
    }
}

impl Fault {
    /// Does nothing yet to the next request whose path contains `path_contains`: set
    /// what it should do.
    pub fn matching(path_contains: &str) -> Fault {
        Fault {
            method: None,
            path_contains: Some(path_contains.to_owned()),
            status: None,
            retry_after: None,
            latency_ms: None,
            redirect_to: None,
            redirect_status: None,
            link_next: None,
            answer_lost: false,
            count: 1,
        }
    }
}
