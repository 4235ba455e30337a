//! Peak poller memory with large repositories: `--repos` repositories (20) whose
//! archives are `--mib` MiB (50) of incompressible data, one workspace each, one
//! release `terrapod-poller` at `--concurrency` (8). Prints the poller's peak RSS and
//! the time until every workspace has its run.

use std::io::Write;
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

/// A gzip tarball (stored, not compressed: random data does not compress) holding one
/// file of `bytes` pseudo-random bytes under GitHub's wrapper directory.
fn big_archive(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = vec![0u8; bytes];
    for chunk in data.chunks_mut(8) {
        // xorshift64: fast, and random enough that gzip cannot shrink it.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = chunk.len();
        chunk.copy_from_slice(&state.to_le_bytes()[..len]);
    }
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes + (1 << 20)),
        flate2::Compression::none(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "acme-big-abc1234/blob.bin", &data[..])
        .unwrap();
    let mut main = tar::Header::new_gnu();
    main.set_size(2);
    main.set_mode(0o644);
    main.set_cksum();
    builder
        .append_data(&mut main, "acme-big-abc1234/main.tf", &b"{}"[..])
        .unwrap();
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

#[tokio::main]
async fn main() {
    let repos = arg("--repos", 20);
    let mib = arg("--mib", 50);
    let concurrency = arg("--concurrency", 8);
    let db = TestDatabase::new().await;
    let vhost = TestVhost::new();
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(1, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(1, 1, "bench", None);
    sim.set_rate_limit(Kind::Github, 1_000_000, 3600);

    let key = KeyRing::generate_key();
    let connection = VcsConnectionId::generate();
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
    let setup = Instant::now();
    for r in 0..repos {
        let path = format!("bench/big-{r}");
        let sha = sim.create_repo(Kind::Github, &path, &[("main.tf", "{}")]);
        sim.override_archive(
            Kind::Github,
            &path,
            &sha,
            big_archive(r as u64 + 1, mib << 20),
        );
        let id = WorkspaceId::generate();
        let (name, url) = (format!("big-{r}"), format!("https://github.com/{path}"));
        diesel::insert_into(workspaces::table)
            .values(NewWorkspace {
                id: &id,
                organization_name: "default",
                name: &name,
                execution_mode: ExecutionMode::Remote,
                auto_apply: false,
                vcs_connection_id: Some(&connection),
                vcs_repo_url: &url,
                vcs_repo_path: &path,
                vcs_branch: "main",
                working_directory: "",
                // Every commit runs, as before file triggers existed.
                file_triggers_enabled: false,
                trigger_prefixes: &[],
                trigger_patterns: &[],
                speculative_enabled: true,
                vcs_tags_regex: None,
            })
            .execute(&mut conn)
            .await
            .unwrap();
    }
    eprintln!(
        "setup: {repos} repositories with {mib} MiB archives in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    let env: Vec<(String, String)> = vec![
        ("TERRAPOD_DATABASE__URL".into(), db.url().to_owned()),
        ("TERRAPOD_AMQP__URL".into(), vhost.url()),
        ("TERRAPOD_ENCRYPTION__KEY".into(), key.clone()),
        (
            "TERRAPOD_POLLER__CONCURRENCY".into(),
            concurrency.to_string(),
        ),
        (
            "TERRAPOD_POLLER__LISTEN".into(),
            format!("127.0.0.1:{}", free_port()),
        ),
    ];
    let started = Instant::now();
    let mut poller = Measured::spawn("terrapod-poller", &["run"], &env);
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(poller.peak_rss_mib());
        let done: i64 = runs::table.count().get_result(&mut conn).await.unwrap();
        if done >= repos as i64 {
            break;
        }
        if let Ok(Some(status)) = poller.child.try_wait() {
            println!("the poller exited ({status}) after {:.1} s with {done} of {repos} runs: killed for memory?", started.elapsed().as_secs_f64());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "timed out with {done} runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    peak = peak.max(poller.peak_rss_mib());
    poller.terminate();
    println!("## Poller memory with large repositories");
    println!();
    println!("| repositories | archive size | concurrency | time to all runs | poller peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| {repos} | {mib} MiB | {concurrency} | {:.1} s | {peak:.0} MiB |",
        elapsed.as_secs_f64()
    );
    sim.stop().await;
}
