//! The one function that records VCS runs, under concurrency.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::{
    configuration_archives, configuration_versions, runs, workspaces,
};
use terrapod_shared::runs::RunCreation;

use crate::helpers::{record_pull_request, record_push, sha, spawn_app, workspace_id};

async fn count_runs(app: &crate::helpers::TestApp) -> i64 {
    let mut conn = app.connection().await;
    runs::table.count().get_result(&mut conn).await.unwrap()
}

async fn last_sha(app: &crate::helpers::TestApp) -> Option<String> {
    let mut conn = app.connection().await;
    workspaces::table
        .select(workspaces::vcs_last_commit_sha)
        .first(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_recorders_create_one_push_run_and_advance_the_sha_once() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let commit = sha(1);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let pool = app.pool.clone();
            let ws = ws.clone();
            let commit = commit.clone();
            tokio::spawn(async move { record_push(&pool, &ws, &commit, None, b"tree").await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            RunCreation::Created { .. } => created += 1,
            RunCreation::AlreadyExists | RunCreation::Superseded => {}
        }
    }
    assert_eq!(created, 1);
    assert_eq!(count_runs(&app).await, 1);
    let mut conn = app.connection().await;
    let versions: i64 = configuration_versions::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions, 1, "losers leave no orphan configuration version");
    assert_eq!(last_sha(&app).await.as_deref(), Some(commit.as_str()));
    let run_count: i64 = workspaces::table
        .select(workspaces::run_count)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(run_count, 1, "the kept count matches the runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_recorders_create_one_pull_request_run() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    let commit = sha(2);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let pool = app.pool.clone();
            let ws = ws.clone();
            let commit = commit.clone();
            tokio::spawn(async move { record_pull_request(&pool, &ws, &commit, 7).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), RunCreation::Created { .. }) {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(count_runs(&app).await, 1);
    assert_eq!(
        last_sha(&app).await,
        None,
        "pull requests never move the branch SHA"
    );
}

#[tokio::test]
async fn a_stale_previous_sha_records_nothing() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    assert!(matches!(
        record_push(&app.pool, &ws, &sha(1), None, b"a").await,
        RunCreation::Created { .. }
    ));
    // A replica that still believes the branch was at nothing:
    assert_eq!(
        record_push(&app.pool, &ws, &sha(2), None, b"b").await,
        RunCreation::Superseded
    );
    assert_eq!(count_runs(&app).await, 1);
    assert_eq!(last_sha(&app).await.as_deref(), Some(sha(1).as_str()));
    assert!(matches!(
        record_push(&app.pool, &ws, &sha(2), Some(sha(1).as_str()), b"b").await,
        RunCreation::Created { .. }
    ));
}

#[tokio::test]
async fn a_commit_that_has_a_push_run_never_gets_another() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    assert!(matches!(
        record_push(&app.pool, &ws, &sha(1), None, b"a").await,
        RunCreation::Created { .. }
    ));
    // The URL was changed and back again: the last SHA was reset to null.
    {
        let mut conn = app.connection().await;
        diesel::update(workspaces::table)
            .set(workspaces::vcs_last_commit_sha.eq(None::<String>))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        record_push(&app.pool, &ws, &sha(1), None, b"a").await,
        RunCreation::AlreadyExists
    );
    assert_eq!(count_runs(&app).await, 1);
    assert_eq!(
        last_sha(&app).await.as_deref(),
        Some(sha(1).as_str()),
        "advanced so it is not retried"
    );
}

#[tokio::test]
async fn a_new_pull_request_head_cancels_the_older_pending_plans() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    record_pull_request(&app.pool, &ws, &sha(1), 3).await;
    record_pull_request(&app.pool, &ws, &sha(9), 4).await;
    record_pull_request(&app.pool, &ws, &sha(2), 3).await;
    let mut conn = app.connection().await;
    let statuses: Vec<(i64, String, String)> = runs::table
        .select((
            runs::vcs_pull_request_number.assume_not_null(),
            runs::vcs_commit_sha,
            runs::status,
        ))
        .order((runs::vcs_pull_request_number, runs::created_at))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        vec![
            (3, sha(1).to_string(), "canceled".to_owned()),
            (3, sha(2).to_string(), "pending".to_owned()),
            (4, sha(9).to_string(), "pending".to_owned()),
        ]
    );
}

#[tokio::test]
async fn one_snapshot_shared_by_many_workspaces_is_stored_once() {
    let app = spawn_app().await;
    for name in ["a", "b", "c"] {
        let ws = workspace_id(&app.create_linked_workspace(name).await);
        record_push(&app.pool, &ws, &sha(1), None, b"same tree").await;
    }
    let mut conn = app.connection().await;
    let archives: i64 = configuration_archives::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let versions: i64 = configuration_versions::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((archives, versions), (1, 3));
}

#[tokio::test]
async fn the_database_refuses_a_second_push_run_even_without_the_function() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    record_push(&app.pool, &ws, &sha(1), None, b"a").await;
    use diesel_async::SimpleAsyncConnection;
    let mut conn = app.connection().await;
    let duplicate = conn
        .batch_execute(
            "INSERT INTO runs (id, workspace_id, configuration_version_id, plan_only, auto_apply, message, trigger_reason, vcs_commit_sha, vcs_branch)
             SELECT 'run-zzzzzzzzzzzzzzzz', workspace_id, configuration_version_id, false, false, 'dup', 'push', vcs_commit_sha, vcs_branch FROM runs",
        )
        .await
        .unwrap_err();
    assert!(
        duplicate
            .to_string()
            .contains("runs_one_push_run_per_commit"),
        "{duplicate}"
    );
    let applyable_pr = conn
        .batch_execute(
            "INSERT INTO runs (id, workspace_id, configuration_version_id, plan_only, auto_apply, message, trigger_reason, vcs_commit_sha, vcs_branch, vcs_pull_request_number)
             SELECT 'run-yyyyyyyyyyyyyyyy', workspace_id, configuration_version_id, false, false, 'pr', 'pull_request', vcs_commit_sha, vcs_branch, 1 FROM runs",
        )
        .await
        .unwrap_err();
    assert!(
        applyable_pr
            .to_string()
            .contains("runs_pull_request_is_plan_only"),
        "{applyable_pr}"
    );
}
