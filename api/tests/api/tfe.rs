//! TFE compatibility (SPEC section 10): the `vcs-repo` object on reads and writes, the
//! refusals of what is not implemented, workspaces by name, organizations, the
//! configuration versions of a workspace, and run filters.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use terrapod_shared::db::schema::{configuration_versions, runs, workspaces};
use terrapod_shared::domain::{Role, RunStatus, TriggerReason};
use terrapod_shared::ids::{ConfigurationVersionId, RunId};
use terrapod_shared::tokens;

use crate::helpers::{assert_error, rand_installation, record_push, sha, spawn_app, workspace_id};

fn workspace(attributes: Value, relationships: Value) -> Value {
    json!({"data": {"type": "workspaces", "attributes": attributes, "relationships": relationships}})
}

#[tokio::test]
async fn vcs_repo_is_read_and_written_like_tfe() {
    let app = spawn_app().await;
    let gitlab = app.create_gitlab_connection("gl", "glpat-x").await;
    let gitlab_id = gitlab["id"].as_str().unwrap();
    // A GitLab server of one's own.
    let patched = app
        .patch(
            &format!("/api/v2/vcs-connections/{gitlab_id}"),
            &json!({"data": {"type": "vcs-connections", "attributes": {
                "server-url": "https://gitlab.example.com", "token": "glpat-y"}}}),
        )
        .await;
    assert_eq!(patched.status(), 200, "{}", patched.text().await.unwrap());
    let github = app
        .create_github_connection("gh", rand_installation())
        .await;
    let github_id = github["id"].as_str().unwrap();

    let created = app
        .post(
            "/api/v2/organizations/default/workspaces",
            &workspace(
                json!({"name": "net", "vcs-repo": {"identifier": "group/sub/project",
                    "oauth-token-id": gitlab_id, "branch": "dev", "ingress-submodules": false}}),
                json!({}),
            ),
        )
        .await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let body: Value = created.json().await.unwrap();
    let attributes = &body["data"]["attributes"];
    assert_eq!(
        attributes["vcs-repo"],
        json!({"identifier": "group/sub/project", "display-identifier": "group/sub/project",
            "branch": "dev", "oauth-token-id": gitlab_id, "ingress-submodules": false,
            "tags-regex": null, "repository-http-url": "https://gitlab.example.com/group/sub/project",
            "service-provider": "gitlab_enterprise_edition"})
    );
    assert_eq!(attributes["vcs-repo-identifier"], "group/sub/project");
    assert_eq!(
        attributes["vcs-repo-url"],
        "https://gitlab.example.com/group/sub/project"
    );
    assert_eq!(attributes["vcs-branch"], "dev");
    assert_eq!(attributes["permissions"]["can-update"], true);
    assert_eq!(attributes["actions"]["is-destroyable"], true);
    assert_eq!(
        body["data"]["relationships"]["vcs-connection"]["data"]["id"],
        gitlab_id
    );
    let id = body["data"]["id"].as_str().unwrap().to_owned();

    // Re-pointed at GitHub through vcs-repo, flat fields agreeing.
    let moved = app
        .patch(
            &format!("/api/v2/workspaces/{id}"),
            &workspace(
                json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id, "tags-regex": "^v"},
                    "vcs-repo-url": "https://github.com/acme/infra"}),
                json!({}),
            ),
        )
        .await;
    assert_eq!(moved.status(), 200, "{}", moved.text().await.unwrap());
    let body: Value = moved.json().await.unwrap();
    let repo = &body["data"]["attributes"]["vcs-repo"];
    assert_eq!(repo["service-provider"], "github");
    assert_eq!(repo["repository-http-url"], "https://github.com/acme/infra");
    assert_eq!(repo["tags-regex"], "^v");
    assert_eq!(repo["branch"], "dev", "a vcs-repo without branch keeps it");

    // Disagreements and what is not implemented are 422s that say what.
    for (attributes, relationships, expected) in [
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id},
                "vcs-repo-url": "https://github.com/acme/other"}),
            json!({}),
            "vcs-repo-url",
        ),
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id},
                "vcs-branch": "main"}),
            json!({}),
            "",
        ),
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id, "branch": "x"},
                "vcs-branch": "main"}),
            json!({}),
            "vcs-branch",
        ),
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id}}),
            json!({"vcs-connection": {"data": {"type": "vcs-connections", "id": gitlab_id}}}),
            "vcs-connection",
        ),
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": "vcs-nope"}}),
            json!({}),
            "does not exist",
        ),
        (
            json!({"vcs-repo": {"identifier": "acme/infra", "oauth-token-id": github_id, "ingress-submodules": true}}),
            json!({}),
            "ingress-submodules",
        ),
        (
            json!({"allow-destroy-plan": false, "queue-all-runs": false}),
            json!({}),
            "allow-destroy-plan, queue-all-runs",
        ),
        (
            json!({"terraform-version": "1.9.0"}),
            json!({}),
            "terraform-version",
        ),
        (
            json!({"vcs-repo": null, "vcs-repo-url": "https://github.com/acme/infra"}),
            json!({}),
            "vcs-repo-url",
        ),
    ] {
        let response = app
            .patch(
                &format!("/api/v2/workspaces/{id}"),
                &workspace(attributes.clone(), relationships),
            )
            .await;
        if expected.is_empty() {
            // A flat branch alone agrees with a vcs-repo that names none.
            assert_eq!(response.status(), 200, "{attributes}");
            continue;
        }
        let detail = assert_error(response, 422).await;
        assert!(detail.contains(expected), "{attributes}: {detail}");
    }
    // Defaults are accepted.
    let defaults = app
        .patch(
            &format!("/api/v2/workspaces/{id}"),
            &workspace(
                json!({"allow-destroy-plan": true, "queue-all-runs": true, "agent-pool-id": null, "vcs-repo": {"github-app-installation-id": ""}}),
                json!({}),
            ),
        )
        .await;
    assert_eq!(defaults.status(), 200);

    // `"vcs-repo": null` unlinks.
    let unlinked = app
        .patch(
            &format!("/api/v2/workspaces/{id}"),
            &workspace(json!({"vcs-repo": null}), json!({})),
        )
        .await;
    assert_eq!(unlinked.status(), 200);
    let body: Value = unlinked.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["vcs-repo"], Value::Null);
    assert_eq!(
        body["data"]["attributes"]["vcs-repo-identifier"],
        Value::Null
    );
    assert_eq!(body["data"]["attributes"]["vcs-repo-url"], "");
    assert_eq!(
        body["data"]["relationships"]["vcs-connection"]["data"],
        Value::Null
    );
    assert_error(
        app.post(
            &format!("/api/v2/workspaces/{id}/actions/poll-vcs"),
            &Value::Null,
        )
        .await,
        422,
    )
    .await;

    // Executors see what they may do.
    let executor = tokens::generate();
    tokens::store(&mut app.connection().await, &executor, Role::Executor, "x")
        .await
        .unwrap();
    let seen: Value = app
        .request(
            Method::GET,
            &format!("/api/v2/workspaces/{id}"),
            Some(executor.expose_secret()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["data"]["attributes"]["permissions"]["can-update"],
        false
    );
    assert_eq!(
        seen["data"]["attributes"]["permissions"]["can-read-settings"],
        true
    );
    assert_eq!(
        seen["data"]["attributes"]["actions"]["is-destroyable"],
        false
    );
}

