use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn missing_malformed_or_unknown_tokens_get_401() {
    let app = spawn_app().await;
    for path in [
        "/api/v2/organizations/default/workspaces",
        "/api/v2/organizations/default/vcs-connections",
        "/api/v2/runs/run-abcdefghijkmnopq",
    ] {
        assert_error(app.request(Method::GET, path, None, None).await, 401).await;
        assert_error(
            app.request(Method::GET, path, Some("tpod.unknown"), None)
                .await,
            401,
        )
        .await;
        let basic = app
            .client
            .get(format!("{}{}", app.address, path))
            .header("Authorization", format!("Basic {}", app.admin_token))
            .send()
            .await
            .unwrap();
        assert_error(basic, 401).await;
    }
}

#[tokio::test]
async fn authentication_comes_before_body_parsing() {
    let app = spawn_app().await;
    let response = app
        .request(
            Method::POST,
            "/api/v2/organizations/default/workspaces",
            None,
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_error(response, 401).await;
}

#[tokio::test]
async fn members_cannot_create_change_or_delete_vcs_connections_but_can_read_them() {
    let app = spawn_app().await;
    let connection = app.create_github_connection("gh", 1).await;
    let id = connection["id"].as_str().unwrap();
    let body = json!({"data": {"type": "vcs-connections", "attributes": {"name": "x", "provider": "gitlab", "token": "t"}}});
    let create = app
        .send_json(
            Method::POST,
            "/api/v2/organizations/default/vcs-connections",
            &app.member_token,
            &body,
        )
        .await;
    assert_error(create, 403).await;
    let patch = app
        .send_json(
            Method::PATCH,
            &format!("/api/v2/vcs-connections/{id}"),
            &app.member_token,
            &json!({"data": {"type": "vcs-connections", "attributes": {"status": "disabled"}}}),
        )
        .await;
    assert_error(patch, 403).await;
    let delete = app
        .request(
            Method::DELETE,
            &format!("/api/v2/vcs-connections/{id}"),
            Some(&app.member_token),
            None,
        )
        .await;
    assert_error(delete, 403).await;
    let show = app
        .request(
            Method::GET,
            &format!("/api/v2/vcs-connections/{id}"),
            Some(&app.member_token),
            None,
        )
        .await;
    assert_eq!(show.status(), 200);
    let list = app
        .request(
            Method::GET,
            "/api/v2/organizations/default/vcs-connections",
            Some(&app.member_token),
            None,
        )
        .await;
    assert_eq!(list.status(), 200);
}

#[tokio::test]
async fn members_may_manage_workspaces() {
    let app = spawn_app().await;
    let response = app
        .send_json(
            Method::POST,
            "/api/v2/organizations/default/workspaces",
            &app.member_token,
            &json!({"data": {"type": "workspaces", "attributes": {"name": "by-member"}}}),
        )
        .await;
    assert_eq!(response.status(), 201);
}
