//! One App installation with more repositories than its budget covers in an interval:
//! `--repos` repositories (1,000), one workspace each, `--replicas` pollers (2), every
//! answer taking `--latency-ms` (150), GitHub's secondary limits on (900 points a
//! minute, 100 concurrent). Reports the most requests the installation saw in any 60
//! seconds, secondary-limit answers, the effective interval and lag the pollers
//! report, and the latency of webhooks sent while the schedule is held back.

use std::time::{Duration, Instant};

use terrapod_bench::{arg, metric, ms, percentile, Fleet, Measured};
use terrapod_vcs_sim::Kind;

const WEBHOOK_SECRET: &str = "bench-webhook-secret";

#[tokio::main]
async fn main() {
    let repos = arg("--repos", 1000);
    let replicas = arg("--replicas", 2);
    let latency = arg("--latency-ms", 150) as u64;
    let minutes = arg("--minutes", 5) as u64;
    let webhooks = arg("--webhooks", 20);
    let fleet = Fleet::build(repos, 1, 1).await;
    // Start from polled workspaces (the first pass's archives are not the point here).
    fleet.mark_heads_polled().await;
    fleet.sim.set_latency(latency, 0);
    let envs: Vec<Vec<(String, String)>> =
        (0..replicas).map(|_| fleet.poller_env(60, &[])).collect();
    let started = Instant::now();
    let mut pollers: Vec<Measured> = envs
        .iter()
        .map(|env| Measured::spawn("terrapod-poller", &["run"], env))
        .collect();
    let api = fleet.start_api(WEBHOOK_SECRET).await;
    fleet.sim.add_webhook(
        Kind::Github,
        &format!("{api}/api/v2/vcs-events/github"),
        WEBHOOK_SECRET,
    );
    let mut max_lag: f64 = 0.0;
    let mut latencies = Vec::new();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        // Webhooks from the second minute on, when the schedule is held by the budget.
        if started.elapsed() > Duration::from_secs(90) && sent < webhooks {
            let (path, workspaces) = &fleet.repos[sent * 37 % fleet.repos.len()];
            let (sha, events) = fleet.sim.commit_quietly(
                Kind::Github,
                path,
                "main",
                "webhook",
                &[("w.tf", &sent.to_string())],
            );
            let query = format!(
                "SELECT count(*) AS n FROM runs WHERE vcs_commit_sha = '{sha}' AND workspace_id = '{}'",
                workspaces[0]
            );
            let at = Instant::now();
            fleet.sim.deliver(events).await;
            while fleet.count(&query).await < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies.push(at.elapsed());
            sent += 1;
            tokio::time::sleep(Duration::from_secs(3)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        for env in &envs {
            let listen = &env
                .iter()
                .find(|(k, _)| k == "TERRAPOD_POLLER__LISTEN")
                .unwrap()
                .1;
            if let Ok(response) = reqwest::get(format!("http://{listen}/metrics")).await {
                let page = response.text().await.unwrap_or_default();
                max_lag = max_lag.max(
                    metric(&page, "terrapod_vcs_poll_lag_seconds{provider=\"github\"}")
                        .unwrap_or(0.0),
                );
            }
        }
    }
    let polled_workspaces = fleet
        .count("SELECT count(*) AS n FROM workspaces WHERE vcs_last_polled_at IS NOT NULL")
        .await;
    for poller in &mut pollers {
        poller.terminate();
    }
    let usage = fleet.sim.installation_usage(1);
    let stats = fleet.sim.stats(Kind::Github);
    let elapsed = started.elapsed().as_secs_f64();
    println!("## {repos} repositories on one installation, {replicas} replicas, {latency} ms per answer, {minutes} min");
    println!();
    println!("| requests | most in any 60 s (budget 800) | secondary-limit answers | most concurrent | workspaces polled | max lag | effective interval |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} ({:.0}/min) | {} | {} | {} | {polled_workspaces} | {max_lag:.0} s | ≈ {:.0} s |",
        usage.requests,
        usage.requests as f64 / elapsed * 60.0,
        usage.max_points_in_window,
        stats.secondary_limited,
        usage.max_concurrent,
        60.0 + max_lag,
    );
    println!();
    latencies.sort();
    if !latencies.is_empty() {
        let floor = Duration::from_millis(3 * latency);
        println!(
            "{} webhooks while the schedule waits for budget (floor {}): p50 {}, p99 {}, max {}",
            latencies.len(),
            ms(floor),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(*latencies.last().unwrap())
        );
    }
    fleet.sim.stop().await;
}
