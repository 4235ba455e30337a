//! Webhook-to-run latency: commits land in the simulator, which delivers a signed push
//! webhook to the API; the clock runs from sending the webhook until the run is
//! visible through the API. The poll interval is an hour, so only webhooks act.

use std::time::{Duration, Instant};

use terrapod_bench::{ms, percentile, System, WEBHOOK_SECRET};
use terrapod_vcs_sim::Kind;

#[tokio::main]
async fn main() {
    let deliveries: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let system = System::start(3600, 8).await;
    let connection = system.github_connection().await;
    let first = system
        .sim
        .create_repo(Kind::Github, "bench/infra", &[("main.tf", "terraform {}")]);
    let workspace = system.workspace("infra", &connection, "bench/infra").await;
    while !system.has_run(&workspace, &first).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    system.sim.add_webhook(
        Kind::Github,
        &format!("{}/api/v2/vcs-events/github", system.api),
        WEBHOOK_SECRET,
    );
    let mut latencies = Vec::with_capacity(deliveries);
    for n in 0..deliveries {
        let (sha, events) = system.sim.commit_quietly(
            Kind::Github,
            "bench/infra",
            "main",
            &format!("change {n}"),
            &[("n.tf", &n.to_string())],
        );
        let started = Instant::now();
        system.sim.deliver(events).await;
        while !system.has_run(&workspace, &sha).await {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed());
    }
    system.stop().await;
    latencies.sort();
    println!("webhook-to-run latency over {deliveries} push webhooks (GitHub, one workspace):");
    println!("| p50 | p95 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(percentile(&latencies, 99.0)),
        ms(*latencies.last().unwrap())
    );
}
