//! No input, however malformed, gets a 5xx.

use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

fn bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "", " ", "null", "true", "0", "\"x\"", "[]", "{}", "{\"data\":null}", "{\"data\":[]}", "{\"data\":\"x\"}",
        "{\"data\":{}}", "{\"data\":{\"type\":null}}", "{\"data\":{\"type\":123}}",
        "{\"data\":{\"type\":\"workspaces\"}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":null}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":[]}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":{\"a\":1}}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"nul\\u0000byte\"}}}",
        "{\"data\":{\"type\":\"vcs-connections\",\"attributes\":{\"name\":\"n\\u0000\",\"provider\":\"gitlab\",\"token\":\"t\"}}}",
        "{\"data\":{\"type\":\"vcs-connections\",\"attributes\":{\"name\":\"n\",\"provider\":\"github\",\"github-app-id\":1,\"github-installation-id\":1,\"github-account-login\":\"a\\u0000b\"}}}",
        "{\"data\":{\"type\":\"vcs-connections\",\"attributes\":{\"name\":\"n\",\"provider\":\"github\",\"github-app-id\":99999999999999999999999,\"github-installation-id\":1}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\",\"vcs-repo-url\":\"https://github.com/\\u0000/x\"},\"relationships\":{\"vcs-connection\":{\"data\":{\"id\":\"vcs-\\u0000\",\"type\":\"vcs-connections\"}}}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\"},\"relationships\":{\"vcs-connection\":{\"data\":{\"id\":7}}}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\"},\"relationships\":{\"vcs-connection\":null}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\",\"vcs-branch\":\"\\ud800\"}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\",\"working-directory\":\"\\u0000\"}}}",
        "{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"a\",\"auto-apply\":1e400}}}",
        "{\"data\":",
        "\u{feff}{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(vec![0xff, 0xfe, 0x00, 0x7b]);
    bodies.push("[".repeat(10_000).into_bytes());
    bodies.push(
        format!(
            "{{\"data\":{{\"type\":\"workspaces\",\"attributes\":{{\"name\":\"{}\"}}}}}}",
            "x".repeat(500_000)
        )
        .into_bytes(),
    );
    bodies
}

#[tokio::test]
async fn a_batch_of_garbage_bodies_never_gets_a_5xx() {
    let app = spawn_app().await;
    let workspace = app.create_linked_workspace("w").await;
    let connection_id = workspace["relationships"]["vcs-connection"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws_path = format!("/api/v2/workspaces/{}", workspace["id"].as_str().unwrap());
    let connection_path = format!("/api/v2/vcs-connections/{connection_id}");
    let targets = [
        (Method::POST, "/api/v2/organizations/default/workspaces"),
        (
            Method::POST,
            "/api/v2/organizations/default/vcs-connections",
        ),
        (Method::PATCH, ws_path.as_str()),
        (Method::PATCH, connection_path.as_str()),
        (
            Method::POST,
            "/api/v2/runs/run-abcdefghijkmnopq/actions/cancel",
        ),
    ];
    for body in bodies() {
        for (method, path) in &targets {
            let response = app
                .request(
                    method.clone(),
                    path,
                    Some(&app.admin_token),
                    Some(body.clone()),
                )
                .await;
            let status = response.status();
            assert!(
                status.is_client_error() || status.is_success(),
                "{method} {path} with {:?} answered {status}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
    }
}

#[tokio::test]
async fn garbage_paths_and_queries_never_get_a_5xx() {
    let app = spawn_app().await;
    for path in [
        "/api/v2/workspaces/%00",
        "/api/v2/workspaces/ws-%2e%2e%2f",
        "/api/v2/organizations/%00/workspaces",
        "/api/v2/organizations/default/workspaces/%ff%fe",
        "/api/v2/organizations/default/workspaces?page[number]=-1",
        "/api/v2/organizations/default/workspaces?page[number]=99999999999999999999",
        "/api/v2/organizations/default/workspaces?page[number]=1000000000&page[size]=100",
        "/api/v2/organizations/default/workspaces?page%5Bsize",
        "/api/v2/runs/run-%00/actions/apply",
        "/api/v2/configuration-versions/cv-x/download",
        "/api/v2/vcs-connections/vcs-aaaaaaaaaaaaaaaa",
    ] {
        let status = app.get(path).await.status();
        assert!(
            status.is_client_error() || status.is_success(),
            "{path}: {status}"
        );
    }
    let _ = json!(null);
}
