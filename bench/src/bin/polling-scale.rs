//! Polling at scale against the simulator answering like GitHub (every answer takes
//! `--latency-ms`, 150 by default), with release `terrapod-poller` processes:
//!
//! 1. idle: `--repos` repositories (1,000) over `--installations` App installations
//!    (10), `--per-repo` workspaces each (10): the first pass, then one idle interval —
//!    polls, rate-limit-counted requests, 304s, lag, poller CPU and peak RSS;
//! 2. a burst of `--webhooks` push webhooks (200), one after another, during that busy
//!    schedule: webhook-to-run latency (every workspace of the repository has its run)
//!    beside the provider time one webhook-triggered poll needs;
//! 3. the same pass with 1, 2 and 4 replicas: latency-bound work shared.
//!
//! `--replicas-only` skips 1 and 2 (the heads are recorded as polled instead).

use std::time::{Duration, Instant};

use terrapod_bench::{
    arg, cpu_seconds_of, metric, ms, percentile, postgres_cpu_seconds, wait_until, Fleet, Measured,
};
use terrapod_vcs_sim::Kind;

const WEBHOOK_SECRET: &str = "bench-webhook-secret";

async fn poller_metrics(env: &[(String, String)]) -> String {
    let listen = env
        .iter()
        .find(|(k, _)| k == "TERRAPOD_POLLER__LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap();
    match reqwest::get(format!("http://{listen}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::main]
async fn main() {
    let repos = arg("--repos", 1000);
    let per_repo = arg("--per-repo", 10);
    let installations = arg("--installations", 10);
    let interval = arg("--interval", 60) as u64;
    let latency = arg("--latency-ms", 150) as u64;
    let webhooks = arg("--webhooks", 200);
    let setup = Instant::now();
    let fleet = Fleet::build(repos, per_repo, installations).await;
    let total = fleet.workspaces();
    fleet.sim.set_latency(latency, 0);
    eprintln!(
        "setup: {repos} repositories over {installations} installations, {total} workspaces in {:.1}s",
        setup.elapsed().as_secs_f64()
    );
    if std::env::args().any(|a| a == "--replicas-only") {
        fleet.mark_heads_polled().await;
        replicas(&fleet, total, latency).await;
        return;
    }

    // 1. The first pass creates a run per workspace; the next interval is idle.
    let env = fleet.poller_env(interval, &[]);
    let mut poller = Measured::spawn("terrapod-poller", &["run"], &env);
    let first_pass = wait_until("the first pass", Duration::from_secs(1800), async || {
        fleet
            .count("SELECT count(*) AS n FROM workspaces WHERE vcs_last_polled_at IS NOT NULL")
            .await
            == total
    })
    .await;
    let (cpu_first_pass, stats_first_pass) = (poller.cpu_seconds(), fleet.sim.stats(Kind::Github));
    // One interval to settle (the first pass took longer than the interval, so the
    // next cycle starts late), then one idle interval measured.
    tokio::time::sleep(Duration::from_secs(interval)).await;
    let (cpu_first, stats_first) = (poller.cpu_seconds(), fleet.sim.stats(Kind::Github));
    let idle_start = chrono::Utc::now();
    let mut max_lag: f64 = 0.0;
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(interval + 15) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let page = poller_metrics(&env).await;
        max_lag = max_lag.max(
            metric(&page, "terrapod_vcs_poll_lag_seconds{provider=\"github\"}").unwrap_or(0.0),
        );
    }
    let repolled = fleet
        .count(&format!(
            "SELECT count(*) AS n FROM workspaces WHERE vcs_last_polled_at >= '{}'",
            idle_start.to_rfc3339()
        ))
        .await;
    let stats_idle = fleet.sim.stats(Kind::Github);
    let cpu_idle = poller.cpu_seconds() - cpu_first;
    let rss = poller.peak_rss_mib();

    println!("## Idle polling: {total} workspaces over {repos} repositories and {installations} installations, {latency} ms per answer, interval {interval} s, one replica");
    println!();
    println!("| phase | wall | workspaces polled | counted requests | 304 answers | secondary-limit answers | archives | max lag | poller CPU | poller peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| first pass (all new) | {:.1} s | {total} | {} | {} | {} | {} | — | {:.1} s | {:.0} MiB |",
        first_pass.as_secs_f64(),
        stats_first_pass.counted,
        stats_first_pass.not_modified,
        stats_first_pass.secondary_limited,
        stats_first_pass.archives,
        cpu_first_pass,
        rss,
    );
    println!(
        "| an idle interval, after one to settle | {} s window | {repolled} | {} | {} | {} | {} | {max_lag:.1} s | {:.1} s | {:.0} MiB |",
        interval + 15,
        stats_idle.counted - stats_first.counted,
        stats_idle.not_modified - stats_first.not_modified,
        stats_idle.secondary_limited - stats_first.secondary_limited,
        stats_idle.archives - stats_first.archives,
        cpu_idle,
        rss,
    );
    println!();

    // 2. Webhooks, one after another, while the schedule keeps its pass going.
    let api = fleet.start_api(WEBHOOK_SECRET).await;
    fleet.sim.add_webhook(
        Kind::Github,
        &format!("{api}/api/v2/vcs-events/github"),
        WEBHOOK_SECRET,
    );
    let mut latencies = Vec::with_capacity(webhooks);
    let burst = Instant::now();
    for n in 0..webhooks {
        let (path, workspaces) = &fleet.repos[n % fleet.repos.len()];
        let (sha, events) = fleet.sim.commit_quietly(
            Kind::Github,
            path,
            "main",
            &format!("change {n}"),
            &[("n.tf", &n.to_string())],
        );
        let ids: Vec<String> = workspaces.iter().map(|id| format!("'{id}'")).collect();
        let query = format!(
            "SELECT count(*) AS n FROM runs WHERE vcs_commit_sha = '{sha}' AND workspace_id IN ({})",
            ids.join(",")
        );
        let started = Instant::now();
        fleet.sim.deliver(events).await;
        while fleet.count(&query).await < workspaces.len() as i64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(started.elapsed());
    }
    let burst_took = burst.elapsed();
    let busy = poller.cpu_seconds();
    poller.terminate();
    latencies.sort();
    // Before a webhook-triggered push run exists: the branch, then the archive (the
    // API's redirect, then the download) — three answers.
    let floor = Duration::from_millis(3 * latency);
    println!("## {webhooks} push webhooks during the busy schedule ({per_repo} workspaces per repository)");
    println!();
    println!("| floor (3 answers × {latency} ms) | p50 | p95 | p99 | max | p99 / floor |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {:.2} |",
        ms(floor),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(percentile(&latencies, 99.0)),
        ms(*latencies.last().unwrap()),
        percentile(&latencies, 99.0).as_secs_f64() / floor.as_secs_f64(),
    );
    println!();
    eprintln!(
        "webhooks took {:.1}s in all; poller CPU so far {busy:.1}s",
        burst_took.as_secs_f64()
    );

    replicas(&fleet, total, latency).await;
}

/// 3. One pass with 1, 2 and 4 replicas (nothing changed: latency-bound polling).
async fn replicas(fleet: &Fleet, total: i64, latency: u64) {
    println!("## One pass over {total} workspaces, {latency} ms per answer");
    println!();
    println!("| replicas | pass | speed-up | counted requests | 304 answers | pollers' CPU | PostgreSQL CPU | simulator CPU | peak RSS per poller |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut single = None;
    for replicas in [1usize, 2, 4] {
        // Each pass starts with its installations' budgets unused in the last minute,
        // as a pass does in steady state (one pass per 60 s interval).
        tokio::time::sleep(Duration::from_secs(65)).await;
        fleet.make_all_due().await;
        let start = chrono::Utc::now();
        let before = fleet.sim.stats(Kind::Github);
        let (postgres_before, sim_before) =
            (postgres_cpu_seconds(), cpu_seconds_of(std::process::id()));
        let envs: Vec<Vec<(String, String)>> =
            (0..replicas).map(|_| fleet.poller_env(3600, &[])).collect();
        let mut pollers: Vec<Measured> = envs
            .iter()
            .map(|env| Measured::spawn("terrapod-poller", &["run"], env))
            .collect();
        let pass = wait_until("the pass", Duration::from_secs(1800), async || {
            fleet
                .count(&format!(
                    "SELECT count(*) AS n FROM workspaces WHERE vcs_last_polled_at >= '{}'",
                    start.to_rfc3339()
                ))
                .await
                == total
        })
        .await;
        let cpu: f64 = pollers.iter().map(Measured::cpu_seconds).sum();
        let postgres = postgres_cpu_seconds() - postgres_before;
        // Where a poll's time went, from the pollers' own metrics.
        let (mut polls, mut polling, mut waits, mut waiting) = (0.0, 0.0, 0.0, 0.0);
        for env in &envs {
            let page = poller_metrics(env).await;
            polls += metric(&page, "terrapod_vcs_poll_duration_seconds_count").unwrap_or(0.0);
            polling += metric(&page, "terrapod_vcs_poll_duration_seconds_sum").unwrap_or(0.0);
            waits += metric(
                &page,
                "terrapod_vcs_budget_wait_seconds_count{provider=\"github\"}",
            )
            .unwrap_or(0.0);
            waiting += metric(
                &page,
                "terrapod_vcs_budget_wait_seconds_sum{provider=\"github\"}",
            )
            .unwrap_or(0.0);
        }
        eprintln!(
            "{replicas} replicas: {polls} polls, {:.1} ms each on average; {waits} budget grants, {:.1} ms wait each",
            polling / polls.max(1.0) * 1000.0,
            waiting / waits.max(1.0) * 1000.0
        );
        let simulator = cpu_seconds_of(std::process::id()) - sim_before;
        let rss = pollers
            .iter()
            .map(Measured::peak_rss_mib)
            .fold(0.0, f64::max);
        for poller in &mut pollers {
            poller.terminate();
        }
        let after = fleet.sim.stats(Kind::Github);
        let single_pass = *single.get_or_insert(pass);
        println!(
            "| {replicas} | {:.1} s | {:.2}× | {} | {} | {:.1} s | {postgres:.1} s | {simulator:.1} s | {:.0} MiB |",
            pass.as_secs_f64(),
            single_pass.as_secs_f64() / pass.as_secs_f64(),
            after.counted - before.counted,
            after.not_modified - before.not_modified,
            cpu,
            rss
        );
    }
    fleet.sim.stop().await;
}
