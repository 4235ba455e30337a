//! The simulator's answers checked against published sources, not memory: GitHub's
//! own OpenAPI description (npm `@octokit/openapi`) and responses recorded from real
//! GitLab (Debian `golang-github-xanzy-go-gitlab-dev`). `scripts/fidelity-fixtures`
//! installs both; `scripts/test` runs it first.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use terrapod_test_support::{GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY};
use terrapod_vcs_sim::{Kind, NewPull, Simulator};

fn fixture(env: &str, default: &str) -> PathBuf {
    let path = std::env::var(env).map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(default)
    });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fidelity-fixtures (scripts/test does) or set {env}",
        path.display()
    );
    path
}

fn github_openapi() -> Value {
    let path = fixture(
        "TERRAPOD_OCTOKIT_OPENAPI",
        "target/fidelity/node_modules/@octokit/openapi/generated/api.github.com.json",
    );
    let mut doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    to_json_schema(&mut doc);
    doc
}

fn gitlab_testdata() -> PathBuf {
    fixture(
        "TERRAPOD_GO_GITLAB_TESTDATA",
        "/usr/share/gocode/src/github.com/xanzy/go-gitlab/testdata",
    )
}

/// OpenAPI 3.0 marks nullability with `nullable: true`; JSON Schema with a `null` type.
fn to_json_schema(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                to_json_schema(child);
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                if let Some(Value::Array(options)) = map.get_mut("enum") {
                    options.push(Value::Null);
                }
                match map.get("type").cloned() {
                    Some(Value::String(kind)) => {
                        map.insert("type".into(), json!([kind, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

fn validator(doc: &Value, pointer: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#{pointer}"));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&root)
        .unwrap_or_else(|err| panic!("{pointer}: schema does not compile: {err}"))
}

/// Validates `instance` against the schema at `pointer` inside the OpenAPI document.
fn assert_matches_schema(doc: &Value, pointer: &str, instance: &Value, what: &str) {
    let validator = validator(doc, pointer);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(10)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match GitHub's schema:\n{}",
        errors.join("\n")
    );
}

fn response_schema(path: &str, method: &str, status: &str) -> String {
    let escaped = path
        .replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D");
    format!("/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema")
}

/// A repository with a `feature` branch and one open pull/merge request from it, so
/// list answers are not empty.
async fn repository_with_open_pull(sim: &Simulator, kind: Kind, repo: &str) {
    sim.create_repo(kind, repo, &[("main.tf", "")]);
    sim.commit(kind, repo, "feature", "Change", &[("a.tf", "a")])
        .await;
    let pull = NewPull {
        head: "feature".into(),
        base: Some("main".into()),
        title: "A change".into(),
        draft: false,
        head_repo: None,
    };
    sim.open_pull(kind, repo, pull).await;
}

fn app_jwt() -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"iat": now - 60, "exp": now + 540, "iss": "42"}),
        &EncodingKey::from_rsa_pem(GITHUB_APP_TEST_KEY.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_responses_validate_against_githubs_openapi_description() {
    let doc = github_openapi();
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(7, 42, "acme", None);
    repository_with_open_pull(&sim, Kind::Github, "acme/infra").await;
    let main = sim.sim().repo(Kind::Github, "acme/infra").unwrap().branches["main"].clone();
    sim.set_tag(Kind::Github, "acme/infra", "v1.0.0", &main);
    let client = reqwest::Client::new();
    let minted = client
        .post(format!("{}/app/installations/7/access_tokens", sim.url()))
        .bearer_auth(app_jwt())
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 201);
    let token_body: Value = minted.json().await.unwrap();
    assert_matches_schema(
        &doc,
        &response_schema(
            "/app/installations/{installation_id}/access_tokens",
            "post",
            "201",
        ),
        &token_body,
        "installation token",
    );
    let token = token_body["token"].as_str().unwrap().to_owned();
    for (path, template, what) in [
        ("/repos/acme/infra", "/repos/{owner}/{repo}", "repository"),
        (
            "/repos/acme/infra/branches/main",
            "/repos/{owner}/{repo}/branches/{branch}",
            "branch",
        ),
        (
            "/repos/acme/infra/pulls?state=open&base=main",
            "/repos/{owner}/{repo}/pulls",
            "pull request list",
        ),
        (
            "/installation/repositories",
            "/installation/repositories",
            "installation repositories",
        ),
        (
            "/repos/acme/infra/compare/main...feature",
            "/repos/{owner}/{repo}/compare/{basehead}",
            "comparison",
        ),
        (
            "/repos/acme/infra/pulls/1/files?per_page=100",
            "/repos/{owner}/{repo}/pulls/{pull_number}/files",
            "pull request files",
        ),
        (
            "/repos/acme/infra/tags?per_page=100",
            "/repos/{owner}/{repo}/tags",
            "tags",
        ),
    ] {
        let response = client
            .get(format!("{}{path}", sim.url()))
            .bearer_auth(&token)
            .header("Accept", "application/vnd.github+json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        for header in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "etag",
        ] {
            assert!(
                response.headers().contains_key(header),
                "{path} lacks {header}"
            );
        }
        let body: Value = response.json().await.unwrap();
        if what == "pull request list" {
            assert_eq!(body.as_array().unwrap().len(), 1);
        }
        if what == "comparison" {
            assert_eq!(body["files"][0]["filename"], "a.tf");
            assert_eq!(body["ahead_by"], 1);
        }
        if what == "tags" {
            assert_eq!(body[0]["name"], "v1.0.0");
        }
        if what == "pull request files" {
            assert_eq!(body[0]["filename"], "a.tf");
            assert_eq!(body[0]["status"], "added");
        }
        if what == "repository" {
            // The check has teeth: a repository without its full name is refused.
            let mut broken = body.clone();
            broken.as_object_mut().unwrap().remove("full_name");
            assert!(!validator(&doc, &response_schema(template, "get", "200")).is_valid(&broken));
        }
        assert_matches_schema(&doc, &response_schema(template, "get", "200"), &body, what);
    }
    // Check runs: create, update, one, and the list of a commit's.
    let head = sim.sim().repo(Kind::Github, "acme/infra").unwrap().branches["feature"].clone();
    let created = client
        .post(format!("{}/repos/acme/infra/check-runs", sim.url()))
        .bearer_auth(&token)
        .json(&json!({"name": "terrapod/default/infra", "head_sha": head, "status": "queued",
            "external_id": "run-1", "details_url": "http://localhost:8080/app/default/infra/runs/run-1",
            "output": {"title": "Plan queued", "summary": "Terraform run run-1: Plan queued."}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_matches_schema(
        &doc,
        &response_schema("/repos/{owner}/{repo}/check-runs", "post", "201"),
        &created,
        "created check run",
    );
    let id = created["id"].as_i64().unwrap();
    let updated = client
        .patch(format!("{}/repos/acme/infra/check-runs/{id}", sim.url()))
        .bearer_auth(&token)
        .json(&json!({"status": "completed", "conclusion": "success"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["conclusion"], "success");
    assert!(updated["completed_at"].is_string());
    assert_matches_schema(
        &doc,
        &response_schema(
            "/repos/{owner}/{repo}/check-runs/{check_run_id}",
            "patch",
            "200",
        ),
        &updated,
        "updated check run",
    );
    for (path, template) in [
        (
            format!("/repos/acme/infra/check-runs/{id}"),
            "/repos/{owner}/{repo}/check-runs/{check_run_id}",
        ),
        (
            "/repos/acme/infra/commits/feature/check-runs?check_name=terrapod%2Fdefault%2Finfra"
                .to_owned(),
            "/repos/{owner}/{repo}/commits/{ref}/check-runs",
        ),
    ] {
        let body: Value = client
            .get(format!("{}{path}", sim.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_matches_schema(&doc, &response_schema(template, "get", "200"), &body, &path);
    }
    // GitHub's refusals: a completed run without a conclusion, an unknown commit.
    for body in [
        json!({"name": "x", "head_sha": head, "status": "completed"}),
        json!({"name": "x", "head_sha": "0".repeat(40)}),
    ] {
        let refused = client
            .post(format!("{}/repos/acme/infra/check-runs", sim.url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{body}");
        let refused: Value = refused.json().await.unwrap();
        assert_matches_schema(
            &doc,
            "/components/schemas/basic-error",
            &refused,
            "422 body",
        );
    }
    // Errors have GitHub's shape too.
    let unauthorized: Value = client
        .get(format!("{}/repos/acme/infra", sim.url()))
        .bearer_auth("ghs_wrong")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_matches_schema(
        &doc,
        "/components/schemas/basic-error",
        &unauthorized,
        "401 body",
    );
}

/// Every field of the recorded real response is present in ours, with the same JSON
/// type (a `null` on either side matches anything: the recording and we may differ
/// in what is set).
fn assert_same_fields(recorded: &Value, ours: &Value, path: &str) {
    match (recorded, ours) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                let field = format!("{path}.{key}");
                let theirs = actual
                    .get(key)
                    .unwrap_or_else(|| panic!("GitLab field {field} is missing"));
                assert_same_fields(value, theirs, &field);
            }
        }
        (Value::Array(expected), Value::Array(actual)) => {
            if let (Some(e), Some(a)) = (expected.first(), actual.first()) {
                assert_same_fields(e, a, &format!("{path}[]"));
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (expected, actual) => assert_eq!(
            std::mem::discriminant(expected),
            std::mem::discriminant(actual),
            "GitLab field {path}: recorded {expected}, simulated {actual}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_responses_carry_the_fields_of_recorded_real_responses() {
    let testdata = gitlab_testdata();
    let recorded = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(testdata.join(name)).unwrap()).unwrap()
    };
    let sim = Simulator::start().await.unwrap();
    sim.add_gitlab_token("glpat-x", None);
    repository_with_open_pull(&sim, Kind::Gitlab, "group/project").await;
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client
            .get(format!("{}/api/v4/{path}", sim.url()))
            .header("PRIVATE-TOKEN", "glpat-x");
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let branch = get("projects/group%2Fproject/repository/branches/main").await;
    assert_same_fields(&recorded("get_branch.json"), &branch, "branch");
    let merge_requests =
        get("projects/group%2Fproject/merge_requests?state=opened&target_branch=main").await;
    assert_same_fields(
        &recorded("get_merge_requests.json"),
        &merge_requests,
        "merge_requests",
    );
    // go-gitlab records no comparison or MR diffs: their fields are checked against
    // the fields go-gitlab decodes (its `Compare` and `Diff` structs).
    let compare =
        get("projects/group%2Fproject/repository/compare?from=main&to=feature&straight=false")
            .await;
    assert_same_fields(
        &json!({"commit": {"id": "", "title": ""}, "commits": [{"id": ""}], "diffs": [{
            "old_path": "", "new_path": "", "a_mode": "", "b_mode": "", "diff": "",
            "new_file": false, "renamed_file": false, "deleted_file": false}],
            "compare_timeout": false, "compare_same_ref": false, "web_url": ""}),
        &compare,
        "compare",
    );
    assert_eq!(compare["diffs"][0]["new_path"], "a.tf");
    // Commit statuses: go-gitlab records none; their fields are checked against its
    // `CommitStatus` struct. Setting the state a status already has is refused, as
    // GitLab does.
    let head = sim
        .sim()
        .repo(Kind::Gitlab, "group/project")
        .unwrap()
        .branches["feature"]
        .clone();
    let post_status = |state: &str| {
        client
            .post(format!(
                "{}/api/v4/projects/group%2Fproject/statuses/{head}",
                sim.url()
            ))
            .header("PRIVATE-TOKEN", "glpat-x")
            .json(
                &json!({"state": state, "name": "terrapod/default/project", "ref": "feature",
                "target_url": "http://localhost:8080/app/default/project/runs/run-1"}),
            )
            .send()
    };
    let created = post_status("running").await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let commit_status_fields = json!({"id": 0, "sha": "", "ref": "", "status": "",
        "created_at": "", "started_at": "", "finished_at": "", "name": "", "allow_failure": false,
        "coverage": 0.0, "author": {"id": 0, "username": "", "name": "", "state": "",
        "avatar_url": "", "web_url": ""}, "description": "", "target_url": ""});
    assert_same_fields(&commit_status_fields, &created, "commit status");
    let again = post_status("running").await.unwrap();
    assert_eq!(again.status(), 400);
    let again: Value = again.json().await.unwrap();
    assert!(again["message"]
        .as_str()
        .unwrap()
        .starts_with("Cannot transition status"));
    assert_eq!(post_status("success").await.unwrap().status(), 201);
    let statuses = get(&format!(
        "projects/group%2Fproject/repository/commits/{head}/statuses"
    ))
    .await;
    assert_eq!(statuses.as_array().unwrap().len(), 1);
    assert_eq!(statuses[0]["status"], "success");
    assert_same_fields(&json!([commit_status_fields]), &statuses, "commit statuses");
    let diffs = get("projects/group%2Fproject/merge_requests/1/diffs?per_page=100").await;
    assert_same_fields(
        &json!([{"old_path": "", "new_path": "", "a_mode": "", "b_mode": "", "diff": "",
            "new_file": false, "renamed_file": false, "deleted_file": false, "generated_file": false}]),
        &diffs,
        "merge request diffs",
    );
    let user = get("user").await;
    assert_same_fields(&recorded("get_user.json"), &user, "user");
    let unauthorized = client
        .get(format!("{}/api/v4/user", sim.url()))
        .header("PRIVATE-TOKEN", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        unauthorized.json::<Value>().await.unwrap(),
        json!({"message": "401 Unauthorized"})
    );
}
