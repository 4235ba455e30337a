use serde_json::{json, Value};

use crate::helpers::{assert_error, spawn_app};

const PATH: &str = "/api/v2/organizations/default/workspaces";

fn workspace(attributes: Value) -> Value {
    json!({"data": {"type": "workspaces", "attributes": attributes}})
}

fn linked(attributes: Value, connection_id: &str) -> Value {
    json!({"data": {"type": "workspaces", "attributes": attributes,
        "relationships": {"vcs-connection": {"data": {"id": connection_id, "type": "vcs-connections"}}}}})
}

#[tokio::test]
async fn creating_a_workspace_returns_every_attribute() {
    let app = spawn_app().await;
    let response = app.post(PATH, &workspace(json!({"name": "plain"}))).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let data = &body["data"];
    assert!(data["id"].as_str().unwrap().starts_with("ws-"));
    let attrs = &data["attributes"];
    for (key, expected) in [
        ("name", json!("plain")),
        ("execution-mode", json!("remote")),
        ("auto-apply", json!(false)),
        ("vcs-repo-url", json!("")),
        ("vcs-branch", json!("")),
        ("vcs-working-directory", json!("")),
        ("working-directory", json!("")),
        ("vcs-last-commit-sha", Value::Null),
        ("vcs-last-polled-at", Value::Null),
        ("vcs-last-error", Value::Null),
        ("vcs-last-error-at", Value::Null),
    ] {
        assert_eq!(attrs[key], expected, "{key}");
    }
    assert!(attrs["created-at"].is_string() && attrs["updated-at"].is_string());
    assert_eq!(data["relationships"]["vcs-connection"]["data"], Value::Null);
}

#[tokio::test]
async fn every_accepted_url_form_links_for_its_provider() {
    let app = spawn_app().await;
    let github = app.create_github_connection("gh", 1).await;
    let gitlab = app.create_gitlab_connection("gl", "glpat-x").await;
    let cases = [
        (&github, "https://github.com/org/repo"),
        (&github, "https://github.com/org/repo.git"),
        (&github, "git@github.com:org/repo.git"),
        (&github, "https://ghe.example.com/org/repo/"),
        (&gitlab, "https://gitlab.com/group/project"),
        (&gitlab, "https://gitlab.com/group/subgroup/project"),
        (&gitlab, "https://gitlab.example.com/group/project.git"),
        (&gitlab, "git@gitlab.com:group/project.git"),
    ];
    for (index, (connection, url)) in cases.iter().enumerate() {
        let body = linked(
            json!({"name": format!("ws-{index}"), "vcs-repo-url": url, "vcs-branch": "main", "working-directory": "infra/prod"}),
            connection["id"].as_str().unwrap(),
        );
        let response = app.post(PATH, &body).await;
        assert_eq!(
            response.status(),
            201,
            "{url}: {}",
            response.text().await.unwrap()
        );
        let data: Value = response.json().await.unwrap();
        assert_eq!(data["data"]["attributes"]["vcs-repo-url"], *url);
        assert_eq!(
            data["data"]["attributes"]["vcs-working-directory"],
            "infra/prod"
        );
        assert_eq!(
            data["data"]["relationships"]["vcs-connection"]["data"]["id"],
            connection["id"]
        );
    }
}

#[tokio::test]
async fn invalid_vcs_settings_are_422_with_a_clear_reason() {
    let app = spawn_app().await;
    let github = app.create_github_connection("gh", 1).await;
    let id = github["id"].as_str().unwrap();
    let detail = assert_error(
        app.post(
            PATH,
            &linked(
                json!({"name": "a", "vcs-repo-url": "https://github.com/a/b/c"}),
                id,
            ),
        )
        .await,
        422,
    )
    .await;
    assert!(detail.contains("Accepted forms"), "{detail}");
    let detail = assert_error(
        app.post(
            PATH,
            &workspace(json!({"name": "a", "vcs-repo-url": "https://github.com/a/b"})),
        )
        .await,
        422,
    )
    .await;
    assert!(detail.contains("vcs-connection"), "{detail}");
    let detail = assert_error(app.post(PATH, &linked(json!({"name": "a"}), id)).await, 422).await;
    assert!(detail.contains("vcs-repo-url"), "{detail}");
    let detail = assert_error(
        app.post(
            PATH,
            &linked(
                json!({"name": "a", "vcs-repo-url": "https://github.com/a/b"}),
                "vcs-abcdefghijkmnopq",
            ),
        )
        .await,
        422,
    )
    .await;
    assert!(detail.contains("does not exist"), "{detail}");
    for attributes in [
        json!({"name": "a", "working-directory": "/abs"}),
        json!({"name": "a", "vcs-working-directory": "a/../../b"}),
        json!({"name": "a", "vcs-working-directory": "a", "working-directory": "b"}),
        json!({"name": "a", "vcs-branch": "bad..branch"}),
        json!({"name": "bad name"}),
        json!({"name": ""}),
        json!({"name": "x".repeat(91)}),
        json!({"name": "a", "execution-mode": "cloud"}),
        json!({"name": "a", "auto-apply": "yes"}),
        json!({}),
    ] {
        assert_error(app.post(PATH, &workspace(attributes)).await, 422).await;
    }
}

