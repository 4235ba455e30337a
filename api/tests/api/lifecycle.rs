//! The run lifecycle over HTTP (SPEC section 9): executors' transitions, people's
//! apply, discard and cancel, the run's timestamps and actions, executor tokens, and
//! the outbox row each change writes.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use terrapod_shared::db::schema::{run_events_outbox, runs};
use terrapod_shared::domain::{Role, RunStatus};
use terrapod_shared::tokens;

use crate::helpers::{
    assert_error, record_pull_request, record_push, sha, spawn_app, workspace_id, TestApp,
};

fn created(creation: terrapod_shared::runs::RunCreation) -> String {
    match creation {
        terrapod_shared::runs::RunCreation::Created { run_id, .. } => run_id.to_string(),
        other => panic!("expected a new run, got {other:?}"),
    }
}

async fn executor_token(app: &TestApp) -> String {
    let mut conn = app.connection().await;
    let token = tokens::generate();
    tokens::store(&mut conn, &token, Role::Executor, "test executor")
        .await
        .unwrap();
    token.expose_secret().to_owned()
}

async fn set_status(app: &TestApp, run: &str, status: RunStatus) {
    let mut conn = app.connection().await;
    diesel::update(runs::table.filter(runs::id.eq(run)))
        .set(runs::status.eq(status))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The outbox rows of `run`: (status, previous status, sequence), oldest first.
async fn events_of(app: &TestApp, run: &str) -> Vec<(String, Option<String>, i64)> {
    let mut conn = app.connection().await;
    run_events_outbox::table
        .filter(run_events_outbox::run_id.eq(run))
        .order(run_events_outbox::id)
        .select((
            run_events_outbox::status,
            run_events_outbox::previous_status,
            run_events_outbox::sequence,
        ))
        .load(&mut conn)
        .await
        .unwrap()
}

async fn transition(app: &TestApp, token: &str, run: &str, status: &str) -> reqwest::Response {
    app.send_json(
        Method::POST,
        &format!("/api/v2/runs/{run}/actions/transition"),
        token,
        &json!({"status": status}),
    )
    .await
}

/// SPEC section 9's table, written out again here: the test checks the API against
/// the text, not against the code's own table.
fn spec_allows(from: RunStatus, to: RunStatus, plan_only: bool) -> bool {
    use RunStatus::*;
    let allowed = matches!(
        (from, to),
        (Pending, PlanQueued)
            | (PlanQueued, Planning)
            | (Planning, Planned | PlannedAndFinished | Errored)
            | (Planned, Confirmed | Canceled | Discarded)
            | (Confirmed, ApplyQueued)
            | (ApplyQueued, Applying)
            | (Applying, Applied | Errored)
            | (Pending | PlanQueued, Canceled)
    );
    allowed && !(plan_only && matches!(to, Planned | Confirmed | ApplyQueued | Applying | Applied))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_allowed_or_refused_as_the_spec_says() {
    let app = spawn_app().await;
    let executor = executor_token(&app).await;
    let ws_json = app.create_linked_workspace("w").await;
    let ws = workspace_id(&ws_json);
    // Auto-apply, so an executor may confirm (otherwise a person applies).
    let patched = app
        .patch(
            &format!("/api/v2/workspaces/{ws}"),
            &json!({"data": {"type": "workspaces", "attributes": {"auto-apply": true}}}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let push = created(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let pr = created(record_pull_request(&app.pool, &ws, &sha(2), 3).await);
    for (run, plan_only) in [(&push, false), (&pr, true)] {
        for &from in RunStatus::ALL {
            for &to in RunStatus::ALL {
                set_status(&app, run, from).await;
                let before = events_of(&app, run).await.len();
                let response = transition(&app, &executor, run, to.as_str()).await;
                let allowed = spec_allows(from, to, plan_only);
                let what = format!("{from} -> {to} (plan-only {plan_only})");
                if allowed {
                    assert_eq!(response.status(), 200, "{what}");
                    let body: Value = response.json().await.unwrap();
                    let attributes = &body["data"]["attributes"];
                    assert_eq!(attributes["status"], to.as_str(), "{what}");
                    let key = terrapod_shared::lifecycle::timestamp_key(to);
                    assert!(attributes["status-timestamps"][key].is_string(), "{what}");
                    let events = events_of(&app, run).await;
                    assert_eq!(events.len(), before + 1, "{what}: one event per change");
                    let last = events.last().unwrap();
                    assert_eq!(
                        (last.0.as_str(), last.1.as_deref()),
                        (to.as_str(), Some(from.as_str())),
                        "{what}"
                    );
                    assert!(
                        last.2 > events[events.len() - 2].2,
                        "{what}: sequences grow"
                    );
                } else {
                    let detail = assert_error(response, 409).await;
                    if !(plan_only && to == RunStatus::Confirmed && from == RunStatus::Planned) {
                        assert!(
                            detail.contains(from.as_str()) && detail.contains(to.as_str()),
                            "{what}: {detail}"
                        );
                    }
                    assert_eq!(events_of(&app, run).await.len(), before, "{what}");
                }
            }
        }
    }
}

#[tokio::test]
async fn bad_transition_requests_are_refused_clearly() {
    let app = spawn_app().await;
    let executor = executor_token(&app).await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let run = created(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let path = format!("/api/v2/runs/{run}/actions/transition");
    let detail = assert_error(
        app.send_json(
            Method::POST,
            &path,
            &executor,
            &json!({"status": "exploded"}),
        )
        .await,
        422,
    )
    .await;
    assert!(detail.contains("exploded"), "{detail}");
    assert_error(
        app.send_json(
            Method::POST,
            &path,
            &executor,
            &json!({"state": "planning"}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        app.request(Method::POST, &path, Some(&executor), Some(b"{".to_vec()))
            .await,
        400,
    )
    .await;
    assert_error(
        transition(&app, &executor, "run-abcdefghijkmnopq", "plan_queued").await,
        404,
    )
    .await;
    // Executors confirm only runs that apply automatically; people apply the others.
    set_status(&app, &run, RunStatus::Planned).await;
    let detail = assert_error(transition(&app, &executor, &run, "confirmed").await, 409).await;
    assert!(detail.contains("awaits confirmation"), "{detail}");
    // The message is kept, cut to its limit.
    let moved: Value = app
        .send_json(
            Method::POST,
            &path,
            &executor,
            &json!({"status": "discarded", "message": "x".repeat(5000)}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["data"]["attributes"]["status"], "discarded");
    assert_eq!(
        moved["data"]["attributes"]["status-message"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        500
    );
    let mut conn = app.connection().await;
    let message: Option<String> = runs::table
        .filter(runs::id.eq(&run))
        .select(runs::status_message)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(message.unwrap().chars().count(), 500);
}

#[tokio::test]
async fn executor_tokens_read_and_move_runs_and_nothing_else() {
    let app = spawn_app().await;
    let executor = executor_token(&app).await;
    let connection = app.create_github_connection("gh", 77).await;
    let connection_id = connection["id"].as_str().unwrap().to_owned();
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let run = created(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let before: Value = app
        .get(&format!("/api/v2/workspaces/{ws}"))
        .await
        .json()
        .await
        .unwrap();
    for path in [
        format!("/api/v2/workspaces/{ws}"),
        format!("/api/v2/workspaces/{ws}/runs"),
        format!("/api/v2/runs/{run}"),
        "/api/v2/organizations/default/workspaces".to_owned(),
    ] {
        let response = app.request(Method::GET, &path, Some(&executor), None).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let workspace_patch =
        json!({"data": {"type": "workspaces", "attributes": {"vcs-branch": "x"}}});
    let connection_patch =
        json!({"data": {"type": "vcs-connections", "attributes": {"name": "x"}}});
    for (method, path, body) in [
        (
            Method::GET,
            format!("/api/v2/vcs-connections/{connection_id}"),
            None,
        ),
        (
            Method::GET,
            "/api/v2/organizations/default/vcs-connections".to_owned(),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v2/vcs-connections/{connection_id}"),
            Some(&connection_patch),
        ),
        (
            Method::DELETE,
            format!("/api/v2/vcs-connections/{connection_id}"),
            None,
        ),
        (
            Method::POST,
            "/api/v2/organizations/default/workspaces".to_owned(),
            Some(&workspace_patch),
        ),
        (
            Method::PATCH,
            format!("/api/v2/workspaces/{ws}"),
            Some(&workspace_patch),
        ),
        (Method::DELETE, format!("/api/v2/workspaces/{ws}"), None),
        (
            Method::POST,
            format!("/api/v2/workspaces/{ws}/actions/poll-vcs"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v2/runs/{run}/actions/cancel"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v2/runs/{run}/actions/apply"),
            None,
        ),
    ] {
        let body = body.map(|b| b.to_string().into_bytes());
        let response = app
            .request(method.clone(), &path, Some(&executor), body)
            .await;
        assert_eq!(response.status(), 403, "{method} {path}");
    }
    // Nothing was changed by the refused requests.
    let shown: Value = app
        .get(&format!("/api/v2/workspaces/{ws}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown, before);
    assert_eq!(
        app.get(&format!("/api/v2/vcs-connections/{connection_id}"))
            .await
            .status(),
        200
    );
    // Members do not move runs; executors and admins do.
    assert_error(
        transition(&app, &app.member_token, &run, "plan_queued").await,
        403,
    )
    .await;
    assert_eq!(
        transition(&app, &executor, &run, "plan_queued")
            .await
            .status(),
        200
    );
    assert_eq!(
        transition(&app, &app.admin_token, &run, "planning")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn apply_confirms_discard_discards_and_actions_follow() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let first = created(record_push(&app.pool, &ws, &sha(1), None, b"t").await);
    let shown: Value = app
        .get(&format!("/api/v2/runs/{first}"))
        .await
        .json()
        .await
        .unwrap();
    let attributes = &shown["data"]["attributes"];
    assert!(attributes["status-timestamps"]["plan-queueable-at"].is_string());
    assert_eq!(
        attributes["actions"],
        json!({"is-cancelable": true, "is-confirmable": false, "is-discardable": false, "is-force-cancelable": false})
    );
    set_status(&app, &first, RunStatus::Planned).await;
    let shown: Value = app
        .get(&format!("/api/v2/runs/{first}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["data"]["attributes"]["actions"],
        json!({"is-cancelable": true, "is-confirmable": true, "is-discardable": true, "is-force-cancelable": false})
    );
    let applied = app
        .post(&format!("/api/v2/runs/{first}/actions/apply"), &Value::Null)
        .await;
    assert_eq!(applied.status(), 202);
    let body: Value = applied.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["status"], "confirmed");
    assert!(body["data"]["attributes"]["status-timestamps"]["confirmed-at"].is_string());
    let detail = assert_error(
        app.post(
            &format!("/api/v2/runs/{first}/actions/discard"),
            &Value::Null,
        )
        .await,
        409,
    )
    .await;
    assert!(
        detail.contains("confirmed") && detail.contains("discarded"),
        "{detail}"
    );

    let second = created(record_push(&app.pool, &ws, &sha(2), Some(sha(1).as_str()), b"u").await);
    set_status(&app, &second, RunStatus::Planned).await;
    let discarded = app
        .post(
            &format!("/api/v2/runs/{second}/actions/discard"),
            &Value::Null,
        )
        .await;
    assert_eq!(discarded.status(), 202);
    let body: Value = discarded.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["status"], "discarded");
    assert_eq!(
        body["data"]["attributes"]["actions"]["is-cancelable"],
        false
    );
    let statuses: Vec<String> = events_of(&app, &second)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(statuses, vec!["pending", "discarded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_an_executor_leaves_one_state() {
    let app = spawn_app().await;
    let executor = executor_token(&app).await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    for n in 1..=15u32 {
        let previous = (n > 1).then(|| sha(n - 1).as_str().to_owned());
        let run = created(record_push(&app.pool, &ws, &sha(n), previous.as_deref(), b"t").await);
        let cancel_path = format!("/api/v2/runs/{run}/actions/cancel");
        let (canceled, moved) = tokio::join!(
            app.post(&cancel_path, &Value::Null),
            transition(&app, &executor, &run, "plan_queued"),
        );
        let (canceled, moved) = (canceled.status().as_u16(), moved.status().as_u16());
        let shown: Value = app
            .get(&format!("/api/v2/runs/{run}"))
            .await
            .json()
            .await
            .unwrap();
        let status = shown["data"]["attributes"]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        let events = events_of(&app, &run).await;
        // The cancel may come second and still win (plan_queued runs cancel too); what
        // never happens is two moves from the same status.
        match (canceled, moved) {
            (202, 200) => {
                assert_eq!(status, "canceled");
                let path: Vec<_> = events.iter().map(|e| e.0.as_str()).collect();
                assert_eq!(path, vec!["pending", "plan_queued", "canceled"]);
            }
            (202, 409) => {
                assert_eq!(status, "canceled");
                assert_eq!(events.len(), 2);
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        let sequences: Vec<i64> = events.iter().map(|e| e.2).collect();
        assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
    }
}
