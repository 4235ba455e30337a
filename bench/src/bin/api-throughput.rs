//! API throughput with a real load generator (wrk, 64 connections): a workspace's run
//! list (page of 20 of 1,000 runs) and a workspace, against a release `terrapod-api`.
//! `api-throughput [SECONDS] [ROUTE]`: ROUTE keeps the routes whose label contains it.

use std::process::Command;
use std::time::Duration;

use secrecy::ExposeSecret;
use terrapod_bench::{free_port, postgres_cpu_seconds, Measured};
use terrapod_shared::archives;
use terrapod_shared::domain::{BranchName, CommitSha, Role};
use terrapod_shared::runs::{create_vcs_run, NewVcsRun, VcsTrigger};
use terrapod_shared::{db, tokens};
use terrapod_test_support::{TestDatabase, TestVhost};

fn wrk(url: &str, token: &str, seconds: u64) -> (f64, String) {
    let output = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("wrk is installed (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    assert!(!text.contains("Non-2xx"), "errors under load:\n{text}");
    (rps, p99)
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    // A second argument keeps only the routes whose label contains it (to profile one).
    let only = std::env::args().nth(2).unwrap_or_default();
    let db = TestDatabase::new().await;
    let vhost = TestVhost::new();
    let pool = db::pool(db.url(), "bench", 4).unwrap();
    let mut conn = pool.get().await.unwrap();
    let token = tokens::generate();
    tokens::store(&mut conn, &token, Role::Member, "bench")
        .await
        .unwrap();
    let workspace = terrapod_shared::ids::WorkspaceId::generate();
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut *conn,
        &format!("INSERT INTO workspaces (id, organization_name, name) VALUES ('{workspace}', 'default', 'bench')"),
    )
    .await
    .unwrap();
    let archive = archives::store_bytes(&mut conn, b"bench").await.unwrap();
    for n in 0..1000i64 {
        let sha = CommitSha::parse(&format!("{n:040x}")).unwrap();
        create_vcs_run(
            &mut conn,
            NewVcsRun {
                workspace_id: &workspace,
                settings_generation: 0,
                commit_sha: &sha,
                trigger: VcsTrigger::Push {
                    branch: BranchName::parse("main").unwrap(),
                    commit_title: Some(format!("change {n}")),
                    previous_sha: (n > 0).then(|| format!("{:040x}", n - 1)),
                },
                working_directory: &Default::default(),
                archive: &archive,
                ingress: terrapod_shared::runs::Ingress {
                    provider: terrapod_shared::domain::Provider::GitHub,
                    identifier: "bench/infra",
                    web_base: "https://github.com",
                    on_default_branch: true,
                    sender: Some("octocat"),
                    compare_base: None,
                },
            },
        )
        .await
        .unwrap();
    }
    // A steady-state table has been vacuumed (autovacuum); a freshly bulk-loaded one
    // has not, and would make every index-only count visit the heap.
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut *conn,
        "VACUUM ANALYZE runs, workspaces, api_tokens",
    )
    .await
    .unwrap();
    drop(conn);
    let port = free_port();
    let env = vec![
        ("TERRAPOD_DATABASE__URL".to_owned(), db.url().to_owned()),
        ("TERRAPOD_AMQP__URL".to_owned(), vhost.url()),
        (
            "TERRAPOD_API__LISTEN".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
    ];
    let api = Measured::spawn("terrapod-api", &["serve"], &env);
    let base = format!("http://127.0.0.1:{port}/api/v2");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/ping")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token.expose_secret().to_owned();
    println!(
        "## API throughput: wrk, 2 threads, 64 connections, {seconds} s per route, release build"
    );
    println!();
    // Where each request's CPU goes on this 2-core machine (wrk takes the rest): what
    // to make cheaper to serve more.
    println!(
        "| route | requests/s | p99 latency | API CPU µs/request | PostgreSQL CPU µs/request |"
    );
    println!("|---|---|---|---|---|");
    for (label, url) in [
        (
            "GET /workspaces/{id}/runs (20 of 1,000)",
            format!("{base}/workspaces/{workspace}/runs"),
        ),
        (
            "GET /workspaces/{id}/runs?filter[status]=pending (20 of 1,000)",
            format!("{base}/workspaces/{workspace}/runs?filter%5Bstatus%5D=pending"),
        ),
        (
            "GET /workspaces/{id}/runs?search[commit]=<prefix> (1 of 1,000)",
            format!("{base}/workspaces/{workspace}/runs?search%5Bcommit%5D=00000000000000000000000000000000000003e7"),
        ),
        (
            "GET /workspaces/{id}",
            format!("{base}/workspaces/{workspace}"),
        ),
    ]
    .into_iter()
    .filter(|(label, _)| label.contains(only.as_str()))
    {
        let (api_before, postgres_before) = (api.cpu_seconds(), postgres_cpu_seconds());
        let (rps, p99) = wrk(&url, &token, seconds);
        let requests = rps * seconds as f64;
        let per_request = |cpu: f64| cpu * 1e6 / requests.max(1.0);
        println!(
            "| {label} | {rps:.0} | {p99} | {:.0} | {:.0} |",
            per_request(api.cpu_seconds() - api_before),
            per_request(postgres_cpu_seconds() - postgres_before),
        );
    }
    println!();
    println!(
        "API peak RSS: {:.0} MiB, CPU {:.1} s",
        api.peak_rss_mib(),
        api.cpu_seconds()
    );
}
