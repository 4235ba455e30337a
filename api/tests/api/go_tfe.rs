//! HashiCorp's go-tfe (Debian's package, built with Debian's Go in GOPATH mode)
//! manages a VCS-driven workspace here (SPEC section 10): compat/go-tfe/main.go. The
//! test fails, never skips, when Go or go-tfe is missing (`scripts/test` installs
//! them) or when the client disagrees with the API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use terrapod_test_support::GITHUB_APP_TEST_PUBLIC_KEY;
use terrapod_vcs_sim::{Kind, Simulator};

use crate::helpers::{assert_error, spawn_app};

const GOPATH: &str = "/usr/share/gocode";

/// Builds the client (cached by Go under target/go-cache).
fn build_client(workspace_root: &Path) -> std::path::PathBuf {
    assert!(
        Path::new(GOPATH).join("src/github.com/hashicorp/go-tfe").is_dir(),
        "go-tfe is missing: run scripts/test (it installs golang-go and golang-github-hashicorp-go-tfe-dev)"
    );
    let binary = workspace_root.join("target/go-tfe-compat");
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(workspace_root.join("compat/go-tfe/main.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", workspace_root.join("target/go-cache"))
        .env("GOFLAGS", "")
        .output()
        .expect("Go is missing: run scripts/test (it installs golang-go)");
    assert!(
        output.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tfe_manages_a_vcs_workspace_and_unlinking_stops_polling() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let client = tokio::task::spawn_blocking({
        let root = root.clone();
        move || build_client(&root)
    })
    .await
    .unwrap();

    let app = spawn_app().await;
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(1234, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(91, 1234, "acme", None);
    sim.create_repo(Kind::Github, "acme/infra", &[("infra/main.tf", "")]);
    sim.commit(
        Kind::Github,
        "acme/infra",
        "release",
        "Release",
        &[("envs/prod/main.tf", "")],
    )
    .await;
    let connection: Value = app
        .post(
            "/api/v2/organizations/default/vcs-connections",
            &json!({"data": {"type": "vcs-connections", "attributes": {
                "name": "github", "provider": "github", "server-url": sim.url(),
                "github-app-id": 1234, "github-installation-id": 91,
                "private-key": terrapod_test_support::GITHUB_APP_TEST_KEY}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let connection = connection["data"]["id"].as_str().unwrap().to_owned();
    let ctx = app.poller_context(&app.vhost.url(), "1");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(terrapod_poller::run(ctx, listener, shutdown));

    let output = tokio::process::Command::new(&client)
        .env("TFE_ADDRESS", &app.address)
        .env("TFE_TOKEN", &app.admin_token)
        .env("TFE_CONNECTION", &connection)
        .env("TFE_REPO", "acme/infra")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "go-tfe disagrees: {stderr}{stdout}"
    );
    assert!(stdout.contains("every check passed"), "{stdout}");

    // Unlinked for real: no poll on request, and new commits make no run.
    let workspace: Value = app
        .get("/api/v2/organizations/default/workspaces/go-tfe")
        .await
        .json()
        .await
        .unwrap();
    let id = workspace["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(workspace["data"]["attributes"]["vcs-repo"], Value::Null);
    assert_eq!(
        workspace["data"]["relationships"]["vcs-connection"]["data"],
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
    let runs_path = format!("/api/v2/workspaces/{id}/runs");
    let list: Value = app.get(&runs_path).await.json().await.unwrap();
    let before = list["meta"]["pagination"]["total-count"].as_i64().unwrap();
    sim.commit(
        Kind::Github,
        "acme/infra",
        "release",
        "After",
        &[("envs/prod/x.tf", "")],
    )
    .await;
    sim.commit(
        Kind::Github,
        "acme/infra",
        "main",
        "After",
        &[("infra/x.tf", "")],
    )
    .await;
    // Three poll intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list: Value = app.get(&runs_path).await.json().await.unwrap();
    assert_eq!(
        list["meta"]["pagination"]["total-count"].as_i64().unwrap(),
        before
    );
    let _ = stop.send(true);
    let _ = poller.await;
}
