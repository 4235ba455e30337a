//! Telling a migrated database from one `terrapod-api migrate` has not prepared.

use diesel_async::SimpleAsyncConnection;
use terrapod_shared::db::{self, DbSetupError, NotMigrated};
use terrapod_test_support::TestDatabase;

#[tokio::test]
async fn a_database_is_ready_only_with_every_migration_applied() {
    let migrated = TestDatabase::new().await;
    let mut conn = migrated.connection().await;
    db::check_schema(&mut conn).await.unwrap();
    // An older schema: the newest migration not applied yet.
    conn.batch_execute(
        "DELETE FROM __diesel_schema_migrations \
         WHERE version = (SELECT max(version) FROM __diesel_schema_migrations)",
    )
    .await
    .unwrap();
    assert!(matches!(
        db::check_schema(&mut conn).await,
        Err(DbSetupError::NotMigrated(NotMigrated::Behind(1)))
    ));

    let empty = TestDatabase::unmigrated().await;
    let mut conn = empty.connection().await;
    assert!(matches!(
        db::check_schema(&mut conn).await,
        Err(DbSetupError::NotMigrated(NotMigrated::NoSchema))
    ));

    let missing = TestDatabase::missing_url();
    let pool = db::pool(&missing, "schema-test", 1).unwrap();
    let Err(err) = db::ready_connection(&pool, &missing).await else {
        panic!("a missing database is not ready");
    };
    assert!(
        matches!(&err, DbSetupError::NotMigrated(NotMigrated::NoDatabase(name)) if missing.ends_with(name.as_str())),
        "{err}"
    );
    assert!(!err.is_transient());
}
