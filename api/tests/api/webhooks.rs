//! Webhooks and immediate polls, with the poll interval at an hour so that only
//! webhooks and messages can make a run appear.

use std::time::{Duration, Instant};

use reqwest::Method;
use ring::hmac;
use serde_json::{json, Value};
use terrapod_shared::queue::PollReason;
use terrapod_test_support::{TcpProxy, GITHUB_APP_TEST_PUBLIC_KEY};
use terrapod_vcs_sim::{Kind, NewPull, Simulator};

use crate::helpers::{assert_error, drain_poll_messages, spawn_app_with, TestApp};

const GITHUB_SECRET: &str = "gh-webhook-secret";
const GITLAB_SECRET: &str = "gl-webhook-secret";

async fn app_with_webhooks(extra: &[(&'static str, String)]) -> TestApp {
    let extra = extra.to_vec();
    spawn_app_with(move |env| {
        env.insert("TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET", GITHUB_SECRET.into());
        env.insert("TERRAPOD_VCS__GITLAB__WEBHOOK_SECRET", GITLAB_SECRET.into());
        env.insert("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "3600".into());
        for (k, v) in extra {
            env.insert(k, v);
        }
    })
    .await
}

fn signed(body: &[u8], secret: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

async fn github_hook(
    app: &TestApp,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/api/v2/vcs-events/github", app.address))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Hub-Signature-256", signature);
    }
    request.send().await.unwrap()
}

async fn gitlab_hook(
    app: &TestApp,
    event: &str,
    token: &str,
    uuid: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .post(format!("{}/api/v2/vcs-events/gitlab", app.address))
        .header("X-Gitlab-Event", event)
        .header("X-Gitlab-Token", token)
        .header("X-Gitlab-Event-UUID", uuid)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn push_payload(repo: &str, installation: Option<i64>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": "0".repeat(40),
        "repository": {"full_name": repo},
        "installation": installation.map(|id| json!({"id": id})),
    }))
    .unwrap()
}

