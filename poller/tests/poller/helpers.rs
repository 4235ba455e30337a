//! A world for poller tests: a fresh database, a vhost of its own, the simulator with
//! a GitHub App and a GitLab token, and one connection for each.

use std::collections::HashMap;
use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_poller::cache::CycleCache;
use terrapod_poller::poll::{poll_workspace, PollContext, PollOutcome, Trigger};
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::models::{NewVcsConnection, NewWorkspace, Run, Workspace};
use terrapod_shared::db::schema::{runs, vcs_connections, workspaces};
use terrapod_shared::domain::{ConnectionStatus, ExecutionMode, Provider};
use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
use terrapod_shared::Settings;
use terrapod_test_support::{
    TestDatabase, TestVhost, GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY,
};
use terrapod_vcs_sim::{Kind, NewPull, Simulator};

pub const GITLAB_TOKEN: &str = "glpat-poller-test-token";

pub struct World {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub sim: Simulator,
    pub key: String,
    pub github: VcsConnectionId,
    pub gitlab: VcsConnectionId,
}

impl World {
    pub async fn new() -> World {
        let db = TestDatabase::new().await;
        let vhost = TestVhost::new();
        let sim = Simulator::start().await.unwrap();
        sim.add_github_app(42, GITHUB_APP_TEST_PUBLIC_KEY);
        sim.add_installation(7, 42, "acme", None);
        sim.add_gitlab_token(GITLAB_TOKEN, None);
        let key = KeyRing::generate_key();
        let keys = KeyRing::parse(&key).unwrap();
        let mut conn = db.connection().await;
        let github = VcsConnectionId::generate();
        let gitlab = VcsConnectionId::generate();
        let github_key = keys.encrypt(GITHUB_APP_TEST_KEY);
        let gitlab_token = keys.encrypt(GITLAB_TOKEN);
        diesel::insert_into(vcs_connections::table)
            .values(vec![
                NewVcsConnection {
                    id: &github,
                    organization_name: "default",
                    name: "github",
                    provider: Provider::GitHub,
                    server_url: sim.url(),
                    status: ConnectionStatus::Active,
                    github_app_id: Some(42),
                    github_installation_id: Some(7),
                    github_account_login: Some("acme"),
                    github_account_type: Some("Organization"),
                    encrypted_credential: Some(&github_key),
                },
                NewVcsConnection {
                    id: &gitlab,
                    organization_name: "default",
                    name: "gitlab",
                    provider: Provider::GitLab,
                    server_url: sim.url(),
                    status: ConnectionStatus::Active,
                    github_app_id: None,
                    github_installation_id: None,
                    github_account_login: None,
                    github_account_type: None,
                    encrypted_credential: Some(&gitlab_token),
                },
            ])
            .execute(&mut conn)
            .await
            .unwrap();
        World {
            db,
            vhost,
            sim,
            key,
            github,
            gitlab,
        }
    }

