use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use ring::digest;
use serde_json::Value;
use terrapod_shared::db::schema::runs;
use terrapod_shared::runs::RunCreation;

use crate::helpers::{
    assert_error, record_pull_request, record_push, sha, spawn_app, workspace_id,
};

fn created_run(creation: RunCreation) -> String {
    match creation {
        RunCreation::Created { run_id, .. } => run_id.to_string(),
        other => panic!("expected a new run, got {other:?}"),
    }
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_shown_with_every_attribute() {
    let app = spawn_app().await;
    let ws_json = app.create_linked_workspace("w").await;
    let ws = workspace_id(&ws_json);
    // A push run takes the workspace's auto-apply as it is when the run is recorded.
    let patched = app
        .patch(
            &format!("/api/v2/workspaces/{ws}"),
            &serde_json::json!({"data": {"type": "workspaces", "attributes": {"auto-apply": true}}}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let push = created_run(record_push(&app.pool, &ws, &sha(0xabc), None, b"tree").await);
    let pr = created_run(record_pull_request(&app.pool, &ws, &sha(0xdef), 12).await);

    let list: Value = app
        .get(&format!("/api/v2/workspaces/{ws}/runs"))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![pr.as_str(), push.as_str()]);
    assert_eq!(list["meta"]["pagination"]["total-count"], 2);

    let shown: Value = app
        .get(&format!("/api/v2/runs/{push}"))
        .await
        .json()
        .await
        .unwrap();
    let attrs = &shown["data"]["attributes"];
    assert_eq!(attrs["status"], "pending");
    assert_eq!(attrs["source"], "vcs");
    assert_eq!(attrs["plan-only"], false);
    assert_eq!(attrs["auto-apply"], true);
    assert_eq!(attrs["trigger-reason"], "push");
    assert_eq!(attrs["vcs-commit-sha"], sha(0xabc).as_str());
    assert_eq!(attrs["vcs-branch"], "main");
    assert_eq!(attrs["vcs-pull-request-number"], Value::Null);
    assert_eq!(
        attrs["message"],
        format!(
            "Triggered by commit {} on main: Add network",
            &sha(0xabc).as_str()[..8]
        )
    );
    assert!(attrs["created-at"].is_string());
    assert_eq!(
        shown["data"]["relationships"]["workspace"]["data"]["id"],
        ws.as_str()
    );

    let shown: Value = app
        .get(&format!("/api/v2/runs/{pr}"))
        .await
        .json()
        .await
        .unwrap();
    let attrs = &shown["data"]["attributes"];
    assert_eq!(attrs["plan-only"], true);
    assert_eq!(attrs["auto-apply"], false);
    assert_eq!(attrs["trigger-reason"], "pull_request");
    assert_eq!(attrs["vcs-branch"], "feature");
    assert_eq!(attrs["vcs-pull-request-number"], 12);
    assert_eq!(
        attrs["message"],
        "Speculative plan for PR #12: Try a change"
    );

    assert_error(app.get("/api/v2/runs/run-abcdefghijkmnopq").await, 404).await;
    assert_error(
        app.get("/api/v2/workspaces/ws-abcdefghijkmnopq/runs").await,
        404,
    )
    .await;
}

#[tokio::test]
async fn pending_runs_cancel_once() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let run = created_run(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let path = format!("/api/v2/runs/{run}/actions/cancel");
    let response = app.post(&path, &Value::Null).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["status"], "canceled");
    assert_error(app.post(&path, &Value::Null).await, 409).await;
    assert_error(
        app.post(
            "/api/v2/runs/run-abcdefghijkmnopq/actions/cancel",
            &Value::Null,
        )
        .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn plan_only_runs_cannot_be_applied_and_others_only_when_awaiting_confirmation() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let pr = created_run(record_pull_request(&app.pool, &ws, &sha(5), 1).await);
    let detail = assert_error(
        app.post(&format!("/api/v2/runs/{pr}/actions/apply"), &Value::Null)
            .await,
        409,
    )
    .await;
    assert_eq!(detail, "plan-only runs cannot be applied");

    let push = created_run(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let path = format!("/api/v2/runs/{push}/actions/apply");
    let detail = assert_error(app.post(&path, &Value::Null).await, 409).await;
    assert_eq!(detail, "a run cannot move from pending to confirmed");
    {
        let mut conn = app.connection().await;
        diesel::update(runs::table.filter(runs::id.eq(&push)))
            .set(runs::status.eq("planned"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let response = app.post(&path, &Value::Null).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["status"], "confirmed");
}

#[tokio::test]
async fn configuration_versions_show_their_tarball_digest_and_download_it() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let tarball = b"\x1f\x8bnot really gzip but bytes all the same".to_vec();
    let cv_id = match record_push(&app.pool, &ws, &sha(3), None, &tarball).await {
        RunCreation::Created {
            configuration_version_id,
            ..
        } => configuration_version_id,
        other => panic!("{other:?}"),
    };
    let shown: Value = app
        .get(&format!("/api/v2/configuration-versions/{cv_id}"))
        .await
        .json()
        .await
        .unwrap();
    let attrs = &shown["data"]["attributes"];
    assert_eq!(attrs["source"], "vcs");
    assert_eq!(attrs["status"], "uploaded");
    assert_eq!(attrs["speculative"], false);
    assert_eq!(attrs["vcs-commit-sha"], sha(3).as_str());
    assert_eq!(attrs["vcs-branch"], "main");
    assert_eq!(attrs["vcs-pull-request-number"], Value::Null);
    assert_eq!(attrs["working-directory"], "");
    assert_eq!(attrs["size"], tarball.len());
    assert_eq!(attrs["sha256"], hex_digest(&tarball));

    let download = app
        .get(&format!("/api/v2/configuration-versions/{cv_id}/download"))
        .await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/gzip");
    assert_eq!(download.bytes().await.unwrap().to_vec(), tarball);
    assert_error(
        app.get("/api/v2/configuration-versions/cv-abcdefghijkmnopq/download")
            .await,
        404,
    )
    .await;
    assert_error(
        app.get("/api/v2/configuration-versions/nonsense").await,
        404,
    )
    .await;
}

fn hex_digest(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
