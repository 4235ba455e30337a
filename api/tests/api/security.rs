//! Credentials never appear in clear: not in any table, not in any response.

use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use serde_json::{json, Value};
use terrapod_test_support::GITHUB_APP_TEST_KEY;

use crate::helpers::spawn_app;

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    row: String,
}

/// A run of key material from the middle of the PEM: present wherever the key is.
fn key_marker() -> &'static str {
    GITHUB_APP_TEST_KEY.lines().nth(10).unwrap()
}

#[tokio::test]
async fn no_table_and_no_response_holds_a_credential_in_clear() {
    let app = spawn_app().await;
    let gitlab_token = "glpat-SUPERSECRET-0123456789";
    let rotated_token = "glpat-ROTATED-9876543210";
    let github = app.create_github_connection("gh", 1).await;
    let gitlab = app.create_gitlab_connection("gl", gitlab_token).await;
    let mut responses = vec![github.to_string(), gitlab.to_string()];
    let gitlab_path = format!("/api/v2/vcs-connections/{}", gitlab["id"].as_str().unwrap());
    let patched = app
        .patch(
            &gitlab_path,
            &json!({"data": {"type": "vcs-connections", "attributes": {"token": rotated_token}}}),
        )
        .await
        .text()
        .await
        .unwrap();
    responses.push(patched);
    for path in [
        "/api/v2/organizations/default/vcs-connections".to_owned(),
        gitlab_path.clone(),
        format!("/api/v2/vcs-connections/{}", github["id"].as_str().unwrap()),
        "/metrics".to_owned(),
    ] {
        responses.push(app.get(&path).await.text().await.unwrap());
    }
    let secrets = [key_marker(), gitlab_token, rotated_token, "PRIVATE KEY"];
    for response in &responses {
        for secret in secrets {
            assert!(
                !response.contains(secret),
                "a response contains a credential"
            );
        }
    }

    let mut conn = app.connection().await;
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() >= 7);
    let mut rows_seen = 0;
    for table in tables {
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT row_to_json(t)::text AS row FROM \"{}\" t",
            table.name
        ))
        .load(&mut conn)
        .await
        .unwrap();
        for row in rows {
            rows_seen += 1;
            for secret in secrets {
                assert!(
                    !row.row.contains(secret),
                    "table {} holds a credential in clear",
                    table.name
                );
            }
        }
    }
    assert!(rows_seen > 3);
}

#[tokio::test]
async fn rejected_credentials_are_not_echoed_in_errors() {
    let app = spawn_app().await;
    let marker = "TOTALLY-SECRET-MARKER";
    for attributes in [
        json!({"name": "x", "provider": "github", "github-app-id": 1, "github-installation-id": 1,
               "private-key": format!("-----BEGIN RSA PRIVATE KEY-----\n{marker}\n-----END RSA PRIVATE KEY-----")}),
        json!({"name": "x", "provider": "gitlab", "token": format!("{marker} with spaces")}),
        json!({"name": "x", "provider": "gitlab", "private-key": marker}),
    ] {
        let body = json!({"data": {"type": "vcs-connections", "attributes": attributes}});
        let response = app
            .post("/api/v2/organizations/default/vcs-connections", &body)
            .await;
        assert_eq!(response.status(), 422);
        let text = response.text().await.unwrap();
        assert!(!text.contains(marker), "{text}");
    }
    let _ = Value::Null;
}
