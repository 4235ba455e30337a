//! The `terrapod-poller` binary: signals, `poll-once`, health and logs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use terrapod_shared::domain::TriggerReason;
use terrapod_vcs_sim::{Fault, Kind};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::run_events_outbox;

use crate::helpers::World;
use crate::reporting::{follow_run_events, outbox_len, read_events, Received};

fn poller(world: &World, args: &[&str], overrides: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_terrapod-poller"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERRAPOD_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(world.env(overrides));
    command
}

/// A child process killed when the test ends, even when it fails half-way.
struct Guard(Child);

impl std::ops::Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns the poller and collects its stderr lines.
fn spawn(mut command: Command) -> (Guard, Arc<Mutex<Vec<String>>>) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (Guard(child), lines)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the poller did not exit in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn latency(path: &str, ms: u64, count: u64) -> Fault {
    Fault {
        latency_ms: Some(ms),
        count,
        ..Fault::matching(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_poll_under_way_and_exits_zero() {
    let world = World::new().await;
    let (sha, ws) = world
        .repo_with_workspace(Kind::Github, "acme/infra", "infra")
        .await;
    world.sim.inject_fault(latency("/tarball/", 2_000, 1));
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (mut child, logs) = spawn(poller(
        &world,
        &["run"],
        &[("TERRAPOD_POLLER__LISTEN", listen.as_str())],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    // The branch head is read; the archive download (delayed 2 s) comes next.
    while world.sim.stats(Kind::Github).counted < 1 {
        assert!(
            Instant::now() < deadline,
            "no poll started: {:?}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health: serde_json::Value = reqwest::get(format!("http://{listen}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert!(
        world.runs(&ws).await.is_empty(),
        "the archive download is still under way"
    );
    signal(&child, "-TERM");
    let status = wait(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {:?}", logs.lock().unwrap());
    let runs = world.runs(&ws).await;
    assert_eq!(runs.len(), 1, "the in-flight poll was finished");
    assert_eq!(runs[0].vcs_commit_sha, sha);
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("VCS poller started"), "{logs}");
    assert!(logs.contains("VCS poll cycle"), "{logs}");
    assert!(logs.contains("\"interval_seconds\":60"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_cycle_leaves_no_lost_and_no_duplicate_run() {
    let world = World::new().await;
    let mut workspaces = Vec::new();
    for r in 0..4 {
        let repo = format!("acme/r{r}");
        world
            .sim
            .create_repo(Kind::Github, &repo, &[("main.tf", &r.to_string())]);
        for n in 0..5 {
            workspaces.push((
                world
                    .workspace(&format!("w{r}-{n}"), Kind::Github, &repo, "main")
                    .await,
                repo.clone(),
            ));
        }
    }
    world.sim.inject_fault(latency("/tarball/", 700, 100));
    let (mut child, _logs) = spawn(poller(
        &world,
        &["run"],
        &[("TERRAPOD_POLLER__CONCURRENCY", "2")],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.all_runs().await.is_empty() {
        assert!(Instant::now() < deadline, "no run was created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "-KILL");
    wait(&mut child, Duration::from_secs(10));
    let before = world.all_runs().await.len();
    assert!(before < workspaces.len(), "killed mid-cycle: {before} runs");

    world.make_all_due().await;
    let output = poller(&world, &["poll-once"], &[]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("polled"));
    for (ws, repo) in &workspaces {
        let head = world.sim.sim().repo(Kind::Github, repo).unwrap().branches["main"].clone();
        let runs = world.runs(ws).await;
        let push: Vec<_> = runs
            .iter()
            .filter(|r| r.trigger_reason == TriggerReason::Push)
            .collect();
        assert_eq!(push.len(), 1, "{ws}: {runs:?}");
        assert_eq!(push[0].vcs_commit_sha, head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_once_polls_one_workspace_on_request() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Gitlab, "group/project", "p")
        .await;
    let output = poller(&world, &["poll-once", "--workspace", ws.as_str()], &[])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "created 1 runs"
    );
    let bad = poller(&world, &["poll-once", "--workspace", "nope"], &[])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let invalid = poller(
        &world,
        &["run"],
        &[("TERRAPOD_POLLER__CONCURRENCY", "many")],
    )
    .output()
    .unwrap();
    assert_eq!(invalid.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert_eq!(stderr.lines().count(), 1);
    assert!(stderr.contains("TERRAPOD_POLLER__CONCURRENCY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served() {
    let world = World::new().await;
    world
        .sim
        .create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    world
        .workspace("infra", Kind::Github, "acme/infra", "main")
        .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut child, logs) = spawn(poller(
        &world,
        &["run"],
        &[("TERRAPOD_POLLER__LISTEN", listen.as_str())],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Ok(response) = reqwest::get(format!("http://{listen}/metrics")).await {
            let text = response.text().await.unwrap();
            if text.contains("terrapod_vcs_runs_created_total{provider=\"github\",type=\"push\"} 1")
            {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no run counted: {:?}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("terrapod_vcs_poll_duration_seconds"));
    assert!(metrics
        .contains("terrapod_vcs_provider_requests_total{provider=\"github\",status=\"200\"}"));
    let ready = reqwest::get(format!("http://{listen}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    signal(&child, "-TERM");
    assert!(wait(&mut child, Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_loses_nothing() {
    let world = World::new().await;
    let (_follower, mut events) = follow_run_events(&world).await;
    // 3,000 waiting events of 50 runs (the relay does not look at the runs).
    const RUNS: i64 = 50;
    const PER_RUN: i64 = 60;
    {
        let mut conn = world.db.connection().await;
        for sequence in 1..=PER_RUN {
            let rows: Vec<_> = (0..RUNS)
                .map(|run| {
                    (
                        run_events_outbox::run_id.eq(format!("run-test{run:04}")),
                        run_events_outbox::workspace_id.eq("ws-test"),
                        run_events_outbox::organization_name.eq("default"),
                        run_events_outbox::status.eq("planning"),
                        run_events_outbox::sequence.eq(sequence),
                    )
                })
                .collect();
            diesel::insert_into(run_events_outbox::table)
                .values(rows)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    // A replica whose only work is relaying (polling off), killed with SIGKILL in the
    // middle of its work: after some events, before all.
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (mut doomed, _) = spawn(poller(
        &world,
        &[],
        &[
            ("TERRAPOD_VCS__ENABLED", "false"),
            ("TERRAPOD_POLLER__LISTEN", &listen),
        ],
    ));
    let mut received = Received::default();
    read_events(&mut events, &mut received, 700).await;
    signal(&doomed, "-KILL");
    wait(&mut doomed, Duration::from_secs(10));
    let left = outbox_len(&world).await;
    assert!(left > 0, "the relay was killed before it finished");

    let survivor = world.context(&[]);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(terrapod_poller::relay::run_relay(
        survivor.clone(),
        shutdown,
    ));
    read_events(&mut events, &mut received, (RUNS * PER_RUN) as usize).await;
    let _ = stop.send(true);
    let _ = relay.await;
    let after_kill = received.by_run;
    assert_eq!(after_kill.len(), RUNS as usize);
    for (run, sequences) in after_kill {
        let mut distinct = sequences.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct,
            (1..=PER_RUN).collect::<Vec<_>>(),
            "{run}: every event arrived"
        );
        // Each event's first arrival is in sequence order.
        let mut first_seen = Vec::new();
        for sequence in sequences {
            if !first_seen.contains(&sequence) {
                first_seen.push(sequence);
            }
        }
        assert_eq!(first_seen, distinct, "{run}: in order");
    }
    assert_eq!(outbox_len(&world).await, 0);
}

/// SIGTERM stops the poller wherever its start is waiting: PostgreSQL refusing
/// connections or accepting and never answering, its database missing or unmigrated,
/// RabbitMQ refusing. `poll-once`, a one-shot command, names an unmigrated database
/// at once instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_poller_at_every_stage_of_its_start() {
    use terrapod_test_support::TestDatabase;
    let world = World::new().await;
    let empty = TestDatabase::unmigrated().await;
    let missing = TestDatabase::missing_url();
    // Accepts connections and never answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "postgres://postgres@{}/terrapod",
        silent.local_addr().unwrap()
    );
    let refused_url = format!("postgres://postgres@127.0.0.1:{}/terrapod", free_port());
    let refused_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    // (stage, settings, what the log says while the start waits there)
    type Stage<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let stages: [Stage; 5] = [
        (
            "PostgreSQL refuses",
            vec![("TERRAPOD_DATABASE__URL", &refused_url)],
            Some("cannot reach PostgreSQL yet"),
        ),
        (
            "PostgreSQL never answers",
            vec![("TERRAPOD_DATABASE__URL", &silent_url)],
            None,
        ),
        (
            "database missing",
            vec![("TERRAPOD_DATABASE__URL", &missing)],
            Some("does not exist: `terrapod-api migrate` creates it"),
        ),
        (
            "schema missing",
            vec![("TERRAPOD_DATABASE__URL", empty.url())],
            Some("the database has no Terrapod schema: run `terrapod-api migrate`"),
        ),
        (
            "RabbitMQ refuses",
            vec![("TERRAPOD_AMQP__URL", &refused_broker)],
            Some("RabbitMQ is unreachable"),
        ),
    ];
    for (stage, overrides, marker) in stages {
        let (mut child, lines) = spawn(poller(&world, &["run"], &overrides));
        match marker {
            Some(marker) => {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !lines.lock().unwrap().iter().any(|l| l.contains(marker)) {
                    assert!(
                        Instant::now() < deadline,
                        "{stage}: no `{marker}` in {:?}",
                        lines.lock().unwrap()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            None => std::thread::sleep(Duration::from_millis(1500)),
        }
        signal(&child, "-TERM");
        let started = Instant::now();
        let status = wait(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{stage}: {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{stage}: took {:?}",
            started.elapsed()
        );
    }
    for (url, says) in [
        (
            empty.url(),
            "the database has no Terrapod schema: run `terrapod-api migrate`",
        ),
        (
            missing.as_str(),
            "does not exist: `terrapod-api migrate` creates it",
        ),
    ] {
        let output = poller(&world, &["poll-once"], &[("TERRAPOD_DATABASE__URL", url)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("terrapod-poller: ") && l.contains(says)),
            "{stderr}"
        );
    }
    drop(silent);
}
