//! Transition-to-check-run latency: an executor moves runs through the lifecycle with
//! `POST /runs/{id}/actions/transition`; the clock runs from the transition's answer
//! until the run's check run on the simulator shows the update (relay → RabbitMQ →
//! reporter → GitHub Checks API). Measured with the simulator answering at once and
//! at a real provider's 150 ms. Transitions are paced at two a second: a check-run
//! write costs 5 of an installation's 800 points a minute, so one installation
//! carries about 160 check-run updates a minute, and this measures latency, not that
//! ceiling.

use std::time::{Duration, Instant};

use serde_json::json;
use terrapod_bench::{ms, percentile, System};
use terrapod_vcs_sim::Kind;

const REPO: &str = "bench/checks";
/// One transition per this, at most.
const PACE: Duration = Duration::from_millis(500);
/// The statuses an auto-apply run passes through after it is created.
const PATH: [&str; 7] = [
    "plan_queued",
    "planning",
    "planned",
    "confirmed",
    "apply_queued",
    "applying",
    "applied",
];

/// (updates, status) of the run's check run, once it exists.
fn check_run_of(system: &System, run: &str) -> Option<(u32, String)> {
    system
        .sim
        .check_runs(REPO)
        .into_iter()
        .find(|check| check.external_id.as_deref() == Some(run))
        .map(|check| (check.updates, check.status))
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Measures `transitions` transitions at the simulator's current latency.
async fn measure(system: &System, workspace: &str, transitions: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(transitions);
    let mut change = 0;
    while latencies.len() < transitions {
        change += 1;
        let sha = system
            .sim
            .commit(
                Kind::Github,
                REPO,
                "main",
                &format!("change {change}"),
                &[("n.tf", &change.to_string())],
            )
            .await;
        system
            .post(
                &format!("/api/v2/workspaces/{workspace}/actions/poll-vcs"),
                &json!(null),
            )
            .await;
        while !system.has_run(workspace, &sha).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let runs = system
            .get(&format!("/api/v2/workspaces/{workspace}/runs?page[size]=1"))
            .await;
        let run = runs["data"][0]["id"].as_str().unwrap().to_owned();
        let mut seen = wait_for("the queued check run", || check_run_of(system, &run))
            .await
            .0;
        for status in PATH {
            if latencies.len() == transitions {
                break;
            }
            let started = Instant::now();
            system
                .post(
                    &format!("/api/v2/runs/{run}/actions/transition"),
                    &json!({"status": status}),
                )
                .await;
            seen = wait_for("the check run's update", || {
                check_run_of(system, &run)
                    .and_then(|(updates, _)| (updates > seen).then_some(updates))
            })
            .await;
            latencies.push(started.elapsed());
            tokio::time::sleep_until((started + PACE).into()).await;
        }
    }
    latencies.sort();
    latencies
}

#[tokio::main]
async fn main() {
    let transitions: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let system = System::start(3600, 8).await;
    let connection = system.github_connection().await;
    let first = system
        .sim
        .create_repo(Kind::Github, REPO, &[("main.tf", "terraform {}")]);
    let workspace = system.workspace("checks", &connection, REPO).await;
    system
        .client
        .patch(format!("{}/api/v2/workspaces/{workspace}", system.api))
        .bearer_auth(&system.token)
        .json(&json!({"data": {"type": "workspaces", "attributes": {"auto-apply": true}}}))
        .send()
        .await
        .unwrap();
    while !system.has_run(&workspace, &first).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("transition-to-check-run latency over {transitions} transitions (GitHub, one workspace, auto-apply runs):");
    println!("| provider answers | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    for latency_ms in [0, 150] {
        system.sim.set_latency(latency_ms, 0);
        let latencies = measure(&system, &workspace, transitions).await;
        println!(
            "| {latency_ms} ms | {} | {} | {} | {} |",
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 95.0)),
            ms(percentile(&latencies, 99.0)),
            ms(*latencies.last().unwrap())
        );
    }
    system.stop().await;
}
