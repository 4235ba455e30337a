use serde_json::Value;

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn ping_answers_204_with_the_tfe_api_version_without_auth() {
    let app = spawn_app().await;
    let response = app
        .request(reqwest::Method::GET, "/api/v2/ping", None, None)
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["TFP-API-Version"], "2.5");
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_auth_when_dependencies_are_up() {
    let app = spawn_app().await;
    let health = app
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "healthy");
    // The broker connection opens in the background just after start: `ready` follows.
    let started = std::time::Instant::now();
    loop {
        let ready = app
            .request(reqwest::Method::GET, "/readyz", None, None)
            .await;
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["checks"]["database"], "ok");
        if body["status"] == "ready" {
            assert_eq!(body["checks"]["rabbitmq"], "ok");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn readyz_is_degraded_but_200_and_names_the_failing_check_when_rabbitmq_is_unreachable() {
    let app = spawn_app_with(|env| {
        env.insert(
            "TERRAPOD_AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        );
    })
    .await;
    let ready = app
        .request(reqwest::Method::GET, "/readyz", None, None)
        .await;
    // CRUD keeps working without the broker: the load balancer must keep sending traffic.
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["database"], "ok");
    assert!(body["checks"]["rabbitmq"]
        .as_str()
        .unwrap()
        .starts_with("unreachable"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern_not_raw_path() {
    let app = spawn_app().await;
    app.get("/api/v2/workspaces/ws-doesnotexist0000").await;
    let metrics = app
        .request(reqwest::Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"terrapod_http_requests_total{route="/api/v2/workspaces/{id}",status="404"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("ws-doesnotexist"));
}

#[tokio::test]
async fn unknown_routes_and_methods_get_jsonapi_errors() {
    let app = spawn_app().await;
    assert_error(app.get("/api/v2/nothing-here").await, 404).await;
    let response = app
        .request(reqwest::Method::PUT, "/api/v2/ping", None, None)
        .await;
    assert_error(response, 405).await;
}

/// Reads the child's stderr lines until one contains `needle` (or the time is up).
async fn wait_for_log(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    needle: &str,
) -> String {
    let found = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the API exited without logging {needle:?}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), found)
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_started_without_the_broker_serves_crud_and_logs_when_the_broker_comes() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_app().await;
    let vhost = terrapod_test_support::TestVhost::new();
    let broker = terrapod_test_support::TcpProxy::start("127.0.0.1:5672").await;
    broker.cut();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_terrapod-api"))
        .arg("serve")
        .env("TERRAPOD_DATABASE__URL", app.db.url())
        .env("TERRAPOD_AMQP__URL", vhost.url_via(&broker.address()))
        .env("TERRAPOD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("TERRAPOD_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(api.stderr.take().unwrap()).lines();
    wait_for_log(&mut lines, "RabbitMQ is unreachable").await;
    let created = app
        .client
        .post(format!(
            "http://127.0.0.1:{port}/api/v2/organizations/default/workspaces"
        ))
        .bearer_auth(&app.admin_token)
        .json(&serde_json::json!({"data": {"type": "workspaces", "attributes": {"name": "no-broker"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "CRUD is served without the broker");
    let ready = app
        .client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "degraded");
    broker.restore();
    wait_for_log(&mut lines, "RabbitMQ is reachable").await;
    api.kill().await.unwrap();
}
