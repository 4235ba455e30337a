//! Spawns the real API on a random port against a fresh database.

use std::collections::HashMap;

use diesel_async::AsyncPgConnection;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use terrapod_api::startup::Application;
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::{self, DbPool};
use terrapod_shared::domain::Role;
use terrapod_shared::{tokens, Settings};
use terrapod_test_support::{TestDatabase, TestVhost, GITHUB_APP_TEST_KEY};

pub struct TestApp {
    pub address: String,
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub pool: DbPool,
    pub admin_token: String,
    pub member_token: String,
    pub encryption_key: Option<String>,
    pub client: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// `configure` may add or remove environment variables before the settings are read.
pub async fn spawn_app_with(configure: impl FnOnce(&mut HashMap<&'static str, String>)) -> TestApp {
    let db = TestDatabase::new().await;
    let vhost = TestVhost::new();
    let mut env: HashMap<&'static str, String> = HashMap::new();
    env.insert("TERRAPOD_DATABASE__URL", db.url().to_owned());
    env.insert("TERRAPOD_AMQP__URL", vhost.url());
    env.insert("TERRAPOD_API__LISTEN", "127.0.0.1:0".to_owned());
    env.insert("TERRAPOD_ENCRYPTION__KEY", KeyRing::generate_key());
    configure(&mut env);
    let settings = Settings::from_lookup(|name| env.get(name).cloned()).expect("test settings");
    let pool = db::api_pool(db.url(), "terrapod-api-test", 8).expect("pool");
    let app = Application::build(settings, pool.clone()).expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());

    let mut conn = pool.get().await.expect("connection");
    let admin_token = tokens::generate();
    let member_token = tokens::generate();
    tokens::store(&mut conn, &admin_token, Role::Admin, "test admin")
        .await
        .unwrap();
    tokens::store(&mut conn, &member_token, Role::Member, "test member")
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    TestApp {
        address,
        db,
        vhost,
        pool,
        admin_token: admin_token.expose_secret().to_owned(),
        member_token: member_token.expose_secret().to_owned(),
        encryption_key: env.get("TERRAPOD_ENCRYPTION__KEY").cloned(),
        client: reqwest::Client::new(),
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.address, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.api+json")
                .body(body);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, Some(&self.admin_token), None)
            .await
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Response {
        self.request(
            method,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, &self.admin_token, body)
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::PATCH, path, &self.admin_token, body)
            .await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path, Some(&self.admin_token), None)
            .await
    }

    /// A poller's context for this app's database, `amqp_url` and poll `interval`.
    pub fn poller_context(
        &self,
        amqp_url: &str,
        interval: &str,
    ) -> std::sync::Arc<terrapod_poller::poll::PollContext> {
        let env: Vec<(&str, String)> = vec![
            ("TERRAPOD_DATABASE__URL", self.db.url().to_owned()),
            ("TERRAPOD_AMQP__URL", amqp_url.to_owned()),
            (
                "TERRAPOD_ENCRYPTION__KEY",
                self.encryption_key.clone().unwrap(),
            ),
            ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", interval.to_owned()),
        ];
        let settings = Settings::from_lookup(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
        .unwrap();
        terrapod_poller::context(settings).unwrap()
    }

    pub async fn connection(&self) -> AsyncPgConnection {
        self.db.connection().await
    }

    /// The stored (encrypted) credential of the app's only VCS connection.
    pub async fn stored_credential(&self) -> String {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use terrapod_shared::db::schema::vcs_connections;
        let mut conn = self.connection().await;
        vcs_connections::table
            .select(vcs_connections::encrypted_credential.assume_not_null())
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// The stored (encrypted) credential of one connection.
    pub async fn stored_credential_of(&self, id: &str) -> String {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use terrapod_shared::db::schema::vcs_connections;
        let mut conn = self.connection().await;
        vcs_connections::table
            .filter(vcs_connections::id.eq(id))
            .select(vcs_connections::encrypted_credential.assume_not_null())
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// Creates a GitHub App connection and returns its JSON:API resource.
    pub async fn create_github_connection(&self, name: &str, installation_id: i64) -> Value {
        let response = self
            .post(
                "/api/v2/organizations/default/vcs-connections",
                &json!({"data": {"type": "vcs-connections", "attributes": {
                    "name": name,
                    "provider": "github",
                    "github-app-id": 1234,
                    "github-installation-id": installation_id,
                    "github-account-login": "acme",
                    "github-account-type": "Organization",
                    "private-key": GITHUB_APP_TEST_KEY,
                }}}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["data"].clone()
    }

    pub async fn create_gitlab_connection(&self, name: &str, token: &str) -> Value {
        let response = self
            .post(
                "/api/v2/organizations/default/vcs-connections",
                &json!({"data": {"type": "vcs-connections", "attributes": {
                    "name": name, "provider": "gitlab", "token": token,
                }}}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["data"].clone()
    }

    /// Creates a workspace linked to `connection_id` (if any) at `url`.
    pub async fn create_workspace(
        &self,
        name: &str,
        connection_id: Option<&str>,
        url: &str,
    ) -> Response {
        let relationships = match connection_id {
            Some(id) => json!({"vcs-connection": {"data": {"id": id, "type": "vcs-connections"}}}),
            None => json!({}),
        };
        self.post(
            "/api/v2/organizations/default/workspaces",
            &json!({"data": {"type": "workspaces", "attributes": {"name": name, "vcs-repo-url": url}, "relationships": relationships}}),
        )
        .await
    }

    pub async fn create_linked_workspace(&self, name: &str) -> Value {
        let connection = self
            .create_github_connection(&format!("gh-for-{name}"), rand_installation())
            .await;
        let response = self
            .create_workspace(
                name,
                connection["id"].as_str(),
                "https://github.com/acme/infra",
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["data"].clone()
    }
}

pub fn rand_installation() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static NEXT: AtomicI64 = AtomicI64::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Asserts a JSON:API error response with `status` and returns its detail.
pub async fn assert_error(response: Response, status: u16) -> String {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "body: {body}");
    assert_eq!(content_type, "application/vnd.api+json");
    let error = &body["errors"][0];
    assert_eq!(error["status"], status.to_string(), "{body}");
    assert!(error["title"].is_string(), "{body}");
    error["detail"].as_str().expect("detail").to_owned()
}

/// Takes every message waiting in the test's poll queue, as a poller would: the
/// workspaces' queued marks are cleared, so later requests queue new messages.
pub async fn drain_poll_messages(app: &TestApp) -> Vec<terrapod_shared::queue::PollMessage> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let connection = terrapod_shared::queue::connect(&app.vhost.url(), "test-drain")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    terrapod_shared::queue::declare_topology(&channel)
        .await
        .unwrap();
    let mut messages: Vec<terrapod_shared::queue::PollMessage> = Vec::new();
    while let Some(message) = channel
        .basic_get(
            terrapod_shared::queue::POLL_QUEUE.into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
    {
        messages.push(serde_json::from_slice(&message.delivery.data).unwrap());
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
    let mut conn = app.connection().await;
    for message in &messages {
        if let Some(id) = terrapod_shared::queue::PollMessage::workspace(message) {
            terrapod_poller::store::take_poll_request(&mut conn, &id)
                .await
                .unwrap();
        }
    }
    messages
}

pub fn sha(n: u32) -> terrapod_shared::domain::CommitSha {
    terrapod_shared::domain::CommitSha::parse(&format!("{n:040x}")).unwrap()
}

pub fn workspace_id(workspace: &Value) -> terrapod_shared::ids::WorkspaceId {
    terrapod_shared::ids::WorkspaceId::parse(workspace["id"].as_str().unwrap()).unwrap()
}

/// Records a push run as the poller would.
pub async fn record_push(
    pool: &DbPool,
    workspace: &terrapod_shared::ids::WorkspaceId,
    commit: &terrapod_shared::domain::CommitSha,
    previous: Option<&str>,
    tarball: &[u8],
) -> terrapod_shared::runs::RunCreation {
    use terrapod_shared::runs::{create_vcs_run, NewVcsRun, VcsTrigger};
    let mut conn = pool.get().await.unwrap();
    let archive = terrapod_shared::archives::store_bytes(&mut conn, tarball)
        .await
        .unwrap();
    let settings_generation = generation(&mut conn, workspace).await;
    create_vcs_run(
        &mut conn,
        NewVcsRun {
            workspace_id: workspace,
            settings_generation,
            commit_sha: commit,
            trigger: VcsTrigger::Push {
                branch: terrapod_shared::domain::BranchName::parse("main").unwrap(),
                commit_title: Some("Add network".into()),
                previous_sha: previous.map(str::to_owned),
            },
            working_directory: &Default::default(),
            archive: &archive,
            ingress: test_ingress(),
        },
    )
    .await
    .unwrap()
}

/// Records a pull-request run as the poller would.
pub async fn record_pull_request(
    pool: &DbPool,
    workspace: &terrapod_shared::ids::WorkspaceId,
    commit: &terrapod_shared::domain::CommitSha,
    number: i64,
) -> terrapod_shared::runs::RunCreation {
    use terrapod_shared::runs::{create_vcs_run, NewVcsRun, VcsTrigger};
    let mut conn = pool.get().await.unwrap();
    let archive = terrapod_shared::archives::store_bytes(
        &mut conn,
        format!("pr {number} at {commit}").as_bytes(),
    )
    .await
    .unwrap();
    let settings_generation = generation(&mut conn, workspace).await;
    create_vcs_run(
        &mut conn,
        NewVcsRun {
            workspace_id: workspace,
            settings_generation,
            commit_sha: commit,
            trigger: VcsTrigger::PullRequest {
                number,
                head_ref: "feature".into(),
                title: "Try a change".into(),
            },
            working_directory: &Default::default(),
            archive: &archive,
            ingress: test_ingress(),
        },
    )
    .await
    .unwrap()
}

/// The workspace's current settings generation, as a poll would read it.
pub async fn generation(
    conn: &mut diesel_async::AsyncPgConnection,
    workspace: &terrapod_shared::ids::WorkspaceId,
) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use terrapod_shared::db::schema::workspaces;
    workspaces::table
        .find(workspace)
        .select(workspaces::vcs_settings_generation)
        .first(conn)
        .await
        .unwrap()
}

/// What a poll of github.com/acme/infra would know.
pub fn test_ingress() -> terrapod_shared::runs::Ingress<'static> {
    terrapod_shared::runs::Ingress {
        provider: terrapod_shared::domain::Provider::GitHub,
        identifier: "acme/infra",
        web_base: "https://github.com",
        on_default_branch: true,
        sender: Some("octocat"),
        compare_base: None,
    }
}