async fn json_message(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    response.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A running poller (interval one hour) for this app's database and vhost.
async fn start_poller(
    app: &TestApp,
    amqp_url: &str,
    interval: &str,
) -> tokio::sync::watch::Sender<bool> {
    let ctx = app.poller_context(amqp_url, interval);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(terrapod_poller::run(ctx, listener, shutdown));
    stop
}

async fn github_world(app: &TestApp, sim: &Simulator, installation: i64) -> (String, String) {
    sim.add_github_app(1234, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(installation, 1234, "acme", None);
    let mut body = json!({"data": {"type": "vcs-connections", "attributes": {
        "name": format!("gh-{installation}"), "provider": "github", "server-url": sim.url(),
        "github-app-id": 1234, "github-installation-id": installation,
        "private-key": terrapod_test_support::GITHUB_APP_TEST_KEY,
    }}});
    let connection: Value = app
        .post("/api/v2/organizations/default/vcs-connections", &body)
        .await
        .json()
        .await
        .unwrap();
    let connection_id = connection["data"]["id"].as_str().unwrap().to_owned();
    body = json!({"data": {"type": "workspaces",
        "attributes": {"name": format!("infra-{installation}"), "vcs-repo-url": "https://github.com/Acme/Infra", "vcs-branch": "main"},
        "relationships": {"vcs-connection": {"data": {"id": connection_id, "type": "vcs-connections"}}}}});
    let response = app
        .post("/api/v2/organizations/default/workspaces", &body)
        .await;
    assert_eq!(response.status(), 201);
    let workspace: Value = response.json().await.unwrap();
    (
        connection_id,
        workspace["data"]["id"].as_str().unwrap().to_owned(),
    )
}

/// A GitLab connection to the simulator and one workspace linked through it to `url`.
async fn gitlab_workspace(app: &TestApp, sim: &Simulator, token: &str, url: &str) -> String {
    let connection: Value = app
        .post(
            "/api/v2/organizations/default/vcs-connections",
            &json!({"data": {"type": "vcs-connections", "attributes": {"name": "gl", "provider": "gitlab", "server-url": sim.url(), "token": token}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let response = app
        .post(
            "/api/v2/organizations/default/workspaces",
            &json!({"data": {"type": "workspaces", "attributes": {"name": "gitlab-linked", "vcs-repo-url": url},
                "relationships": {"vcs-connection": {"data": {"id": connection["data"]["id"], "type": "vcs-connections"}}}}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Makes the simulator deliver its signed webhooks of `kind` to the app.
fn deliver_webhooks_to(app: &TestApp, sim: &Simulator, kind: Kind) {
    let (path, secret) = match kind {
        Kind::Github => ("github", GITHUB_SECRET),
        Kind::Gitlab => ("gitlab", GITLAB_SECRET),
    };
    sim.add_webhook(
        kind,
        &format!("{}/api/v2/vcs-events/{path}", app.address),
        secret,
    );
}

async fn wait_for_run(app: &TestApp, workspace: &str, sha: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let runs: Value = app
            .get(&format!("/api/v2/workspaces/{workspace}/runs"))
            .await
            .json()
            .await
            .unwrap();
        if let Some(run) = runs["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["attributes"]["vcs-commit-sha"] == sha)
        {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "no run for {sha}: {runs}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_push_webhook_makes_the_run_appear_without_waiting_for_the_schedule() {
    let app = app_with_webhooks(&[]).await;
    let sim = Simulator::start().await.unwrap();
    let first = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let _poller = start_poller(&app, &app.vhost.url(), "3600").await;
    let (_, workspace) = github_world(&app, &sim, 77).await;
    // Linking queued an immediate poll: the first run needs no webhook.
    wait_for_run(&app, &workspace, &first).await;
    deliver_webhooks_to(&app, &sim, Kind::Github);
    let second = sim
        .commit(
            Kind::Github,
            "acme/infra",
            "main",
            "Add VPC",
            &[("vpc.tf", "")],
        )
        .await;
    let run = wait_for_run(&app, &workspace, &second).await;
    assert_eq!(run["attributes"]["trigger-reason"], "push");
    assert_eq!(sim.deliveries().last().unwrap().status, Some(202));

    sim.commit(
        Kind::Github,
        "acme/infra",
        "feature",
        "Try",
        &[("f.tf", "")],
    )
    .await;
    let pull = NewPull {
        head: "feature".into(),
        base: Some("main".into()),
        title: "Try it".into(),
        draft: false,
        head_repo: None,
    };
    sim.open_pull(Kind::Github, "acme/infra", pull).await;
    let head = sim.sim().repo(Kind::Github, "acme/infra").unwrap().branches["feature"].clone();
    let plan = wait_for_run(&app, &workspace, &head).await;
    assert_eq!(plan["attributes"]["plan-only"], true);
    // The event log says which deliveries asked for polls.
    let log: Value = app
        .get(&format!(
            "/api/v2/workspaces/{workspace}/vcs-events?page[size]=100"
        ))
        .await
        .json()
        .await
        .unwrap();
    let received: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["attributes"]["kind"] == "webhook-received")
        .map(|event| event["attributes"]["message"].as_str().unwrap())
        .collect();
    assert!(received.len() >= 2, "{log}");
    assert!(
        received.iter().all(
            |m| m.starts_with("github webhook for acme/infra (delivery ")
                && m.ends_with("): poll queued")
        ),
        "{received:?}"
    );
    let metrics = app
        .request(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"terrapod_vcs_webhooks_received_total{provider="github",result="accepted"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_github_rejection_path_answers_as_specified() {
    let app = app_with_webhooks(&[]).await;
    let body = push_payload("acme/infra", None);
    let response = github_hook(&app, "push", "d-1", &body, None).await;
    let detail = assert_error(response, 401).await;
    assert!(detail.contains("X-Hub-Signature-256"));
    let wrong = github_hook(
        &app,
        "push",
        "d-1",
        &body,
        Some(signed(&body, "not-the-secret")),
    )
    .await;
    assert_error(wrong, 401).await;
    let tampered = github_hook(
        &app,
        "push",
        "d-1",
        b"{\"repository\":{}}",
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_error(tampered, 401).await;
    let garbage = b"{not json";
    assert_error(
        github_hook(
            &app,
            "push",
            "d-2",
            garbage,
            Some(signed(garbage, GITHUB_SECRET)),
        )
        .await,
        400,
    )
    .await;
    let ping = github_hook(
        &app,
        "ping",
        "d-3",
        b"{}",
        Some(signed(b"{}", GITHUB_SECRET)),
    )
    .await;
    assert_eq!(json_message(ping, 200).await, "pong");
    let other = github_hook(
        &app,
        "issues",
        "d-4",
        b"{}",
        Some(signed(b"{}", GITHUB_SECRET)),
    )
    .await;
    assert_eq!(json_message(other, 200).await, "ignored");
    let huge = vec![b' '; 25 * 1024 * 1024 + 1];
    assert_error(
        github_hook(
            &app,
            "push",
            "d-5",
            &huge,
            Some(signed(&huge, GITHUB_SECRET)),
        )
        .await,
        413,
    )
    .await;
    let nobody = github_hook(
        &app,
        "push",
        "d-6",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(
        json_message(nobody, 202).await,
        "accepted",
        "accepted even when no workspace matches"
    );
    assert!(drain_poll_messages(&app).await.is_empty());

    let disabled = spawn_app_with(|_| {}).await;
    let response = disabled
        .client
        .post(format!("{}/api/v2/vcs-events/github", disabled.address))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_error(response, 404).await;
    let response = disabled
        .client
        .post(format!("{}/api/v2/vcs-events/gitlab", disabled.address))
        .send()
        .await
        .unwrap();
    assert_error(response, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_queue_nothing_more() {
    let app = app_with_webhooks(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let (_, workspace) = github_world(&app, &sim, 5).await;
    let linked = drain_poll_messages(&app).await;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].reason, PollReason::Linked);
    let body = push_payload("acme/infra", Some(5));
    let first = github_hook(
        &app,
        "push",
        "delivery-42",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(json_message(first, 202).await, "accepted");
    let again = github_hook(
        &app,
        "push",
        "delivery-42",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(json_message(again, 200).await, "duplicate");
    let messages = drain_poll_messages(&app).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        (messages[0].workspace_id.as_str(), messages[0].reason),
        (workspace.as_str(), PollReason::Webhook)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_reach_only_their_installations_workspaces() {
    let app = app_with_webhooks(&[]).await;
    let sim = Simulator::start().await.unwrap();
    let (_, first) = github_world(&app, &sim, 100).await;
    let (_, second) = github_world(&app, &sim, 200).await;
    drain_poll_messages(&app).await;
    let body = push_payload("ACME/infra", Some(200));
    github_hook(
        &app,
        "push",
        "scoped",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    let messages = drain_poll_messages(&app).await;
    let ids: Vec<&str> = messages.iter().map(|m| m.workspace_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![second.as_str()],
        "repository matched ignoring case, installation 200 only"
    );
    let unscoped = push_payload("acme/infra", None);
    github_hook(
        &app,
        "pull_request",
        "unscoped",
        &unscoped,
        Some(signed(&unscoped, GITHUB_SECRET)),
    )
    .await;
    let mut ids: Vec<String> = drain_poll_messages(&app)
        .await
        .into_iter()
        .map(|m| m.workspace_id)
        .collect();
    ids.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gitlab_push_and_merge_request_hooks_make_runs() {
    let app = app_with_webhooks(&[]).await;
    let sim = Simulator::start().await.unwrap();
    sim.add_gitlab_token("glpat-hooks", None);
    let first = sim.create_repo(Kind::Gitlab, "platform/net/core", &[("main.tf", "")]);
    let _poller = start_poller(&app, &app.vhost.url(), "3600").await;
    let workspace = gitlab_workspace(
        &app,
        &sim,
        "glpat-hooks",
        "git@gitlab.com:platform/net/core.git",
    )
    .await;
    wait_for_run(&app, &workspace, &first).await;
    deliver_webhooks_to(&app, &sim, Kind::Gitlab);
    let second = sim
        .commit(
            Kind::Gitlab,
            "platform/net/core",
            "main",
            "Push",
            &[("p.tf", "")],
        )
        .await;
    wait_for_run(&app, &workspace, &second).await;
    let feature = sim
        .commit(
            Kind::Gitlab,
            "platform/net/core",
            "feature",
            "MR work",
            &[("m.tf", "")],
        )
        .await;
    sim.open_pull(
        Kind::Gitlab,
        "platform/net/core",
        NewPull {
            head: "feature".into(),
            base: Some("main".into()),
            title: "An MR".into(),
            draft: false,
            head_repo: None,
        },
    )
    .await;
    let plan = wait_for_run(&app, &workspace, &feature).await;
    assert_eq!(plan["attributes"]["vcs-pull-request-number"], 1);
    assert!(
        sim.deliveries().iter().all(|d| d.status == Some(202)),
        "{:?}",
        sim.deliveries()
    );

    let wrong = gitlab_hook(&app, "Push Hook", "nope", "u-1", &json!({})).await;
    assert_error(wrong, 401).await;
    let other = gitlab_hook(&app, "Pipeline Hook", GITLAB_SECRET, "u-2", &json!({})).await;
    assert_eq!(json_message(other, 200).await, "ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_duplicates_and_edits_without_commits_queue_nothing() {
    let app = app_with_webhooks(&[]).await;
    let body = json!({"object_kind": "merge_request", "project": {"path_with_namespace": "g/p"},
        "object_attributes": {"action": "update", "iid": 1}});
    let sim = Simulator::start().await.unwrap();
    sim.add_gitlab_token("t", None);
    sim.create_repo(Kind::Gitlab, "g/p", &[("main.tf", "")]);
    gitlab_workspace(&app, &sim, "t", "https://gitlab.com/g/p").await;
    drain_poll_messages(&app).await;
    let edit = gitlab_hook(&app, "Merge Request Hook", GITLAB_SECRET, "u-edit", &body).await;
    assert_eq!(json_message(edit, 202).await, "accepted");
    assert!(
        drain_poll_messages(&app).await.is_empty(),
        "an edit without a new commit needs no poll"
    );
    let push = json!({"object_kind": "push", "project": {"path_with_namespace": "G/P"}});
    assert_eq!(
        json_message(
            gitlab_hook(&app, "Push Hook", GITLAB_SECRET, "u-1", &push).await,
            202
        )
        .await,
        "accepted"
    );
    assert_eq!(
        json_message(
            gitlab_hook(&app, "Push Hook", GITLAB_SECRET, "u-1", &push).await,
            200
        )
        .await,
        "duplicate"
    );
    assert_eq!(drain_poll_messages(&app).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_vcs_queues_a_poll_for_linked_workspaces_only() {
    let app = app_with_webhooks(&[]).await;
    let sim = Simulator::start().await.unwrap();
    let (_, workspace) = github_world(&app, &sim, 9).await;
    drain_poll_messages(&app).await;
    let response = app
        .post(
            &format!("/api/v2/workspaces/{workspace}/actions/poll-vcs"),
            &Value::Null,
        )
        .await;
    assert_eq!(response.status(), 202);
    let messages = drain_poll_messages(&app).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].reason, PollReason::Manual);
    let plain: Value = app
        .post(
            "/api/v2/organizations/default/workspaces",
            &json!({"data": {"type": "workspaces", "attributes": {"name": "plain"}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let plain_id = plain["data"]["id"].as_str().unwrap();
    assert_error(
        app.post(
            &format!("/api/v2/workspaces/{plain_id}/actions/poll-vcs"),
            &Value::Null,
        )
        .await,
        422,
    )
    .await;
    assert_error(
        app.post(
            "/api/v2/workspaces/ws-abcdefghijkmnopq/actions/poll-vcs",
            &Value::Null,
        )
        .await,
        404,
    )
    .await;
    let anonymous = app
        .request(
            Method::POST,
            &format!("/api/v2/workspaces/{workspace}/actions/poll-vcs"),
            None,
            None,
        )
        .await;
    assert_error(anonymous, 401).await;
    assert!(drain_poll_messages(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_down_webhooks_answer_503_crud_still_works_and_the_schedule_catches_up() {
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let app = {
        let vhost = terrapod_test_support::TestVhost::new();
        let url = vhost.url_via(&proxy.address());
        let mut app = app_with_webhooks(&[("TERRAPOD_AMQP__URL", url)]).await;
        // Keep the proxied vhost alive for the app's lifetime.
        app.vhost = vhost;
        app
    };
    let sim = Simulator::start().await.unwrap();
    let first = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    proxy.cut();
    // Linking still succeeds with the broker away.
    let (_, workspace) = github_world(&app, &sim, 3).await;
    let body = push_payload("acme/infra", Some(3));
    let response = github_hook(
        &app,
        "push",
        "down-1",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    let detail = assert_error(response, 503).await;
    assert!(detail.contains("schedule"), "{detail}");
    assert_error(
        app.post(
            &format!("/api/v2/workspaces/{workspace}/actions/poll-vcs"),
            &Value::Null,
        )
        .await,
        503,
    )
    .await;
    let ready = app.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        ready.status(),
        200,
        "a broker outage leaves the API degraded, not unready"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    // The schedule (a 2-second interval here) picks the change up without any message.
    let _poller = start_poller(&app, &app.vhost.url(), "2").await;
    wait_for_run(&app, &workspace, &first).await;
    // The broker is back: the same delivery is accepted now (it was not remembered).
    proxy.restore();
    let response = github_hook(
        &app,
        "push",
        "down-1",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(json_message(response, 202).await, "accepted");
}

/// Queues from a signed GitHub push for `repo` on installation 300: the workspace ids.
async fn workspaces_polled_by_push(app: &TestApp, repo: &str, delivery: &str) -> Vec<String> {
    let body = push_payload(repo, Some(300));
    let response = github_hook(
        app,
        "push",
        delivery,
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(response.status(), 202);
    drain_poll_messages(app)
        .await
        .into_iter()
        .map(|m| m.workspace_id)
        .collect()
}

#[tokio::test]
async fn a_workspace_linked_or_re_pointed_by_patch_is_matched_by_its_new_repository() {
    let app = app_with_webhooks(&[]).await;
    let connection = app.create_github_connection("gh", 300).await;
    let created = app.create_workspace("ws", None, "").await;
    assert_eq!(created.status(), 201);
    let workspace: Value = created.json().await.unwrap();
    let id = workspace["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v2/workspaces/{id}");
    let link = |url: &str| {
        json!({"data": {"type": "workspaces", "attributes": {"vcs-repo-url": url},
            "relationships": {"vcs-connection": {"data": {"id": connection["id"], "type": "vcs-connections"}}}}})
    };
    // Linked by PATCH.
    assert_eq!(
        app.patch(&path, &link("https://github.com/acme/one"))
            .await
            .status(),
        200
    );
    drain_poll_messages(&app).await;
    assert_eq!(
        workspaces_polled_by_push(&app, "acme/one", "d-1").await,
        vec![id.clone()]
    );
    // Re-pointed by PATCH: the new repository matches, the old one no longer does.
    let repointed = json!({"data": {"type": "workspaces", "attributes": {"vcs-repo-url": "https://github.com/acme/two"}}});
    assert_eq!(app.patch(&path, &repointed).await.status(), 200);
    drain_poll_messages(&app).await;
    assert_eq!(
        workspaces_polled_by_push(&app, "acme/two", "d-2").await,
        vec![id.clone()]
    );
    assert!(workspaces_polled_by_push(&app, "acme/one", "d-3")
        .await
        .is_empty());
}

/// Sends `head` (request line and headers, no body) on a raw connection and returns
/// the status of the answer, which must come without the body ever being sent.
async fn status_without_body(app: &TestApp, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("an answer");
    let line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

fn head(path: &str, headers: &[(&str, &str)], length: usize) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_are_refused_before_their_body_is_read() {
    let app = app_with_webhooks(&[]).await;
    // A GitLab hook with a wrong token: 401 at once, though its 1 MiB never arrives.
    let wrong = head(
        "/api/v2/vcs-events/gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
        1 << 20,
    );
    assert_eq!(status_without_body(&app, &wrong).await, 401);
    // The same for API routes: no token, and a member on an admin-only route.
    let anonymous = head(
        "/api/v2/organizations/default/vcs-connections",
        &[],
        1 << 20,
    );
    assert_eq!(status_without_body(&app, &anonymous).await, 401);
    let bearer = format!("Bearer {}", app.member_token);
    let member = head(
        "/api/v2/organizations/default/vcs-connections",
        &[("Authorization", &bearer)],
        1 << 20,
    );
    assert_eq!(status_without_body(&app, &member).await, 403);
    // A wrong token with an oversized declared body is still 401, not 413.
    let oversized = head(
        "/api/v2/vcs-events/gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
        100 << 20,
    );
    assert_eq!(status_without_body(&app, &oversized).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_body_that_never_arrives_times_out_and_bodies_in_flight_are_bounded() {
    let app =
        app_with_webhooks(&[("TERRAPOD_API__WEBHOOK_BODY_TIMEOUT_SECONDS", "5".into())]).await;
    let github = |length: usize| {
        head(
            "/api/v2/vcs-events/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", "sha256=00"),
            ],
            length,
        )
    };
    // A correct GitLab token still needs its body within the timeout.
    let slow = head(
        "/api/v2/vcs-events/gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", GITLAB_SECRET),
        ],
        1000,
    );
    assert_eq!(status_without_body(&app, &slow).await, 408);
    // Two 25 MiB deliveries being read hold 50 of the 64 MiB in flight: a third waits
    // briefly for room, then is told to come back (503), while both are still open.
    let held = [github(25 << 20), github(25 << 20)];
    let app = std::sync::Arc::new(app);
    let mut readers = Vec::new();
    for head in held {
        let app = app.clone();
        readers.push(tokio::spawn(async move {
            status_without_body(&app, &head).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_without_body(&app, &github(25 << 20)).await, 503);
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            408,
            "the held bodies time out in turn"
        );
    }
}

#[tokio::test]
async fn tag_pushes_queue_a_poll_on_both_providers() {
    let app = app_with_webhooks(&[]).await;
    let connection = app.create_github_connection("gh", 300).await;
    let created = app
        .create_workspace(
            "tags",
            connection["id"].as_str(),
            "https://github.com/acme/app",
        )
        .await;
    let id = created.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drain_poll_messages(&app).await;
    let body = serde_json::to_vec(&json!({
        "ref": "refs/tags/v1.2.0", "after": "1".repeat(40),
        "repository": {"full_name": "acme/app"}, "installation": {"id": 300},
    }))
    .unwrap();
    let response = github_hook(
        &app,
        "push",
        "tag-1",
        &body,
        Some(signed(&body, GITHUB_SECRET)),
    )
    .await;
    assert_eq!(response.status(), 202);
    let queued: Vec<String> = drain_poll_messages(&app)
        .await
        .into_iter()
        .map(|m| m.workspace_id)
        .collect();
    assert_eq!(queued, vec![id]);

    let gitlab = app.create_gitlab_connection("gl", "glpat-x").await;
    let created = app
        .create_workspace(
            "gl-tags",
            gitlab["id"].as_str(),
            "https://gitlab.com/group/app.git",
        )
        .await;
    let gl_id = created.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drain_poll_messages(&app).await;
    let tag_push = json!({"object_kind": "tag_push", "ref": "refs/tags/v1.2.0",
        "project": {"path_with_namespace": "group/app"}});
    let response = gitlab_hook(&app, "Tag Push Hook", GITLAB_SECRET, "t-1", &tag_push).await;
    assert_eq!(json_message(response, 202).await, "accepted");
    let queued: Vec<String> = drain_poll_messages(&app)
        .await
        .into_iter()
        .map(|m| m.workspace_id)
        .collect();
    assert_eq!(queued, vec![gl_id]);
}