#[tokio::test]
async fn connections_of_another_organization_cannot_be_linked() {
    let app = spawn_app().await;
    let github = app.create_github_connection("gh", 1).await;
    {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = app.connection().await;
        conn.batch_execute("INSERT INTO organizations (name) VALUES ('other')")
            .await
            .unwrap();
    }
    let body = linked(
        json!({"name": "a", "vcs-repo-url": "https://github.com/a/b"}),
        github["id"].as_str().unwrap(),
    );
    let detail = assert_error(
        app.post("/api/v2/organizations/other/workspaces", &body)
            .await,
        422,
    )
    .await;
    assert!(detail.contains("organization `other`"), "{detail}");
}

#[tokio::test]
async fn duplicate_names_are_422_and_names_resolve_within_the_organization() {
    let app = spawn_app().await;
    assert_eq!(
        app.post(PATH, &workspace(json!({"name": "prod"})))
            .await
            .status(),
        201
    );
    assert_error(
        app.post(PATH, &workspace(json!({"name": "prod"}))).await,
        422,
    )
    .await;
    let by_name: Value = app.get(&format!("{PATH}/prod")).await.json().await.unwrap();
    assert_eq!(by_name["data"]["attributes"]["name"], "prod");
    assert_error(app.get(&format!("{PATH}/missing")).await, 404).await;
    assert_error(
        app.get("/api/v2/organizations/nope/workspaces/prod").await,
        404,
    )
    .await;
    assert_error(app.get("/api/v2/organizations/nope/workspaces").await, 404).await;
}

#[tokio::test]
async fn changing_url_or_branch_resets_the_last_commit_sha() {
    let app = spawn_app().await;
    let ws = app.create_linked_workspace("w").await;
    let id = ws["id"].as_str().unwrap();
    let path = format!("/api/v2/workspaces/{id}");
    set_sha(&app).await;
    assert!(sha_after(&app, &path, json!({"auto-apply": true}))
        .await
        .is_string());
    assert!(sha_after(&app, &path, json!({"vcs-branch": "develop"}))
        .await
        .is_null());
    set_sha(&app).await;
    assert!(
        sha_after(&app, &path, json!({"vcs-branch": "develop"}))
            .await
            .is_string(),
        "same branch again"
    );
    assert!(sha_after(
        &app,
        &path,
        json!({"vcs-repo-url": "https://github.com/acme/other"})
    )
    .await
    .is_null());
}