#[tokio::test]
async fn workspaces_by_name_search_organizations_and_configuration_versions() {
    let app = spawn_app().await;
    for name in ["prod-network", "prod-dns", "staging_net"] {
        let response = app
            .post(
                "/api/v2/organizations/default/workspaces",
                &workspace(json!({"name": name}), json!({})),
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    let names = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["attributes"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let found: Value = app
        .get("/api/v2/organizations/default/workspaces?search%5Bname%5D=NET")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&found), vec!["prod-network", "staging_net"]);
    assert_eq!(found["meta"]["pagination"]["total-count"], 2);
    // LIKE's wildcards are literal.
    let literal: Value = app
        .get("/api/v2/organizations/default/workspaces?search%5Bname%5D=_")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&literal), vec!["staging_net"]);
    // A filter this list does not implement is refused, never ignored.
    assert_error(
        app.get("/api/v2/organizations/default/workspaces?search%5Bwildcard-name%5D=prod-*")
            .await,
        422,
    )
    .await;
    assert_error(
        app.get("/api/v2/organizations/default/workspaces?search%5Bname%5D=%00")
            .await,
        400,
    )
    .await;

    let patched = app
        .patch(
            "/api/v2/organizations/default/workspaces/prod-dns",
            &workspace(json!({"auto-apply": true}), json!({})),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let body: Value = patched.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["auto-apply"], true);
    assert_error(
        app.patch(
            "/api/v2/organizations/default/workspaces/missing",
            &workspace(json!({"auto-apply": true}), json!({})),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(
        app.delete("/api/v2/organizations/default/workspaces/prod-dns")
            .await
            .status(),
        204
    );
    assert_error(
        app.get("/api/v2/organizations/default/workspaces/prod-dns")
            .await,
        404,
    )
    .await;

    let organization: Value = app
        .get("/api/v2/organizations/default")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(organization["data"]["type"], "organizations");
    assert_eq!(organization["data"]["id"], "default");
    assert_eq!(organization["data"]["attributes"]["name"], "default");
    assert_error(app.get("/api/v2/organizations/nope").await, 404).await;

    let linked = workspace_id(&app.create_linked_workspace("linked").await);
    record_push(&app.pool, &linked, &sha(1), None, b"one").await;
    record_push(&app.pool, &linked, &sha(2), Some(sha(1).as_str()), b"two").await;
    let versions: Value = app
        .get(&format!(
            "/api/v2/workspaces/{linked}/configuration-versions"
        ))
        .await
        .json()
        .await
        .unwrap();
    let shas: Vec<&str> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cv| cv["attributes"]["vcs-commit-sha"].as_str().unwrap())
        .collect();
    assert_eq!(shas, vec![sha(2).as_str(), sha(1).as_str()]);
    assert_eq!(versions["meta"]["pagination"]["total-count"], 2);
    assert_error(
        app.get("/api/v2/workspaces/ws-abcdefghijkmnopq/configuration-versions")
            .await,
        404,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_filters_narrow_a_workspace_of_a_thousand_runs() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("busy").await);
    let mut conn = app.connection().await;
    let archive = terrapod_shared::archives::store_bytes(&mut conn, b"tree")
        .await
        .unwrap();
    let statuses = [
        RunStatus::Pending,
        RunStatus::Planning,
        RunStatus::Errored,
        RunStatus::Applied,
    ];
    let mut cvs = Vec::new();
    let mut run_rows = Vec::new();
    for n in 0..1000u32 {
        let cv = ConfigurationVersionId::generate();
        let plan_only = n % 2 == 0;
        let commit = format!("{:040x}", 0xabc000 + n);
        cvs.push((
            configuration_versions::id.eq(cv.clone()),
            configuration_versions::workspace_id.eq(ws.clone()),
            configuration_versions::speculative.eq(plan_only),
            configuration_versions::vcs_commit_sha.eq(commit.clone()),
            configuration_versions::vcs_branch.eq("main"),
            configuration_versions::working_directory.eq(""),
            configuration_versions::archive_sha256.eq(archive.sha256.clone()),
            configuration_versions::size.eq(archive.size),
        ));
        run_rows.push((
            runs::id.eq(RunId::generate()),
            runs::workspace_id.eq(ws.clone()),
            runs::configuration_version_id.eq(cv),
            runs::status.eq(statuses[n as usize % 4]),
            runs::plan_only.eq(plan_only),
            runs::auto_apply.eq(false),
            runs::message.eq(format!("run {n}")),
            runs::trigger_reason.eq(if plan_only {
                TriggerReason::PullRequest
            } else {
                TriggerReason::Push
            }),
            runs::vcs_commit_sha.eq(commit),
            runs::vcs_branch.eq("main"),
            runs::vcs_pull_request_number.eq(plan_only.then_some(i64::from(n))),
        ));
    }
    diesel::insert_into(configuration_versions::table)
        .values(cvs)
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::insert_into(runs::table)
        .values(run_rows)
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::update(workspaces::table.find(&ws))
        .set(workspaces::run_count.eq(1000))
        .execute(&mut conn)
        .await
        .unwrap();

    let count = |query: &'static str| {
        let path = format!("/api/v2/workspaces/{ws}/runs?{query}");
        let app = &app;
        async move {
            let response = app.get(&path).await;
            assert_eq!(response.status(), 200, "{query}");
            let list: Value = response.json().await.unwrap();
            (
                list["meta"]["pagination"]["total-count"].as_i64().unwrap(),
                list["data"].as_array().unwrap().clone(),
            )
        }
    };
    assert_eq!(count("").await.0, 1000);
    let (errored, page) = count("filter%5Bstatus%5D=errored").await;
    assert_eq!(errored, 250);
    assert!(page.iter().all(|r| r["attributes"]["status"] == "errored"));
    assert_eq!(count("filter%5Bstatus%5D=errored,applied").await.0, 500);
    let (plans, page) = count("filter%5Boperation%5D=plan_only").await;
    assert_eq!(plans, 500);
    assert!(page.iter().all(|r| r["attributes"]["plan-only"] == true));
    assert_eq!(count("filter%5Boperation%5D=plan_and_apply").await.0, 500);
    assert_eq!(
        count("filter%5Boperation%5D=plan_only,plan_and_apply")
            .await
            .0,
        1000
    );
    // Pending runs are the even fourths; plan-only the even ones: both, a quarter.
    assert_eq!(
        count("filter%5Bstatus%5D=pending&filter%5Boperation%5D=plan_only")
            .await
            .0,
        250
    );
    let (found, page) = count("search%5Bcommit%5D=0000000000000000000000000000000000abc3e7").await;
    assert_eq!(found, 1);
    assert_eq!(page[0]["attributes"]["message"], "run 999");
    assert_eq!(
        count("search%5Bcommit%5D=00000000000000000000000000000000")
            .await
            .0,
        1000
    );
    // A prefix is a range: 0xabc3e0..=0xabc3e7 (runs 992 to 999), whatever its case;
    // nothing sorts after the last run's SHA.
    assert_eq!(
        count("search%5Bcommit%5D=0000000000000000000000000000000000ABC3E")
            .await
            .0,
        8
    );
    assert_eq!(
        count("search%5Bcommit%5D=0000000000000000000000000000000000abc3f")
            .await
            .0,
        0
    );
    assert_eq!(count("search%5Bcommit%5D=%25").await.0, 0);
    assert_eq!(count("search%5Bcommit%5D=00g").await.0, 0);
    // TFE's names that no run here has match nothing; empty lists filter nothing.
    assert_eq!(count("filter%5Bstatus%5D=policy_checked").await.0, 0);
    assert_eq!(count("filter%5Boperation%5D=destroy").await.0, 0);
    assert_eq!(count("filter%5Bstatus%5D=").await.0, 1000);
    for bad in [
        "filter%5Bstatus%5D=exploded",
        "filter%5Boperation%5D=explode",
        "filter%5Bsource%5D=tfe-ui",
        "filter%5Bstatus_group%5D=final",
    ] {
        let path = format!("/api/v2/workspaces/{ws}/runs?{bad}");
        assert_error(app.get(&path).await, 422).await;
    }
    // The API's sessions always use generic plans (db::api_pool); each list shape's
    // generic plan still reads one index, not every run of the workspace.
    diesel::sql_query("ANALYZE runs")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut conn = app.pool.get().await.unwrap();
    let mode: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "current_setting('plan_cache_mode')",
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(mode, "force_generic_plan");
    let columns = "SELECT id FROM runs WHERE workspace_id = $1";
    let order = "ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4";
    for (name, condition, index) in [
        ("unfiltered", "AND $2 = $2", "runs_workspace_created"),
        (
            "by_status",
            "AND status = 'errored' AND $2 = $2",
            "runs_workspace_status_created",
        ),
        (
            "by_commit",
            "AND vcs_commit_sha ~>=~ $2 AND vcs_commit_sha ~<~ ($2 || 'g')",
            "runs_workspace_commit",
        ),
    ] {
        diesel::sql_query(format!(
            "PREPARE {name} (text, text, bigint, bigint) AS {columns} {condition} {order}"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        let plan = explain(
            &mut conn,
            &format!("EXPLAIN EXECUTE {name} ('{ws}', '00', 20, 0)"),
        )
        .await;
        assert!(
            plan.iter().any(|line| line.contains(index))
                && plan.iter().any(|line| line.contains("$1")),
            "{name}: {plan:?}"
        );
    }
    // The webhook lookup's generic plan can use the partial index on repository paths
    // (with sequential scans off, a plan that cannot shows a Seq Scan).
    for statement in [
        "SET enable_seqscan = off",
        "PREPARE hook (text) AS SELECT id FROM workspaces \
         WHERE vcs_repo_path = $1 AND workspaces.vcs_repo_path <> ''",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let plan = explain(&mut conn, "EXPLAIN EXECUTE hook ('acme/infra')").await;
    diesel::sql_query("RESET enable_seqscan")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(
        plan.iter()
            .any(|line| line.contains("workspaces_vcs_repo_path")),
        "{plan:?}"
    );
}

/// The lines of an `EXPLAIN`.
async fn explain(conn: &mut diesel_async::AsyncPgConnection, statement: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    diesel::sql_query(statement)
        .load::<Line>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect()
}

#[tokio::test]
async fn configuration_versions_show_their_ingress_attributes() {
    let app = spawn_app().await;
    let ws = workspace_id(&app.create_linked_workspace("w").await);
    record_push(&app.pool, &ws, &sha(7), None, b"t").await;
    let runs: Value = app
        .get(&format!("/api/v2/workspaces/{ws}/runs"))
        .await
        .json()
        .await
        .unwrap();
    let cv = runs["data"][0]["relationships"]["configuration-version"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown: Value = app
        .get(&format!(
            "/api/v2/configuration-versions/{cv}?include=ingress_attributes"
        ))
        .await
        .json()
        .await
        .unwrap();
    let related = &shown["data"]["relationships"]["ingress-attributes"]["data"];
    assert_eq!(related["type"], "ingress-attributes");
    let included = &shown["included"][0];
    assert_eq!(included["id"], related["id"]);
    let attributes = &included["attributes"];
    assert_eq!(attributes["commit-sha"], sha(7).as_str());
    assert_eq!(attributes["branch"], "main");
    assert_eq!(attributes["identifier"], "acme/infra");
    assert_eq!(attributes["sender-username"], "octocat");
    assert_eq!(
        attributes["commit-url"],
        format!("https://github.com/acme/infra/commit/{}", sha(7))
    );
    let own: Value = app
        .get(&format!(
            "/api/v2/configuration-versions/{cv}/ingress-attributes"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["data"], *included);
    // Versions recorded before ingress attributes were kept have none.
    diesel::update(configuration_versions::table.filter(configuration_versions::id.eq(&cv)))
        .set(configuration_versions::ingress.eq(None::<Value>))
        .execute(&mut app.connection().await)
        .await
        .unwrap();
    assert_error(
        app.get(&format!(
            "/api/v2/configuration-versions/{cv}/ingress-attributes"
        ))
        .await,
        404,
    )
    .await;
    let shown: Value = app
        .get(&format!("/api/v2/configuration-versions/{cv}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["data"]["relationships"]["ingress-attributes"]["data"],
        Value::Null
    );
}
