//! The simulator as the demo and benchmarks use it: over its admin HTTP API, with
//! signed webhooks delivered to a receiver.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use ring::hmac;
use serde_json::{json, Value};
use terrapod_vcs_sim::Simulator;

type Received = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let server = HttpServer::new(move || {
        let store = store.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let store = store.clone();
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            v.to_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                store.lock().unwrap().push((headers, body.to_vec()));
                HttpResponse::Accepted().finish()
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, received)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_builds_a_world_and_webhooks_arrive_signed() {
    let sim = Simulator::start().await.unwrap();
    let (hook_url, received) = receiver().await;
    let admin = |path: &str| format!("{}/_admin/{path}", sim.url());
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| client.post(admin(path)).json(&body).send();

    assert_eq!(
        post(
            "webhooks",
            json!({"kind": "github", "url": hook_url, "secret": "s3cret"})
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        post(
            "webhooks",
            json!({"kind": "gitlab", "url": hook_url, "secret": "gl-secret"})
        )
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        post("gitlab/tokens", json!({"token": "glpat-demo"}))
            .await
            .unwrap()
            .status(),
        200
    );
    let repo: Value = post(
        "repos",
        json!({"provider": "github", "path": "acme/infra", "files": {"main.tf": "terraform {}"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(repo["head"].as_str().unwrap().len(), 40);
    post(
        "repos",
        json!({"provider": "gitlab", "path": "group/sub/project", "files": {"main.tf": ""}}),
    )
    .await
    .unwrap();

    let commit: Value = post(
        "commits",
        json!({"provider": "github", "repo": "acme/infra", "branch": "main", "message": "Add VPC",
               "files": {"vpc.tf": "vpc", "run.sh": {"content": "#!/bin/sh", "mode": "100755"}, "main.tf": null}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let sha = commit["sha"]
        .as_str()
        .unwrap_or_else(|| panic!("{commit}"))
        .to_owned();
    post("commits", json!({"provider": "github", "repo": "acme/infra", "branch": "feature", "message": "f", "files": {"f.tf": "f"}}))
        .await
        .unwrap();
    let opened: Value = post(
        "pulls",
        json!({"provider": "github", "repo": "acme/infra", "head": "feature", "title": "Feature"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(opened["number"], 1);
    let closed = client
        .patch(admin("pulls"))
        .json(&json!({"provider": "github", "repo": "acme/infra", "number": 1, "state": "closed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200);
    post("commits", json!({"provider": "gitlab", "repo": "group/sub/project", "branch": "main", "message": "gl", "files": {"a": "a"}}))
        .await
        .unwrap();

    let received = received.lock().unwrap().clone();
    let events: Vec<&str> = received
        .iter()
        .map(|(h, _)| {
            header(h, "x-github-event")
                .or(header(h, "x-gitlab-event"))
                .unwrap()
        })
        .collect();
    assert_eq!(
        events,
        vec!["push", "push", "pull_request", "pull_request", "Push Hook"]
    );
    let (headers, body) = &received[0];
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
    let signature = header(headers, "x-hub-signature-256")
        .unwrap()
        .strip_prefix("sha256=")
        .unwrap();
    hmac::verify(&key, body, &hex::decode(signature).unwrap()).expect("a valid GitHub signature");
    assert!(header(headers, "x-github-delivery").is_some());
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["after"], sha.as_str());
    assert_eq!(payload["ref"], "refs/heads/main");
    assert_eq!(payload["repository"]["full_name"], "acme/infra");
    let (gitlab_headers, gitlab_body) = &received[4];
    assert_eq!(header(gitlab_headers, "x-gitlab-token"), Some("gl-secret"));
    assert!(header(gitlab_headers, "x-gitlab-event-uuid").is_some());
    let gitlab_payload: Value = serde_json::from_slice(gitlab_body).unwrap();
    assert_eq!(
        gitlab_payload["project"]["path_with_namespace"],
        "group/sub/project"
    );

    let stats: Value = client
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats.is_object());
    let unknown = client.get(admin("nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = post("repos", json!({"provider": "github", "path": "no-slash"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // The committed tree is served as git produced it, with GitHub's wrapper directory.
    sim.add_github_app(1, terrapod_test_support::GITHUB_APP_TEST_PUBLIC_KEY);
    let files = sim
        .sim()
        .repo(terrapod_vcs_sim::Kind::Github, "acme/infra")
        .unwrap()
        .git
        .tree_files(&sha)
        .unwrap();
    let names: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, m, _)| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(names, vec![("run.sh", "100755"), ("vpc.tf", "100644")]);
}

/// Mints an installation token straight from the simulator, as a GitHub App would.
async fn installation_token(sim: &Simulator, client: &reqwest::Client) -> String {
    let claims = json!({"iat": chrono::Utc::now().timestamp() - 60, "exp": chrono::Utc::now().timestamp() + 300, "iss": "42"});
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(
            terrapod_test_support::GITHUB_APP_TEST_KEY.as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    let minted: Value = client
        .post(format!("{}/app/installations/7/access_tokens", sim.url()))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_take_the_configured_latency() {
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, terrapod_test_support::GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(7, 42, "acme", None);
    sim.create_repo(
        terrapod_vcs_sim::Kind::Github,
        "acme/infra",
        &[("main.tf", "")],
    );
    let client = reqwest::Client::new();
    let token = installation_token(&sim, &client).await;
    let set: Value = client
        .post(format!("{}/_admin/latency", sim.url()))
        .json(&json!({"fixed_ms": 150, "jitter_ms": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set, json!({"fixed_ms": 150, "jitter_ms": 100}));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = client
            .get(format!("{}/repos/acme/infra", sim.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 200);
        assert!(
            took >= std::time::Duration::from_millis(150)
                && took < std::time::Duration::from_millis(600),
            "{took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn githubs_secondary_limits_answer_403_with_retry_after_per_installation() {
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, terrapod_test_support::GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(7, 42, "acme", None);
    sim.create_repo(
        terrapod_vcs_sim::Kind::Github,
        "acme/infra",
        &[("main.tf", "")],
    );
    let client = reqwest::Client::new();
    let token = installation_token(&sim, &client).await;
    let limits: Value = client
        .post(format!("{}/_admin/github/secondary-limits", sim.url()))
        .json(&json!({"points_per_window": 5, "concurrent": 2, "window_seconds": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits["points_per_window"], 5);
    let get = || {
        client
            .get(format!("{}/repos/acme/infra/branches/main", sim.url()))
            .bearer_auth(&token)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200);
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["retry-after"], "60");
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("secondary rate limit"));
    let usage: Value = client
        .get(format!("{}/_admin/github/installations/7/usage", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["max_points_in_window"], 5);
    assert_eq!(usage["requests"], 5);
    assert_eq!(
        sim.stats(terrapod_vcs_sim::Kind::Github).secondary_limited,
        1
    );

    // Concurrency: with two requests in flight (slowed down), a third is refused.
    sim.set_secondary_limits(Some(terrapod_vcs_sim::SecondaryLimits {
        points_per_window: 1000,
        concurrent: 2,
        window_seconds: 60,
    }));
    sim.set_latency(700, 0);
    let (a, b, c) = tokio::join!(get(), get(), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        get().await
    });
    let mut statuses = vec![
        a.unwrap().status().as_u16(),
        b.unwrap().status().as_u16(),
        c.unwrap().status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 403]);
    assert_eq!(sim.installation_usage(7).max_concurrent, 2);
}
