//! Schema invariants the code relies on.

use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use diesel_migrations::MigrationHarness;
use terrapod_shared::db::MIGRATIONS;
use terrapod_test_support::TestDatabase;

#[derive(QueryableByName)]
struct IndexDef {
    #[diesel(sql_type = Text)]
    indexdef: String,
}

#[tokio::test]
async fn duplicate_vcs_runs_are_prevented_by_partial_unique_indexes() {
    let db = TestDatabase::new().await;
    let mut conn = db.connection().await;
    let indexes: Vec<IndexDef> = diesel::sql_query(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'runs' AND indexname IN ('runs_one_push_run_per_commit', 'runs_one_pull_request_run_per_head') ORDER BY indexname",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(indexes.len(), 2);
    assert!(indexes[0].indexdef.starts_with("CREATE UNIQUE INDEX"));
    assert!(indexes[0]
        .indexdef
        .contains("(workspace_id, vcs_pull_request_number, vcs_commit_sha)"));
    assert!(indexes[0].indexdef.contains("'pull_request'"));
    assert!(indexes[1]
        .indexdef
        .contains("(workspace_id, vcs_commit_sha)"));
    assert!(indexes[1].indexdef.contains("'push'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_reverts_and_reapplies_cleanly() {
    let db = TestDatabase::new().await;
    let conn = db.connection().await;
    tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        harness.revert_all_migrations(MIGRATIONS).expect("revert");
        harness.run_pending_migrations(MIGRATIONS).expect("reapply");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_that_existed_before_file_triggers_keep_running_every_commit() {
    use diesel_async::AsyncConnection;
    let db = TestDatabase::new().await;
    // Back to just before file triggers, a workspace as it was, then forward again.
    let conn = diesel_async::AsyncPgConnection::establish(db.url())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        // Back to just before file triggers (000008), whatever came after it.
        let triggers_applied = |harness: &mut diesel_async::AsyncMigrationHarness<_>| {
            harness
                .applied_migrations()
                .unwrap()
                .iter()
                .any(|v| v.to_string().replace('-', "").as_str() >= "20261130000008")
        };
        while triggers_applied(&mut harness) {
            harness.revert_last_migration(MIGRATIONS).unwrap();
        }
        let mut conn = harness.into_inner();
        tokio::runtime::Handle::current().block_on(async {
            diesel::sql_query(
                "INSERT INTO workspaces (id, organization_name, name, execution_mode) VALUES ('ws-beforetriggers1', 'default', 'old', 'remote')",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        });
        diesel_async::AsyncMigrationHarness::new(conn)
            .run_pending_migrations(MIGRATIONS)
            .unwrap();
    })
    .await
    .unwrap();
    let mut conn = diesel_async::AsyncPgConnection::establish(db.url())
        .await
        .unwrap();
    #[derive(QueryableByName)]
    struct Flags {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        file_triggers_enabled: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        speculative_enabled: bool,
    }
    let flags: Flags = diesel::sql_query(
        "SELECT file_triggers_enabled, speculative_enabled FROM workspaces WHERE id = 'ws-beforetriggers1'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert!(!flags.file_triggers_enabled && flags.speculative_enabled);
}

#[tokio::test]
async fn a_workspace_never_stores_both_trigger_prefixes_and_patterns() {
    let db = TestDatabase::new().await;
    let mut conn = db.connection().await;
    let both = diesel::sql_query(
        "INSERT INTO workspaces (id, organization_name, name, execution_mode, trigger_prefixes, trigger_patterns)
         VALUES ('ws-bothtriggers000', 'default', 'both', 'remote', '{modules}', '{**/*.tf}')",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        both.to_string().contains("workspaces_prefixes_or_patterns"),
        "{both}"
    );
}