    /// Environment for the poller; `overrides` win.
    pub fn env(&self, overrides: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("TERRAPOD_DATABASE__URL", self.db.url().to_owned()),
            ("TERRAPOD_AMQP__URL", self.vhost.url()),
            ("TERRAPOD_ENCRYPTION__KEY", self.key.clone()),
            ("TERRAPOD_POLLER__LISTEN", "127.0.0.1:0".to_owned()),
            ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "60".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    pub fn settings(&self, overrides: &[(&str, &str)]) -> Settings {
        let env = self.env(overrides);
        Settings::from_lookup(|name| env.get(name).cloned()).unwrap()
    }

    pub fn context(&self, overrides: &[(&str, &str)]) -> Arc<PollContext> {
        terrapod_poller::context(self.settings(overrides)).unwrap()
    }

    /// A context whose request budgets apply over `window` instead of 60 s.
    pub fn context_with_window(
        &self,
        overrides: &[(&str, &str)],
        window: std::time::Duration,
    ) -> Arc<PollContext> {
        terrapod_poller::context_with_window(self.settings(overrides), window).unwrap()
    }

    pub fn connection_for(&self, kind: Kind) -> &VcsConnectionId {
        match kind {
            Kind::Github => &self.github,
            Kind::Gitlab => &self.gitlab,
        }
    }

    /// A new repository (one empty `main.tf`) and a workspace tracking its `main`;
    /// returns the head SHA and the workspace.
    pub async fn repo_with_workspace(
        &self,
        kind: Kind,
        repo: &str,
        name: &str,
    ) -> (String, WorkspaceId) {
        let sha = self.sim.create_repo(kind, repo, &[("main.tf", "")]);
        (sha, self.workspace(name, kind, repo, "main").await)
    }

    /// A workspace linked to `repo` on the simulator (branch empty = default branch).
    pub async fn workspace(&self, name: &str, kind: Kind, repo: &str, branch: &str) -> WorkspaceId {
        let id = WorkspaceId::generate();
        let url = match kind {
            Kind::Github => format!("https://github.com/{repo}"),
            Kind::Gitlab => format!("https://gitlab.example.com/{repo}.git"),
        };
        let mut conn = self.db.connection().await;
        diesel::insert_into(workspaces::table)
            .values(NewWorkspace {
                id: &id,
                organization_name: "default",
                name,
                execution_mode: ExecutionMode::Remote,
                auto_apply: false,
                vcs_connection_id: Some(self.connection_for(kind)),
                vcs_repo_url: &url,
                vcs_repo_path: &repo.to_ascii_lowercase(),
                vcs_branch: branch,
                working_directory: "",
                // Every commit runs, as before file triggers existed.
                file_triggers_enabled: false,
                trigger_prefixes: &[],
                trigger_patterns: &[],
                speculative_enabled: true,
                vcs_tags_regex: None,
            })
            .execute(&mut conn)
            .await
            .unwrap();
        id
    }

    pub async fn runs(&self, workspace: &WorkspaceId) -> Vec<Run> {
        let mut conn = self.db.connection().await;
        runs::table
            .filter(runs::workspace_id.eq(workspace))
            .order(runs::created_at.asc())
            .select(Run::as_select())
            .load(&mut conn)
            .await
            .unwrap()
    }

    pub async fn all_runs(&self) -> Vec<Run> {
        let mut conn = self.db.connection().await;
        runs::table
            .select(Run::as_select())
            .load(&mut conn)
            .await
            .unwrap()
    }

    pub async fn row(&self, workspace: &WorkspaceId) -> Workspace {
        let mut conn = self.db.connection().await;
        workspaces::table
            .find(workspace)
            .select(Workspace::as_select())
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// The database's clock now.
    pub async fn now(&self) -> chrono::DateTime<chrono::Utc> {
        terrapod_poller::store::database_now(&mut self.db.connection().await)
            .await
            .unwrap()
    }

    /// Makes every workspace due now, as if the interval had passed.
    pub async fn make_all_due(&self) {
        let mut conn = self.db.connection().await;
        diesel::update(workspaces::table)
            .set(workspaces::vcs_last_attempt_at.eq(None::<chrono::DateTime<chrono::Utc>>))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

pub async fn poll(ctx: &PollContext, workspace: &WorkspaceId) -> PollOutcome {
    poll_workspace(ctx, &CycleCache::default(), workspace, Trigger::Message)
        .await
        .unwrap()
}

pub fn pull(head: &str, title: &str) -> NewPull {
    NewPull {
        head: head.into(),
        base: Some("main".into()),
        title: title.into(),
        draft: false,
        head_repo: None,
    }
}

pub fn polled(outcome: PollOutcome) -> (usize, Option<String>) {
    match outcome {
        PollOutcome::Polled(report) => (report.runs_created, report.error_summary()),
        other => panic!("expected a poll, got {other:?}"),
    }
}
