//! The workspace event log: why a run exists, or why a change got none.

use serde_json::{json, Value};
use terrapod_poller::cache::CycleCache;
use terrapod_poller::poll::{poll_workspace, Trigger};
use terrapod_test_support::{GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY};
use terrapod_vcs_sim::{Kind, NewPull, Simulator};

use crate::helpers::{assert_error, spawn_app, workspace_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_explains_runs_and_the_changes_that_got_none() {
    let app = spawn_app().await;
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(1234, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(56, 1234, "acme", None);
    sim.create_repo(
        Kind::Github,
        "acme/mono",
        &[("README.md", "r"), ("envs/prod/main.tf", "")],
    );
    let connection: Value = app
        .post(
            "/api/v2/organizations/default/vcs-connections",
            &json!({"data": {"type": "vcs-connections", "attributes": {
                "name": "gh", "provider": "github", "server-url": sim.url(),
                "github-app-id": 1234, "github-installation-id": 56,
                "private-key": GITHUB_APP_TEST_KEY}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let workspace: Value = app
        .post(
            "/api/v2/organizations/default/workspaces",
            &json!({"data": {"type": "workspaces", "attributes": {
                "name": "prod", "vcs-repo-url": "https://github.com/acme/mono",
                "working-directory": "envs/prod"},
                "relationships": {"vcs-connection": {"data": {"id": connection["data"]["id"], "type": "vcs-connections"}}}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = workspace_id(&workspace["data"]);
    let ctx = app.poller_context(&app.vhost.url(), "3600");
    let poll = || async {
        poll_workspace(&ctx, &CycleCache::default(), &id, Trigger::Message)
            .await
            .unwrap()
    };
    poll().await;
    sim.commit(
        Kind::Github,
        "acme/mono",
        "main",
        "Docs",
        &[("README.md", "new")],
    )
    .await;
    poll().await;
    // A pull request from a fork: never planned, and the log says so.
    sim.create_repo(Kind::Github, "mallory/mono", &[("envs/prod/main.tf", "")]);
    sim.commit(
        Kind::Github,
        "mallory/mono",
        "evil",
        "x",
        &[("envs/prod/x.tf", "x")],
    )
    .await;
    sim.open_pull(
        Kind::Github,
        "acme/mono",
        NewPull {
            head: "evil".into(),
            base: Some("main".into()),
            title: "Innocent".into(),
            draft: false,
            head_repo: Some("mallory/mono".into()),
        },
    )
    .await;
    poll().await;
    poll().await;

    let log: Value = app
        .get(&format!("/api/v2/workspaces/{id}/vcs-events"))
        .await
        .json()
        .await
        .unwrap();
    let events = log["data"].as_array().unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["attributes"]["kind"].as_str().unwrap())
        .collect();
    // Newest first; each decision once, however many polls saw it.
    assert_eq!(kinds, vec!["skipped", "skipped", "run-created"], "{log}");
    assert!(events[0]["attributes"]["message"]
        .as_str()
        .unwrap()
        .contains("from a fork"));
    assert_eq!(events[0]["attributes"]["pull-request-number"], 1);
    assert!(events[1]["attributes"]["message"]
        .as_str()
        .unwrap()
        .contains("no changed file matches the triggers"));
    let created = &events[2];
    assert_eq!(created["type"], "vcs-events");
    assert!(created["relationships"]["run"]["data"]["id"]
        .as_str()
        .unwrap()
        .starts_with("run-"));
    assert!(created["attributes"]["commit-sha"].as_str().unwrap().len() == 40);
    assert_eq!(log["meta"]["pagination"]["total-count"], 3);
    assert!(!log.to_string().contains("BEGIN RSA"), "never a credential");
    // A provider error is logged when it appears, not at every poll that meets it.
    sim.inject_fault(terrapod_vcs_sim::fault("/branches/", 404, 100));
    poll().await;
    poll().await;
    sim.clear_faults();
    let log: Value = app
        .get(&format!("/api/v2/workspaces/{id}/vcs-events"))
        .await
        .json()
        .await
        .unwrap();
    let errors: Vec<&Value> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["attributes"]["kind"] == "poll-error")
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0]["attributes"]["message"]
        .as_str()
        .unwrap()
        .contains("not found"));
    assert_error(
        app.get("/api/v2/workspaces/ws-doesnotexist0000/vcs-events")
            .await,
        404,
    )
    .await;
}
