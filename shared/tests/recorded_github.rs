//! The GitHub provider against responses recorded from the real GitHub
//! (npm `@octokit/fixtures`), replayed by a small local server, where a scenario fits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use secrecy::SecretString;
use serde_json::Value;
use terrapod_shared::domain::{CommitSha, Provider};
use terrapod_shared::vcs::github::{next_link, GitHubClient};
use terrapod_shared::vcs::http::{RetryPolicy, VcsHttp};
use terrapod_shared::vcs::Priority;
use terrapod_shared::vcs::{ArchiveLimits, RepoUrl, VcsProvider, VcsShared};
use terrapod_test_support::GITHUB_APP_TEST_KEY;

fn scenario(name: &str) -> Vec<Value> {
    let path = std::env::var("TERRAPOD_OCTOKIT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fidelity/node_modules/@octokit/fixtures")
        })
        .join("scenarios/api.github.com")
        .join(name)
        .join("normalized-fixture.json");
    let raw = std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/fidelity-fixtures (scripts/test does)",
            path.display()
        )
    });
    serde_json::from_slice(&raw).unwrap()
}

/// A recorded answer: status, headers, body.
type Recorded = (u16, Vec<(String, String)>, Vec<u8>);

struct Replay {
    /// By (method, path with query).
    responses: HashMap<(String, String), Recorded>,
    aliases: HashMap<String, String>,
    base: String,
}

async fn replay(req: HttpRequest, state: web::Data<Replay>) -> HttpResponse {
    let method = req.method().as_str().to_ascii_lowercase();
    if method == "post" && req.path().ends_with("/access_tokens") {
        // Token minting is not part of the recorded scenarios.
        return HttpResponse::Created().json(
            serde_json::json!({"token": "ghs_replayed", "expires_at": "2099-01-01T00:00:00Z"}),
        );
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let target = state.aliases.get(&target).cloned().unwrap_or(target);
    let Some((status, headers, body)) = state.responses.get(&(method, target.clone())) else {
        return HttpResponse::NotFound().body(format!("no recording for {target}"));
    };
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(*status).unwrap());
    for (name, value) in headers {
        let value = value
            .replace("https://api.github.com", &state.base)
            .replace("https://codeload.github.com", &state.base);
        response.insert_header((name.as_str(), value));
    }
    response.body(body.clone())
}

async fn start_replay(scenarios: &[&str], aliases: &[(&str, &str)]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let mut responses = HashMap::new();
    for name in scenarios {
        for recorded in scenario(name) {
            let headers: Vec<(String, String)> = recorded["headers"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(name, _)| {
                    !matches!(
                        name.as_str(),
                        "content-length" | "connection" | "transfer-encoding"
                    )
                })
                .map(|(name, value)| {
                    (
                        name.clone(),
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_owned),
                    )
                })
                .collect();
            let binary = headers
                .iter()
                .any(|(n, v)| n == "content-type" && (v.contains("gzip") || v.contains("octet")));
            let body = match &recorded["response"] {
                Value::String(text) if binary => hex::decode(text).unwrap(),
                Value::String(text) => text.clone().into_bytes(),
                other => serde_json::to_vec(other).unwrap(),
            };
            let key = (
                recorded["method"].as_str().unwrap().to_owned(),
                recorded["path"].as_str().unwrap().to_owned(),
            );
            responses.insert(
                key,
                (recorded["status"].as_u64().unwrap() as u16, headers, body),
            );
        }
    }
    let state = web::Data::new(Replay {
        responses,
        aliases: aliases
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        base: base.clone(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .default_service(web::to(replay))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

fn client(base: &str) -> GitHubClient {
    let retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let shared = VcsShared::new(VcsHttp::with_timeout(retry, None, Duration::from_secs(10)));
    GitHubClient::new(
        Arc::clone(&shared),
        base,
        1,
        1,
        &SecretString::from(GITHUB_APP_TEST_KEY),
        Priority::Requested,
    )
    .unwrap()
}

#[tokio::test]
async fn the_default_branch_is_read_from_a_recorded_repository() {
    let recorded = scenario("get-repository");
    let base = start_replay(&["get-repository"], &[]).await;
    let repo = RepoUrl::parse(
        Provider::GitHub,
        "https://github.com/octokit-fixture-org/hello-world",
    )
    .unwrap();
    let branch = client(&base).default_branch(&repo).await.unwrap();
    assert_eq!(
        branch,
        recorded[0]["response"]["default_branch"].as_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_github_tarball_and_its_redirect_repack_to_its_tree() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let requested = format!("/repos/octokit-fixture-org/get-archive/tarball/{sha}");
    let base = start_replay(
        &["get-archive"],
        &[(
            requested.as_str(),
            "/repos/octokit-fixture-org/get-archive/tarball/main",
        )],
    )
    .await;
    let repo = RepoUrl::parse(
        Provider::GitHub,
        "https://github.com/octokit-fixture-org/get-archive",
    )
    .unwrap();
    let limits = ArchiveLimits {
        max_archive_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
    };
    let repacked = client(&base)
        .download_archive(&repo, &CommitSha::parse(sha).unwrap(), limits)
        .await
        .unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::Cursor::new(
        repacked.snapshot.read_all().unwrap(),
    )));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["README.md"], "the wrapper directory is gone");
}

#[test]
fn recorded_link_headers_are_followed_page_by_page() {
    let pages = scenario("paginate-issues");
    for (current, next) in pages
        .iter()
        .zip(pages.iter().skip(1).map(Some).chain([None]))
    {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(link) = current["headers"]["link"].as_str() {
            headers.insert("link", link.parse().unwrap());
        }
        let expected =
            next.map(|n| format!("https://api.github.com{}", n["path"].as_str().unwrap()));
        assert_eq!(next_link(&headers), expected);
    }
}