async fn set_sha(app: &crate::helpers::TestApp) {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use terrapod_shared::db::schema::workspaces::dsl::*;
    let mut conn = app.connection().await;
    diesel::update(workspaces)
        .set(vcs_last_commit_sha.eq("0123456789abcdef0123456789abcdef01234567"))
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn sha_after(app: &crate::helpers::TestApp, path: &str, attributes: Value) -> Value {
    let response = app
        .patch(
            path,
            &json!({"data": {"type": "workspaces", "attributes": attributes}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["data"]["attributes"]["vcs-last-commit-sha"].clone()
}

#[tokio::test]
async fn data_null_with_an_empty_url_disconnects() {
    let app = spawn_app().await;
    let ws = app.create_linked_workspace("w").await;
    let path = format!("/api/v2/workspaces/{}", ws["id"].as_str().unwrap());
    let response = app
        .patch(
            &path,
            &json!({"data": {"type": "workspaces", "attributes": {"vcs-repo-url": ""}, "relationships": {"vcs-connection": {"data": null}}}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["data"]["relationships"]["vcs-connection"]["data"],
        Value::Null
    );
    assert_eq!(body["data"]["attributes"]["vcs-repo-url"], "");
    let half = app
        .patch(&path, &json!({"data": {"type": "workspaces", "attributes": {"vcs-repo-url": "https://github.com/a/b"}}}))
        .await;
    assert_error(half, 422).await;
}

#[tokio::test]
async fn deleting_a_workspace_is_204_then_404() {
    let app = spawn_app().await;
    let ws = app.create_linked_workspace("w").await;
    let path = format!("/api/v2/workspaces/{}", ws["id"].as_str().unwrap());
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_error(app.get(&path).await, 404).await;
    assert_error(app.delete(&path).await, 404).await;
}

#[tokio::test]
async fn lists_paginate_tfe_style() {
    let app = spawn_app().await;
    for index in 0..25 {
        let response = app
            .post(PATH, &workspace(json!({"name": format!("ws-{index:02}")})))
            .await;
        assert_eq!(response.status(), 201);
    }
    let page: Value = app
        .get(&format!("{PATH}?page%5Bnumber%5D=3&page%5Bsize%5D=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    let meta = &page["meta"]["pagination"];
    assert_eq!(meta["current-page"], 3);
    assert_eq!(meta["page-size"], 10);
    assert_eq!(meta["prev-page"], 2);
    assert_eq!(meta["next-page"], Value::Null);
    assert_eq!(meta["total-pages"], 3);
    assert_eq!(meta["total-count"], 25);
    let default: Value = app.get(PATH).await.json().await.unwrap();
    assert_eq!(default["data"].as_array().unwrap().len(), 20);
    assert_eq!(default["meta"]["pagination"]["next-page"], 2);
    let clamped: Value = app
        .get(&format!("{PATH}?page[size]=1000"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(clamped["meta"]["pagination"]["page-size"], 100);
    assert_eq!(clamped["data"].as_array().unwrap().len(), 25);
    assert_error(app.get(&format!("{PATH}?page[number]=abc")).await, 400).await;
    assert_error(app.get(&format!("{PATH}?page[size]=0")).await, 400).await;
}

#[tokio::test]
async fn document_shape_errors_have_their_own_statuses() {
    let app = spawn_app().await;
    assert_error(
        app.post(
            PATH,
            &json!({"data": {"type": "runs", "attributes": {"name": "x"}}}),
        )
        .await,
        409,
    )
    .await;
    let raw = |body: &[u8]| {
        app.request(
            reqwest::Method::POST,
            PATH,
            Some(&app.admin_token),
            Some(body.to_vec()),
        )
    };
    assert_error(raw(b"{\"data\":").await, 400).await;
    assert_error(raw(b"").await, 400).await;
    assert_error(raw(b"{}").await, 422).await;
    let mut huge = b"{\"data\":{\"type\":\"workspaces\",\"attributes\":{\"name\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 1));
    huge.extend(b"\"}}}");
    assert_error(raw(&huge).await, 413).await;
}

#[tokio::test]
async fn file_trigger_settings_have_defaults_round_trip_and_refuse_bad_values() {
    let app = spawn_app().await;
    let response = app.post(PATH, &workspace(json!({"name": "mono"}))).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let attrs = &body["data"]["attributes"];
    assert_eq!(
        attrs["file-triggers-enabled"], true,
        "new workspaces filter"
    );
    assert_eq!(attrs["trigger-prefixes"], json!([]));
    assert_eq!(attrs["trigger-patterns"], json!([]));
    assert_eq!(attrs["speculative-enabled"], true);
    assert_eq!(attrs["vcs-tags-regex"], Value::Null);
    let path = format!(
        "/api/v2/workspaces/{}",
        body["data"]["id"].as_str().unwrap()
    );

    let patched = app
        .patch(
            &path,
            &workspace(json!({"trigger-prefixes": ["./modules/", "shared"], "speculative-enabled": false, "file-triggers-enabled": false})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    let attrs = &patched["data"]["attributes"];
    assert_eq!(attrs["trigger-prefixes"], json!(["modules", "shared"]));
    assert_eq!(attrs["speculative-enabled"], false);
    assert_eq!(attrs["file-triggers-enabled"], false);

    // Patterns while prefixes are set, in one request or against the stored ones.
    for body in [
        json!({"trigger-patterns": ["**/*.tf"]}),
        json!({"trigger-prefixes": ["a"], "trigger-patterns": ["**/*.tf"]}),
    ] {
        let detail = assert_error(app.patch(&path, &workspace(body)).await, 422).await;
        assert!(
            detail.contains("trigger-prefixes and trigger-patterns"),
            "{detail}"
        );
    }
    // Clearing the prefixes makes room for patterns.
    let swapped = app
        .patch(
            &path,
            &workspace(
                json!({"trigger-prefixes": null, "trigger-patterns": ["modules/**", "**/*.tf"]}),
            ),
        )
        .await;
    assert_eq!(swapped.status(), 200);
    for (body, named) in [
        (json!({"trigger-patterns": ["envs/[prod"]}), "envs/[prod"),
        (
            json!({"trigger-prefixes": ["../outside"]}),
            "trigger-prefixes",
        ),
        (json!({"trigger-prefixes": ["/"]}), "trigger-prefixes"),
        (json!({"vcs-tags-regex": "v(1"}), "vcs-tags-regex"),
        (
            json!({"file-triggers-enabled": "yes"}),
            "expected a boolean",
        ),
        (
            json!({"speculative-enabled": null}),
            "speculative-enabled must be true or false",
        ),
    ] {
        let detail = assert_error(app.patch(&path, &workspace(body.clone())).await, 422).await;
        assert!(detail.contains(named), "{body}: {detail}");
    }
    let created = app
        .post(
            PATH,
            &workspace(json!({"name": "bad", "trigger-patterns": ["[z-a]"]})),
        )
        .await;
    assert_error(created, 422).await;
    // A tag-driven workspace: the regex is stored and echoed; `null` unsets it.
    let tagged = app
        .patch(
            &path,
            &workspace(json!({"vcs-tags-regex": "^v\\d+\\.\\d+$"})),
        )
        .await;
    assert_eq!(tagged.status(), 200);
    let tagged: Value = tagged.json().await.unwrap();
    assert_eq!(
        tagged["data"]["attributes"]["vcs-tags-regex"],
        "^v\\d+\\.\\d+$"
    );
    let untagged: Value = app
        .patch(&path, &workspace(json!({"vcs-tags-regex": null})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        untagged["data"]["attributes"]["vcs-tags-regex"],
        Value::Null
    );
}
