//! Polling at scale against the simulator, with release `terrapod-poller` processes:
//!
//! 1. idle polling cost: 10,000 workspaces over 1,000 repositories, nothing changing —
//!    per interval: polls, provider requests (rate-limit-counted vs 304), poller CPU
//!    seconds and peak RSS;
//! 2. burst: a new commit on every repository at once → time until all 10,000 runs
//!    exist, with 1, 2 and 4 poller replicas.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_bench::{arg, free_port, Measured};
use terrapod_shared::crypto::KeyRing;
use terrapod_shared::db::models::{NewVcsConnection, NewWorkspace};
use terrapod_shared::db::schema::{runs, vcs_connections, workspaces};
use terrapod_shared::domain::{ConnectionStatus, ExecutionMode, Provider};
use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
use terrapod_test_support::{
    TestDatabase, TestVhost, GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY,
};
use terrapod_vcs_sim::{Kind, Simulator};

async fn count(db: &TestDatabase, query: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.connection().await;
    diesel::sql_query(query)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

async fn run_count(db: &TestDatabase) -> i64 {
    let mut conn = db.connection().await;
    runs::table.count().get_result(&mut conn).await.unwrap()
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < timeout, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let repos = arg("--repos", 1000);
    let per_repo = arg("--per-repo", 10);
    let interval = arg("--interval", 60) as u64;
    let total = (repos * per_repo) as i64;
    let db = TestDatabase::new().await;
    let vhost = TestVhost::new();
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(1, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(1, 1, "bench", None);
    sim.set_rate_limit(Kind::Github, 100_000_000, 3600);

    let setup = Instant::now();
    for r in 0..repos {
        sim.create_repo(
            Kind::Github,
            &format!("bench/repo-{r}"),
            &[("main.tf", &format!("# repo {r}\n"))],
        );
    }
    let key = KeyRing::generate_key();
    let connection = VcsConnectionId::generate();
    {
        let mut conn = db.connection().await;
        let credential = KeyRing::parse(&key).unwrap().encrypt(GITHUB_APP_TEST_KEY);
        diesel::insert_into(vcs_connections::table)
            .values(NewVcsConnection {
                id: &connection,
                organization_name: "default",
                name: "github",
                provider: Provider::GitHub,
                server_url: sim.url(),
                status: ConnectionStatus::Active,
                github_app_id: Some(1),
                github_installation_id: Some(1),
                github_account_login: None,
                github_account_type: None,
                encrypted_credential: Some(&credential),
            })
            .execute(&mut conn)
            .await
            .unwrap();
        let rows: Vec<(WorkspaceId, String, String, String)> = (0..repos)
            .flat_map(|r| {
                (0..per_repo).map(move |w| {
                    (
                        WorkspaceId::generate(),
                        format!("ws-{r}-{w}"),
                        format!("https://github.com/bench/repo-{r}"),
                        format!("bench/repo-{r}"),
                    )
                })
            })
            .collect();
        for chunk in rows.chunks(1000) {
            let values: Vec<NewWorkspace> = chunk
                .iter()
                .map(|(id, name, url, path)| NewWorkspace {
                    id,
                    organization_name: "default",
                    name,
                    execution_mode: ExecutionMode::Remote,
                    auto_apply: false,
                    vcs_connection_id: Some(&connection),
                    vcs_repo_url: url,
                    vcs_repo_path: path,
                    vcs_branch: "main",
                    working_directory: "",
                })
                .collect();
            diesel::insert_into(workspaces::table)
                .values(values)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    eprintln!(
        "setup: {repos} repositories, {total} workspaces in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    let env = |port: u16| -> Vec<(String, String)> {
        vec![
            ("TERRAPOD_DATABASE__URL".into(), db.url().to_owned()),
            ("TERRAPOD_AMQP__URL".into(), vhost.url()),
            ("TERRAPOD_ENCRYPTION__KEY".into(), key.clone()),
            (
                "TERRAPOD_VCS__POLL_INTERVAL_SECONDS".into(),
                interval.to_string(),
            ),
            (
                "TERRAPOD_POLLER__LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
        ]
    };

    // 1. The first pass creates a run per workspace; the next interval is idle.
    let mut poller = Measured::spawn("terrapod-poller", &["run"], &env(free_port()));
    let first_pass = wait_until("the first pass", Duration::from_secs(1200), async || {
        count(
            &db,
            "SELECT count(*) AS n FROM workspaces WHERE vcs_last_polled_at IS NOT NULL",
        )
        .await
            == total
    })
    .await;
    let (cpu_first, stats_first) = (poller.cpu_seconds(), sim.stats(Kind::Github));
    let idle_start = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(interval + 12)).await;
    let repolled = count(
        &db,
        &format!(
            "SELECT count(*) AS n FROM workspaces WHERE vcs_last_attempt_at >= '{}'",
            idle_start.to_rfc3339()
        ),
    )
    .await;
    let stats_idle = sim.stats(Kind::Github);
    let cpu_idle = poller.cpu_seconds() - cpu_first;
    let rss_idle = poller.peak_rss_mib();
    poller.terminate();
    let runs_after_first = run_count(&db).await;

    println!("## Idle polling: {total} workspaces over {repos} repositories, interval {interval} s, one replica");
    println!();
    println!("| phase | wall | workspaces polled | counted requests | 304 answers | archives | poller CPU | poller peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| first pass (all new) | {:.1} s | {total} | {} | {} | {} | {:.1} s | {:.0} MiB |",
        first_pass.as_secs_f64(),
        stats_first.counted,
        stats_first.not_modified,
        stats_first.archives,
        cpu_first,
        rss_idle,
    );
    println!(
        "| next interval (idle) | {} s window | {repolled} | {} | {} | {} | {:.1} s | {:.0} MiB |",
        interval + 12,
        stats_idle.counted - stats_first.counted,
        stats_idle.not_modified - stats_first.not_modified,
        stats_idle.archives - stats_first.archives,
        cpu_idle,
        rss_idle,
    );
    println!();
    println!(
        "runs after the first pass: {runs_after_first}; tokens minted: {}",
        stats_idle.tokens_minted
    );
    println!();

    // 2. Bursts: a new commit on every repository, then N fresh replicas find all due.
    println!("## Burst: a new commit on all {repos} repositories → {total} runs");
    println!();
    println!("| replicas | time to all runs | runs/s | archives downloaded | counted requests | pollers' CPU | peak RSS per poller |");
    println!("|---|---|---|---|---|---|---|");
    for replicas in [1usize, 2, 4] {
        for r in 0..repos {
            sim.commit(
                Kind::Github,
                &format!("bench/repo-{r}"),
                "main",
                &format!("burst {replicas}"),
                &[("burst.tf", &replicas.to_string())],
            )
            .await;
        }
        {
            let mut conn = db.connection().await;
            diesel::update(workspaces::table)
                .set(workspaces::vcs_last_attempt_at.eq(None::<chrono::DateTime<chrono::Utc>>))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let target = run_count(&db).await + total;
        let before = sim.stats(Kind::Github);
        let mut pollers: Vec<Measured> = (0..replicas)
            .map(|_| Measured::spawn("terrapod-poller", &["run"], &env(free_port())))
            .collect();
        let elapsed = wait_until("the burst", Duration::from_secs(1200), async || {
            run_count(&db).await >= target
        })
        .await;
        let cpu: f64 = pollers.iter().map(Measured::cpu_seconds).sum();
        let rss = pollers
            .iter()
            .map(Measured::peak_rss_mib)
            .fold(0.0, f64::max);
        for poller in &mut pollers {
            poller.terminate();
        }
        let after = sim.stats(Kind::Github);
        println!(
            "| {replicas} | {:.1} s | {:.0} | {} | {} | {:.1} s | {:.0} MiB |",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            after.archives - before.archives,
            after.counted - before.counted,
            cpu,
            rss
        );
    }
    sim.stop().await;
}
