use reqwest::Method;
use serde_json::{json, Value};
use terrapod_test_support::{GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_KEY_PKCS8};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

const PATH: &str = "/api/v2/organizations/default/vcs-connections";

fn github(name: &str, installation: i64, key: &str) -> Value {
    json!({"data": {"type": "vcs-connections", "attributes": {
        "name": name, "provider": "github", "github-app-id": "42",
        "github-installation-id": installation, "private-key": key,
    }}})
}

#[tokio::test]
async fn admins_create_github_connections_that_never_echo_the_key() {
    let app = spawn_app().await;
    let response = app.post(PATH, &github("gh", 7, GITHUB_APP_TEST_KEY)).await;
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.api+json"
    );
    let body: Value = response.json().await.unwrap();
    let data = &body["data"];
    assert!(data["id"].as_str().unwrap().starts_with("vcs-"));
    assert_eq!(data["type"], "vcs-connections");
    let attrs = &data["attributes"];
    assert_eq!(attrs["name"], "gh");
    assert_eq!(attrs["provider"], "github");
    assert_eq!(attrs["server-url"], "https://api.github.com");
    assert_eq!(attrs["status"], "active");
    assert_eq!(attrs["has-credentials"], true);
    assert_eq!(attrs["github-app-id"], 42);
    assert_eq!(attrs["github-installation-id"], 7);
    assert_eq!(attrs["github-account-login"], Value::Null);
    assert!(attrs["created-at"].as_str().unwrap().ends_with('Z'));
    assert!(attrs.get("private-key").is_none());
    assert!(!body.to_string().contains("PRIVATE KEY"));

    let list: Value = app.get(PATH).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["meta"]["pagination"]["total-count"], 1);
    let id = data["id"].as_str().unwrap();
    let shown: Value = app
        .get(&format!("/api/v2/vcs-connections/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["data"]["attributes"], *attrs);
}

#[tokio::test]
async fn pkcs8_private_keys_and_ghe_server_urls_are_accepted() {
    let app = spawn_app().await;
    let mut body = github("ghe", 8, GITHUB_APP_TEST_KEY_PKCS8);
    body["data"]["attributes"]["server-url"] = json!("https://ghe.example.com/api/v3/");
    let response = app.post(PATH, &body).await;
    assert_eq!(response.status(), 201);
    let data: Value = response.json().await.unwrap();
    assert_eq!(
        data["data"]["attributes"]["server-url"],
        "https://ghe.example.com/api/v3"
    );
}

#[tokio::test]
async fn gitlab_connections_default_to_gitlab_com_and_have_no_github_attributes() {
    let app = spawn_app().await;
    let data = app.create_gitlab_connection("gl", "glpat-abc").await;
    assert_eq!(data["attributes"]["server-url"], "https://gitlab.com");
    assert_eq!(data["attributes"]["has-credentials"], true);
    assert!(data["attributes"].get("github-app-id").is_none());
}

#[tokio::test]
async fn invalid_input_is_422_without_echoing_secrets() {
    let app = spawn_app().await;
    let not_rsa =
        "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LW1hcmtlcg==\n-----END RSA PRIVATE KEY-----\n";
    let detail = assert_error(app.post(PATH, &github("gh", 1, not_rsa)).await, 422).await;
    assert!(detail.contains("RSA"));
    assert!(!detail.contains("c2VjcmV0LW1hcmtlcg"));
    for attributes in [
        json!({"provider": "github", "github-app-id": 1, "github-installation-id": 1}),
        json!({"name": "x", "github-app-id": 1, "github-installation-id": 1}),
        json!({"name": "x", "provider": "bitbucket"}),
        json!({"name": "x", "provider": "github", "github-installation-id": 1}),
        json!({"name": "x", "provider": "github", "github-app-id": -4, "github-installation-id": 1}),
        json!({"name": "x", "provider": "github", "github-app-id": "abc", "github-installation-id": 1}),
        json!({"name": "x", "provider": "gitlab", "server-url": "ftp://gitlab"}),
        json!({"name": "x", "provider": "gitlab", "private-key": GITHUB_APP_TEST_KEY}),
        json!({"name": "x", "provider": "gitlab", "token": "has space"}),
        json!({"name": "x", "provider": "github", "github-app-id": 1, "github-installation-id": 1, "token": "t"}),
        json!({"name": "", "provider": "gitlab"}),
        json!({"name": "x", "provider": "gitlab", "status": "paused"}),
    ] {
        let body = json!({"data": {"type": "vcs-connections", "attributes": attributes}});
        let detail = assert_error(app.post(PATH, &body).await, 422).await;
        assert!(!detail.contains("BEGIN"), "{detail}");
    }
}

#[tokio::test]
async fn duplicate_names_and_installations_are_422() {
    let app = spawn_app().await;
    app.create_github_connection("gh", 5).await;
    let detail = assert_error(
        app.post(PATH, &github("gh", 6, GITHUB_APP_TEST_KEY)).await,
        422,
    )
    .await;
    assert!(detail.contains("name"), "{detail}");
    let detail = assert_error(
        app.post(PATH, &github("other", 5, GITHUB_APP_TEST_KEY))
            .await,
        422,
    )
    .await;
    assert!(detail.contains("installation"), "{detail}");
    let mut on_ghe = github("ghe", 5, GITHUB_APP_TEST_KEY);
    on_ghe["data"]["attributes"]["server-url"] = json!("https://ghe.example.com/api/v3");
    assert_eq!(app.post(PATH, &on_ghe).await.status(), 201);
}

#[tokio::test]
async fn unknown_organizations_and_ids_are_404() {
    let app = spawn_app().await;
    assert_error(
        app.post(
            "/api/v2/organizations/nope/vcs-connections",
            &github("gh", 1, GITHUB_APP_TEST_KEY),
        )
        .await,
        404,
    )
    .await;
    assert_error(
        app.get("/api/v2/organizations/nope/vcs-connections").await,
        404,
    )
    .await;
    assert_error(
        app.get("/api/v2/vcs-connections/vcs-abcdefghijkmnopq")
            .await,
        404,
    )
    .await;
    assert_error(app.get("/api/v2/vcs-connections/not-an-id").await, 404).await;
    assert_error(
        app.delete("/api/v2/vcs-connections/vcs-abcdefghijkmnopq")
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn without_an_encryption_key_creating_answers_503_naming_the_variable() {
    let app = spawn_app_with(|env| {
        env.remove("TERRAPOD_ENCRYPTION__KEY");
    })
    .await;
    let detail = assert_error(
        app.post(PATH, &github("gh", 1, GITHUB_APP_TEST_KEY)).await,
        503,
    )
    .await;
    assert!(detail.contains("TERRAPOD_ENCRYPTION__KEY"), "{detail}");
}

#[tokio::test]
async fn patch_changes_status_and_rotates_credentials_but_not_the_provider() {
    let app = spawn_app().await;
    let connection = app.create_gitlab_connection("gl", "glpat-old").await;
    let id = connection["id"].as_str().unwrap();
    let path = format!("/api/v2/vcs-connections/{id}");
    let before = app.stored_credential().await;
    let response = app
        .patch(
            &path,
            &json!({"data": {"type": "vcs-connections", "id": id, "attributes": {"status": "disabled", "token": "glpat-new", "name": "renamed"}}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["status"], "disabled");
    assert_eq!(body["data"]["attributes"]["name"], "renamed");
    let after = app.stored_credential().await;
    assert_ne!(before, after);
    let keys =
        terrapod_shared::crypto::KeyRing::parse(app.encryption_key.as_deref().unwrap()).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(keys.decrypt(&after).unwrap().expose_secret(), "glpat-new");

    let detail = assert_error(
        app.patch(
            &path,
            &json!({"data": {"type": "vcs-connections", "attributes": {"provider": "github"}}}),
        )
        .await,
        422,
    )
    .await;
    assert!(detail.contains("provider"));
    assert_error(
        app.patch(
            &path,
            &json!({"data": {"type": "vcs-connections", "id": "vcs-other", "attributes": {}}}),
        )
        .await,
        409,
    )
    .await;
}

#[tokio::test]
async fn deleting_a_connection_keeps_workspace_settings_and_records_why() {
    let app = spawn_app().await;
    let workspace = app.create_linked_workspace("linked").await;
    let connection_id = workspace["relationships"]["vcs-connection"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .delete(&format!("/api/v2/vcs-connections/{connection_id}"))
        .await;
    assert_eq!(response.status(), 204);
    assert_error(
        app.get(&format!("/api/v2/vcs-connections/{connection_id}"))
            .await,
        404,
    )
    .await;
    let shown: Value = app
        .get(&format!(
            "/api/v2/workspaces/{}",
            workspace["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let data = &shown["data"];
    assert_eq!(data["relationships"]["vcs-connection"]["data"], Value::Null);
    assert_eq!(
        data["attributes"]["vcs-repo-url"],
        "https://github.com/acme/infra"
    );
    assert!(data["attributes"]["vcs-last-error"]
        .as_str()
        .unwrap()
        .contains("deleted"));
    assert!(data["attributes"]["vcs-last-error-at"].is_string());
    let _ = Method::GET;
}

#[tokio::test]
async fn changing_server_url_needs_the_credential_again() {
    let app = spawn_app().await;
    let gitlab = app.create_gitlab_connection("gl", "glpat-old").await;
    let github = app.create_github_connection("gh", 77).await;
    for (connection, credential, value) in [
        (&gitlab, "token", "glpat-for-the-new-server"),
        (&github, "private-key", GITHUB_APP_TEST_KEY),
    ] {
        let id = connection["id"].as_str().unwrap();
        let path = format!("/api/v2/vcs-connections/{id}");
        let stored = app.stored_credential_of(id).await;
        // Only the URL: the stored credential would go to the attacker's host.
        let detail = assert_error(
            app.patch(
                &path,
                &json!({"data": {"type": "vcs-connections", "attributes": {"server-url": "https://evil.example.com"}}}),
            )
            .await,
            422,
        )
        .await;
        assert!(
            detail.contains("server-url") && detail.contains(credential),
            "{detail}"
        );
        let unchanged: Value = app.get(&path).await.json().await.unwrap();
        assert_ne!(
            unchanged["data"]["attributes"]["server-url"],
            "https://evil.example.com"
        );
        assert_eq!(app.stored_credential_of(id).await, stored);
        // The same URL again is no change; with the credential it is accepted.
        let same = connection["attributes"]["server-url"].clone();
        let response = app
            .patch(
                &path,
                &json!({"data": {"type": "vcs-connections", "attributes": {"server-url": same}}}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let response = app
            .patch(
                &path,
                &json!({"data": {"type": "vcs-connections", "attributes": {
                    "server-url": "https://vcs.internal.example.com", credential: value}}}),
            )
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}
