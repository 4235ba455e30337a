//! Immediate polls as the API asks for them: bursts cost one queued poll, a PATCH
//! during a poll keeps that poll from recording anything for the old settings, and
//! large archives are served whole from their chunks.

use serde_json::{json, Value};
use terrapod_poller::cache::CycleCache;
use terrapod_poller::poll::{poll_workspace, PollOutcome, Trigger};
use terrapod_shared::queue::PollReason;
use terrapod_test_support::{GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY};
use terrapod_vcs_sim::{Fault, Kind, Simulator};

use crate::helpers::{drain_poll_messages, record_push, sha, spawn_app, workspace_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_poll_vcs_costs_one_queued_poll_and_one_more_once_it_is_taken() {
    let app = spawn_app().await;
    let workspace = app.create_linked_workspace("burst").await;
    let id = workspace["id"].as_str().unwrap();
    assert_eq!(drain_poll_messages(&app).await.len(), 1, "the link's poll");
    let path = format!("/api/v2/workspaces/{id}/actions/poll-vcs");
    for _ in 0..20 {
        let response = app.post(&path, &Value::Null).await;
        assert_eq!(response.status(), 202);
    }
    let queued = drain_poll_messages(&app).await;
    assert_eq!(queued.len(), 1, "twenty requests, one queued poll");
    assert_eq!(queued[0].reason, PollReason::Manual);
    // The poller took it (drained): a request during that poll queues one more.
    for _ in 0..5 {
        assert_eq!(app.post(&path, &Value::Null).await.status(), 202);
    }
    assert_eq!(drain_poll_messages(&app).await.len(), 1);
}

/// A GitHub connection to the simulator, and a workspace on `acme/old` whose poll is
/// under way, slowed down in its archive download; returns the connection's id, the
/// workspace, the head of `acme/new` and the poll's task.
async fn poll_under_way(
    app: &crate::helpers::TestApp,
    sim: &Simulator,
) -> (
    String,
    terrapod_shared::ids::WorkspaceId,
    String,
    tokio::task::JoinHandle<Result<PollOutcome, terrapod_poller::poll::PollError>>,
) {
    sim.add_github_app(1234, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(55, 1234, "acme", None);
    sim.create_repo(Kind::Github, "acme/old", &[("old.tf", "")]);
    let new_head = sim.create_repo(Kind::Github, "acme/new", &[("new.tf", "")]);
    let connection: Value = app
        .post(
            "/api/v2/organizations/default/vcs-connections",
            &json!({"data": {"type": "vcs-connections", "attributes": {
                "name": "gh", "provider": "github", "server-url": sim.url(),
                "github-app-id": 1234, "github-installation-id": 55,
                "private-key": GITHUB_APP_TEST_KEY}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let connection_id = connection["data"]["id"].as_str().unwrap().to_owned();
    let response = app
        .create_workspace(
            "moving",
            Some(&connection_id),
            "https://github.com/acme/old",
        )
        .await;
    let workspace = workspace_id(&response.json::<Value>().await.unwrap()["data"]);
    sim.inject_fault(Fault {
        latency_ms: Some(1_500),
        ..Fault::matching("/tarball/")
    });
    let ctx = app.poller_context(&app.vhost.url(), "3600");
    let in_flight = {
        let workspace = workspace.clone();
        tokio::spawn(async move {
            poll_workspace(&ctx, &CycleCache::default(), &workspace, Trigger::Message).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    (connection_id, workspace, new_head, in_flight)
}

async fn total_runs(app: &crate::helpers::TestApp, workspace: &str) -> Value {
    let runs: Value = app
        .get(&format!("/api/v2/workspaces/{workspace}/runs"))
        .await
        .json()
        .await
        .unwrap();
    runs["meta"]["pagination"]["total-count"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_during_a_poll_keeps_it_from_recording_a_run_for_the_old_repository() {
    let app = spawn_app().await;
    let sim = Simulator::start().await.unwrap();
    let (_, workspace, new_head, in_flight) = poll_under_way(&app, &sim).await;
    let patched = app
        .patch(
            &format!("/api/v2/workspaces/{workspace}"),
            &json!({"data": {"type": "workspaces", "attributes": {"vcs-repo-url": "https://github.com/acme/new"}}}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    // The poll in flight notices, reads the workspace again under its lock, and
    // polls the new repository instead: never a run for the old one.
    let outcome = in_flight.await.unwrap().unwrap();
    assert!(
        matches!(outcome, PollOutcome::Polled(ref report) if report.runs_created == 1),
        "{outcome:?}"
    );
    let runs: Value = app
        .get(&format!("/api/v2/workspaces/{workspace}/runs"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(runs["meta"]["pagination"]["total-count"], 1, "{runs}");
    assert_eq!(runs["data"][0]["attributes"]["vcs-commit-sha"], new_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabling_the_connection_during_a_poll_keeps_it_from_recording_anything() {
    let app = spawn_app().await;
    let sim = Simulator::start().await.unwrap();
    let (connection, workspace, _, in_flight) = poll_under_way(&app, &sim).await;
    let disabled = app
        .patch(
            &format!("/api/v2/vcs-connections/{connection}"),
            &json!({"data": {"type": "vcs-connections", "attributes": {"status": "disabled"}}}),
        )
        .await;
    assert_eq!(disabled.status(), 200);
    let outcome = in_flight.await.unwrap().unwrap();
    assert!(matches!(outcome, PollOutcome::Polled(ref report) if report.runs_created == 0));
    assert_eq!(total_runs(&app, workspace.as_str()).await, 0);
    let row: Value = app
        .get(&format!("/api/v2/workspaces/{workspace}"))
        .await
        .json()
        .await
        .unwrap();
    let error = row["data"]["attributes"]["vcs-last-error"]
        .as_str()
        .unwrap();
    assert!(error.contains("is disabled"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_archive_is_stored_in_chunks_and_downloaded_whole() {
    let app = spawn_app().await;
    let workspace = app.create_linked_workspace("large").await;
    // 3.5 MiB of varied bytes: four chunks of at most 1 MiB.
    let tarball: Vec<u8> = (0..(7u32 << 19))
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    record_push(
        &app.pool,
        &workspace_id(&workspace),
        &sha(1),
        None,
        &tarball,
    )
    .await;
    let runs: Value = app
        .get(&format!(
            "/api/v2/workspaces/{}/runs",
            workspace["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let cv = runs["data"][0]["relationships"]["configuration-version"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .get(&format!("/api/v2/configuration-versions/{cv}/download"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        tarball.len().to_string().as_str()
    );
    let body = response.bytes().await.unwrap();
    assert!(
        body[..] == tarball[..],
        "the download is the stored archive"
    );
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use terrapod_shared::db::schema::configuration_archive_chunks;
    let chunks: i64 = configuration_archive_chunks::table
        .count()
        .get_result(&mut app.connection().await)
        .await
        .unwrap();
    assert_eq!(chunks, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_enabling_a_connection_clears_its_workspaces_errors_and_polls_them_now() {
    let app = spawn_app().await;
    let workspace = app.create_linked_workspace("paused").await;
    let id = workspace["id"].as_str().unwrap();
    let connection = workspace["relationships"]["vcs-connection"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let connection_path = format!("/api/v2/vcs-connections/{connection}");
    let patch = |attributes: Value| {
        let (app, path) = (&app, connection_path.clone());
        async move {
            let response = app
                .patch(
                    &path,
                    &json!({"data": {"type": "vcs-connections", "attributes": attributes}}),
                )
                .await;
            assert_eq!(response.status(), 200);
        }
    };
    // Eventually the queued polls appear: they are published after the response.
    let polls_for = |expected: usize| {
        let app = &app;
        async move {
            let mut queued = Vec::new();
            for _ in 0..50 {
                queued.extend(drain_poll_messages(app).await);
                if queued.len() >= expected {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            queued
        }
    };
    assert_eq!(drain_poll_messages(&app).await.len(), 1, "the link's poll");
    patch(json!({"status": "disabled"})).await;
    // What the poller records while the connection is disabled.
    let mut conn = app.connection().await;
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use terrapod_shared::db::schema::workspaces;
        diesel::update(workspaces::table.filter(workspaces::id.eq(id)))
            .set((
                workspaces::vcs_last_error.eq(format!(
                    "VCS connection {connection} is disabled; VCS runs are paused"
                )),
                workspaces::vcs_last_error_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        drain_poll_messages(&app).await.is_empty(),
        "disabling polls nothing"
    );

    patch(json!({"status": "active"})).await;
    let shown: Value = app
        .get(&format!("/api/v2/workspaces/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["data"]["attributes"]["vcs-last-error"], Value::Null);
    assert_eq!(
        shown["data"]["attributes"]["vcs-last-error-at"],
        Value::Null
    );
    let queued = polls_for(1).await;
    assert_eq!(queued.len(), 1, "re-enabling queues one poll");
    assert_eq!(queued[0].workspace_id, id);
    assert_eq!(queued[0].reason, PollReason::Linked);

    // New credentials on an active connection are tried at once too; a rename is not.
    patch(json!({"private-key": terrapod_test_support::GITHUB_APP_TEST_KEY})).await;
    assert_eq!(polls_for(1).await.len(), 1, "a credential change polls");
    patch(json!({"name": "renamed"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        drain_poll_messages(&app).await.is_empty(),
        "a rename polls nothing"
    );
}
