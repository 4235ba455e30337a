//! The GitHub and GitLab providers against the VCS simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use terrapod_shared::domain::Provider;
use terrapod_shared::vcs::github::GitHubClient;
use terrapod_shared::vcs::gitlab::GitLabClient;
use terrapod_shared::vcs::http::{RetryPolicy, VcsHttp};
use terrapod_shared::vcs::Priority;
use terrapod_shared::vcs::{
    ArchiveError, ArchiveLimits, RepoUrl, VcsError, VcsProvider, VcsShared,
};
use terrapod_test_support::{HeaderTrap, GITHUB_APP_TEST_KEY, GITHUB_APP_TEST_PUBLIC_KEY};
use terrapod_vcs_sim::{fault, Fault, Kind, NewPull, PullState, PullUpdate, Simulator};

const LIMITS: ArchiveLimits = ArchiveLimits {
    max_archive_bytes: 104_857_600,
    max_unpacked_bytes: 1_073_741_824,
};

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_backoff: Duration::from_millis(50),
        max_wait: Duration::from_secs(3),
        total_budget: Duration::from_secs(5),
    }
}

fn shared() -> Arc<VcsShared> {
    VcsShared::new(VcsHttp::new(fast_retries(), None))
}

async fn github_world() -> (Simulator, GitHubClient) {
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(7, 42, "acme", None);
    let client = GitHubClient::new(
        shared(),
        sim.url(),
        42,
        7,
        &SecretString::from(GITHUB_APP_TEST_KEY),
        Priority::Requested,
    )
    .unwrap();
    (sim, client)
}

async fn gitlab_world() -> (Simulator, GitLabClient) {
    let sim = Simulator::start().await.unwrap();
    sim.add_gitlab_token("glpat-test", None);
    let client = GitLabClient::new(
        shared(),
        sim.url(),
        SecretString::from("glpat-test"),
        Priority::Requested,
    );
    (sim, client)
}

fn github_repo(path: &str) -> RepoUrl {
    RepoUrl::parse(Provider::GitHub, &format!("https://github.com/{path}")).unwrap()
}

fn gitlab_repo(path: &str) -> RepoUrl {
    RepoUrl::parse(
        Provider::GitLab,
        &format!("https://gitlab.example.com/{path}.git"),
    )
    .unwrap()
}

fn pull(head: &str, title: &str) -> NewPull {
    NewPull {
        head: head.into(),
        base: Some("main".into()),
        title: title.into(),
        draft: false,
        head_repo: None,
    }
}

#[tokio::test]
async fn github_reads_default_branch_head_and_title() {
    let (sim, github) = github_world().await;
    let first = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "terraform {}")]);
    let repo = github_repo("acme/infra");
    assert_eq!(github.default_branch(&repo).await.unwrap(), "main");
    let head = github.branch_head(&repo, "main").await.unwrap();
    assert_eq!(head.sha.as_str(), first);
    assert_eq!(head.title.as_deref(), Some("Initial commit"));
    let second = sim
        .commit(
            Kind::Github,
            "acme/infra",
            "feature/vpc",
            "Add VPC\n\nwith subnets",
            &[("vpc.tf", "vpc")],
        )
        .await;
    let head = github.branch_head(&repo, "feature/vpc").await.unwrap();
    assert_eq!(
        (head.sha.as_str(), head.title.as_deref()),
        (second.as_str(), Some("Add VPC"))
    );
    let missing = github.branch_head(&repo, "nope").await.unwrap_err();
    assert!(matches!(missing, VcsError::NotFound { .. }), "{missing}");
    let unknown = github
        .default_branch(&github_repo("acme/other"))
        .await
        .unwrap_err();
    assert!(matches!(unknown, VcsError::NotFound { .. }), "{unknown}");
    github.check_credentials().await.unwrap();
}

#[tokio::test]
async fn one_installation_token_serves_many_calls_and_a_401_mints_a_new_one() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let repo = github_repo("acme/infra");
    for _ in 0..10 {
        github.branch_head(&repo, "main").await.unwrap();
    }
    assert_eq!(sim.stats(Kind::Github).tokens_minted, 1);
    sim.revoke_github_tokens();
    github.branch_head(&repo, "main").await.unwrap();
    assert_eq!(sim.stats(Kind::Github).tokens_minted, 2);
}

#[tokio::test]
async fn an_installation_without_access_sees_nothing() {
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(8, 42, "other", Some(&["other/repo"]));
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let github = GitHubClient::new(
        shared(),
        sim.url(),
        42,
        8,
        &SecretString::from(GITHUB_APP_TEST_KEY),
        Priority::Requested,
    )
    .unwrap();
    let err = github
        .branch_head(&github_repo("acme/infra"), "main")
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::NotFound { .. }), "{err}");
    let wrong_app = GitHubClient::new(
        shared(),
        sim.url(),
        99,
        8,
        &SecretString::from(GITHUB_APP_TEST_KEY),
        Priority::Requested,
    )
    .unwrap();
    let err = wrong_app.check_credentials().await.unwrap_err();
    assert!(matches!(err, VcsError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn github_lists_250_open_pull_requests_across_pages() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    for n in 0..250 {
        let branch = format!("pr-{n}");
        sim.commit(
            Kind::Github,
            "acme/infra",
            &branch,
            &format!("change {n}"),
            &[("f.tf", &n.to_string())],
        )
        .await;
        sim.open_pull(
            Kind::Github,
            "acme/infra",
            pull(&branch, &format!("PR {n}")),
        )
        .await;
    }
    // Noise that must not be listed: another base, and a closed PR.
    sim.commit(
        Kind::Github,
        "acme/infra",
        "develop",
        "dev",
        &[("d.tf", "")],
    )
    .await;
    sim.commit(Kind::Github, "acme/infra", "x", "x", &[("x.tf", "")])
        .await;
    let mut other_base = pull("x", "into develop");
    other_base.base = Some("develop".into());
    sim.open_pull(Kind::Github, "acme/infra", other_base).await;
    sim.update_pull(
        Kind::Github,
        "acme/infra",
        1,
        PullUpdate {
            state: Some(PullState::Closed),
            ..Default::default()
        },
    )
    .await;
    let pulls = github
        .open_pull_requests(&github_repo("acme/infra"), "main")
        .await
        .unwrap();
    assert_eq!(pulls.len(), 249);
    let mut numbers: Vec<i64> = pulls.iter().map(|p| p.number).collect();
    numbers.sort();
    assert_eq!(numbers, (2..=250).collect::<Vec<_>>());
    let pr_7 = pulls.iter().find(|p| p.number == 7).unwrap();
    assert_eq!(
        (pr_7.head_ref.as_str(), pr_7.title.as_str(), pr_7.from_fork),
        ("pr-6", "PR 6", false)
    );
}

#[tokio::test]
async fn fork_and_draft_pull_requests_are_flagged() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    sim.create_repo(Kind::Github, "mallory/infra", &[("main.tf", "")]);
    sim.commit(
        Kind::Github,
        "mallory/infra",
        "evil",
        "evil",
        &[("x.tf", "")],
    )
    .await;
    sim.commit(Kind::Github, "acme/infra", "wip", "wip", &[("w.tf", "")])
        .await;
    let mut from_fork = pull("evil", "from a fork");
    from_fork.head_repo = Some("mallory/infra".into());
    sim.open_pull(Kind::Github, "acme/infra", from_fork).await;
    let mut draft = pull("wip", "draft");
    draft.draft = true;
    sim.open_pull(Kind::Github, "acme/infra", draft).await;
    let pulls = github
        .open_pull_requests(&github_repo("acme/infra"), "main")
        .await
        .unwrap();
    let fork = pulls.iter().find(|p| p.number == 1).unwrap();
    let wip = pulls.iter().find(|p| p.number == 2).unwrap();
    assert!(fork.from_fork && !fork.draft);
    assert!(!wip.from_fork && wip.draft);
}

#[tokio::test]
async fn unchanged_resources_are_answered_304_after_the_first_poll() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let repo = github_repo("acme/infra");
    github.branch_head(&repo, "main").await.unwrap();
    github.open_pull_requests(&repo, "main").await.unwrap();
    let after_first = sim.stats(Kind::Github);
    for _ in 0..5 {
        github.branch_head(&repo, "main").await.unwrap();
        github.open_pull_requests(&repo, "main").await.unwrap();
    }
    let after_idle = sim.stats(Kind::Github);
    assert_eq!(
        after_idle.counted, after_first.counted,
        "idle polls cost no rate limit"
    );
    assert_eq!(after_idle.not_modified - after_first.not_modified, 10);
    let sha = sim
        .commit(
            Kind::Github,
            "acme/infra",
            "main",
            "change",
            &[("b.tf", "")],
        )
        .await;
    assert_eq!(
        github
            .branch_head(&repo, "main")
            .await
            .unwrap()
            .sha
            .as_str(),
        sha
    );
}

#[tokio::test]
async fn retries_honour_retry_after_and_then_succeed() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    github.check_credentials().await.unwrap();
    sim.inject_fault(Fault {
        retry_after: Some(1),
        ..fault("/branches/", 429, 1)
    });
    sim.inject_fault(fault("/branches/", 502, 1));
    let started = Instant::now();
    github
        .branch_head(&github_repo("acme/infra"), "main")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
}

#[tokio::test]
async fn retries_stop_within_a_bounded_time() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    github.check_credentials().await.unwrap();
    sim.inject_fault(fault("/branches/", 503, 1_000));
    let started = Instant::now();
    let err = github
        .branch_head(&github_repo("acme/infra"), "main")
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::Status { status: 503, .. }), "{err}");
    assert!(started.elapsed() < fast_retries().total_budget + Duration::from_secs(1));
    // A rate limit that resets in an hour is reported at once, not waited for.
    sim.set_rate_limit(Kind::Github, 0, 3600);
    let started = Instant::now();
    let err = github
        .default_branch(&github_repo("acme/infra"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VcsError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(1));
    // Latency beyond the request timeout is a timeout, not a hang.
    let (sim, _) = (sim, ());
    drop(sim);
}

#[tokio::test]
async fn archives_repack_to_exactly_the_commits_tree() {
    let (sim, github) = github_world().await;
    let files = [
        ("main.tf", "terraform {}"),
        ("modules/vpc/main.tf", "resource \"aws_vpc\" \"x\" {}"),
        ("envs/prod/terraform.tfvars", "region = \"eu-west-1\""),
        (".gitignore", ".terraform/"),
    ];
    let sha = sim.create_repo(Kind::Github, "acme/infra", &files);
    let repacked = github
        .download_archive(
            &github_repo("acme/infra"),
            &terrapod_shared::domain::CommitSha::parse(&sha).unwrap(),
            LIMITS,
        )
        .await
        .unwrap();
    let mut unpacked = tar::Archive::new(flate2::read::GzDecoder::new(std::io::Cursor::new(
        repacked.snapshot.read_all().unwrap(),
    )));
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in unpacked.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            seen.push((entry.path().unwrap().display().to_string(), content));
        }
    }
    seen.sort();
    let mut expected: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(repacked.files, 4);
}

#[tokio::test]
async fn hostile_archives_are_refused_or_cleaned() {
    let (sim, github) = github_world().await;
    let sha = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let commit = terrapod_shared::domain::CommitSha::parse(&sha).unwrap();
    let repo = github_repo("acme/infra");

    sim.override_archive(
        Kind::Github,
        "acme/infra",
        &sha,
        hostile_tarball(&[("w/../../etc/cron.d/x", b"evil", None)]),
    );
    let err = github
        .download_archive(&repo, &commit, LIMITS)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VcsError::Archive(ArchiveError::UnsafePath(_))),
        "{err}"
    );

    sim.override_archive(
        Kind::Github,
        "acme/infra",
        &sha,
        hostile_tarball(&[
            ("w/main.tf", b"ok", None),
            ("w/secrets", b"", Some("/etc/shadow")),
        ]),
    );
    let repacked = github
        .download_archive(&repo, &commit, LIMITS)
        .await
        .unwrap();
    assert_eq!(repacked.dropped, vec!["secrets"]);

    sim.override_archive(Kind::Github, "acme/infra", &sha, vec![0u8; 2048]);
    let small = ArchiveLimits {
        max_archive_bytes: 1024,
        max_unpacked_bytes: LIMITS.max_unpacked_bytes,
    };
    let err = github
        .download_archive(&repo, &commit, small)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VcsError::Archive(ArchiveError::TooLarge { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_over_one_gib_is_refused_in_bounded_memory() {
    let (sim, github) = github_world().await;
    let sha = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let bomb = gzip_bomb(1_100 << 20);
    assert!(
        bomb.len() < 4 << 20,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    sim.override_archive(Kind::Github, "acme/infra", &sha, bomb);
    let commit = terrapod_shared::domain::CommitSha::parse(&sha).unwrap();
    let err = github
        .download_archive(&github_repo("acme/infra"), &commit, LIMITS)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VcsError::Archive(ArchiveError::UnpackedTooLarge { .. })
        ),
        "{err}"
    );
    let peak = peak_rss_bytes();
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
}

#[tokio::test]
async fn gitlab_reads_nested_groups_merge_requests_and_archives() {
    let (sim, gitlab) = gitlab_world().await;
    let first = sim.create_repo(Kind::Gitlab, "platform/network/core", &[("main.tf", "x")]);
    let repo = gitlab_repo("platform/network/core");
    assert_eq!(gitlab.default_branch(&repo).await.unwrap(), "main");
    let head = gitlab.branch_head(&repo, "main").await.unwrap();
    assert_eq!(
        (head.sha.as_str(), head.title.as_deref()),
        (first.as_str(), Some("Initial commit"))
    );
    for n in 0..130 {
        let branch = format!("feature/{n}");
        sim.commit(
            Kind::Gitlab,
            "platform/network/core",
            &branch,
            "c",
            &[("f", &n.to_string())],
        )
        .await;
        sim.open_pull(
            Kind::Gitlab,
            "platform/network/core",
            pull(&branch, &format!("MR {n}")),
        )
        .await;
    }
    let requests = gitlab.open_pull_requests(&repo, "main").await.unwrap();
    assert_eq!(requests.len(), 130);
    assert!(requests
        .iter()
        .all(|r| !r.from_fork && r.head_ref.starts_with("feature/")));
    let repacked = gitlab
        .download_archive(
            &repo,
            &terrapod_shared::domain::CommitSha::parse(&first).unwrap(),
            LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(repacked.files, 1);
    gitlab.check_credentials().await.unwrap();
    let after = sim.stats(Kind::Gitlab);
    gitlab.branch_head(&repo, "main").await.unwrap();
    assert_eq!(sim.stats(Kind::Gitlab).not_modified, after.not_modified + 1);
}

#[tokio::test]
async fn gitlab_rejects_bad_tokens_and_unknown_projects() {
    let (sim, _) = gitlab_world().await;
    sim.create_repo(Kind::Gitlab, "group/project", &[("main.tf", "")]);
    let bad = GitLabClient::new(
        shared(),
        sim.url(),
        SecretString::from("wrong"),
        Priority::Requested,
    );
    let err = bad
        .default_branch(&gitlab_repo("group/project"))
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"));
    let good = GitLabClient::new(
        shared(),
        sim.url(),
        SecretString::from("glpat-test"),
        Priority::Requested,
    );
    let err = good
        .default_branch(&gitlab_repo("group/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn gitlab_rate_limits_are_retried_then_reported() {
    let (sim, gitlab) = gitlab_world().await;
    sim.create_repo(Kind::Gitlab, "group/project", &[("main.tf", "")]);
    sim.inject_fault(Fault {
        retry_after: Some(1),
        ..fault("/repository/branches/", 429, 1)
    });
    gitlab
        .branch_head(&gitlab_repo("group/project"), "main")
        .await
        .unwrap();
    sim.set_rate_limit(Kind::Gitlab, 0, 3600);
    let err = gitlab
        .branch_head(&gitlab_repo("group/project"), "main")
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::RateLimited { .. }), "{err}");
}

#[tokio::test]
async fn slow_providers_time_out_instead_of_hanging() {
    let (sim, gitlab) = gitlab_world().await;
    sim.create_repo(Kind::Gitlab, "group/project", &[("main.tf", "")]);
    let impatient = VcsShared::new(VcsHttp::with_timeout(
        fast_retries(),
        None,
        Duration::from_millis(200),
    ));
    let gitlab_impatient = GitLabClient::new(
        impatient,
        sim.url(),
        SecretString::from("glpat-test"),
        Priority::Requested,
    );
    sim.inject_fault(Fault {
        latency_ms: Some(2_000),
        count: 10,
        ..Fault::matching("/repository/branches/")
    });
    let started = Instant::now();
    let err = gitlab_impatient
        .branch_head(&gitlab_repo("group/project"), "main")
        .await
        .unwrap_err();
    assert!(matches!(err, VcsError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(gitlab);
}

fn hostile_tarball(entries: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::new();
    for (name, data, symlink) in entries {
        let mut header = tar::Header::new_old();
        let raw = header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(target) = symlink {
            raw.linkname[..target.len()].copy_from_slice(target.as_bytes());
            header.set_entry_type(tar::EntryType::Symlink);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
        }
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&out).unwrap();
    gz.finish().unwrap()
}

/// A tarball whose one file is `size` zero bytes, streamed through gzip so the test
/// itself never holds it unpacked.
fn gzip_bomb(size: u64) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut header = tar::Header::new_gnu();
    header.set_path("w/bomb").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    gz.write_all(header.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        gz.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    gz.write_all(&[0; 1024]).unwrap();
    gz.finish().unwrap()
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap()
}

#[tokio::test]
async fn github_enterprise_is_reached_through_the_server_url() {
    let sim = Simulator::start().await.unwrap();
    sim.add_github_app(42, GITHUB_APP_TEST_PUBLIC_KEY);
    sim.add_installation(7, 42, "acme", None);
    let sha = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    let ghe = GitHubClient::new(
        shared(),
        &format!("{}/api/v3/", sim.url()),
        42,
        7,
        &SecretString::from(GITHUB_APP_TEST_KEY),
        Priority::Requested,
    )
    .unwrap();
    // The URL's host is not used to pick the API: the connection's server URL is.
    let repo = RepoUrl::parse(Provider::GitHub, "https://ghe.example.com/acme/infra").unwrap();
    assert_eq!(
        ghe.branch_head(&repo, "main").await.unwrap().sha.as_str(),
        sha
    );
}

/// Whether any recorded request head carries a credential header.
fn carries_credentials(heads: &[String]) -> bool {
    heads
        .iter()
        .any(|head| head.contains("\nauthorization:") || head.contains("\nprivate-token:"))
}

#[tokio::test]
async fn a_gitlab_redirect_to_another_origin_never_gets_the_token() {
    let (sim, gitlab) = gitlab_world().await;
    sim.create_repo(Kind::Gitlab, "platform/core", &[("main.tf", "x")]);
    let elsewhere = HeaderTrap::start("application/json", b"{}".to_vec()).await;
    sim.inject_fault(Fault {
        redirect_to: Some(format!("{}/steal", elsewhere.url())),
        ..Fault::matching("/repository/branches/")
    });
    // An API answer pointing elsewhere is refused: the other host is never asked.
    let err = gitlab
        .branch_head(&gitlab_repo("platform/core"), "main")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another origin"), "{err}");
    assert!(elsewhere.heads().is_empty());
    // An archive may be downloaded elsewhere, but without the token.
    let sha = sim.sim().repos.values().next().unwrap().branches["main"].clone();
    sim.inject_fault(Fault {
        redirect_to: Some(format!("{}/archive.tar.gz", elsewhere.url())),
        ..Fault::matching("/repository/archive")
    });
    let _ = gitlab
        .download_archive(
            &gitlab_repo("platform/core"),
            &terrapod_shared::domain::CommitSha::parse(&sha).unwrap(),
            LIMITS,
        )
        .await;
    let heads = elsewhere.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(!carries_credentials(&heads), "{heads:?}");
}

#[tokio::test]
async fn a_github_pagination_link_to_another_origin_is_refused() {
    let (sim, github) = github_world().await;
    sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    sim.commit(Kind::Github, "acme/infra", "feature", "c", &[("f", "1")])
        .await;
    sim.open_pull(Kind::Github, "acme/infra", pull("feature", "PR"))
        .await;
    let elsewhere = HeaderTrap::start("application/json", b"[]".to_vec()).await;
    sim.inject_fault(Fault {
        link_next: Some(format!("{}/repos/acme/infra/pulls?page=2", elsewhere.url())),
        ..Fault::matching("/pulls")
    });
    let err = github
        .open_pull_requests(&github_repo("acme/infra"), "main")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another origin"), "{err}");
    assert!(
        elsewhere.heads().is_empty(),
        "the hostile page was never asked"
    );
}

#[tokio::test]
async fn a_github_archive_redirected_to_another_host_is_fetched_there_without_credentials() {
    let (sim, github) = github_world().await;
    let sha = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    // GitHub answers a tarball request with a redirect to its archive host.
    let archive_host = HeaderTrap::start(
        "application/x-gzip",
        hostile_tarball(&[("acme-infra-1/main.tf", b"terraform {}", None)]),
    )
    .await;
    sim.inject_fault(Fault {
        redirect_to: Some(format!(
            "{}/acme/infra/legacy.tar.gz/{sha}",
            archive_host.url()
        )),
        ..Fault::matching("/tarball/")
    });
    let repacked = github
        .download_archive(
            &github_repo("acme/infra"),
            &terrapod_shared::domain::CommitSha::parse(&sha).unwrap(),
            LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(repacked.files, 1);
    let heads = archive_host.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(!carries_credentials(&heads), "{heads:?}");
}

#[tokio::test]
async fn same_origin_redirects_keep_the_credential() {
    let (sim, gitlab) = gitlab_world().await;
    sim.create_repo(Kind::Gitlab, "platform/core", &[("main.tf", "x")]);
    let project = urlencoding_path("platform/core");
    // A redirect that stays on the server (e.g. a renamed project) keeps working.
    sim.inject_fault(Fault {
        redirect_to: Some(format!(
            "{}/api/v4/projects/{project}/repository/branches/main",
            sim.url()
        )),
        ..Fault::matching("/repository/branches/main")
    });
    gitlab
        .branch_head(&gitlab_repo("platform/core"), "main")
        .await
        .unwrap();
}

#[tokio::test]
async fn writes_follow_307_and_308_on_their_origin_only() {
    let (sim, github) = github_world().await;
    let sha = sim.create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    // The workspace still names the repository by its old name; GitHub answers
    // writes there with 307 to the new one: the same request, body and credential
    // included, goes to the new address (the simulator checks the token there).
    let old_name = github_repo("acme/old-infra");
    sim.inject_fault(Fault {
        method: Some("POST".into()),
        redirect_to: Some(format!("{}/repos/acme/infra/check-runs", sim.url())),
        redirect_status: Some(307),
        ..Fault::matching("/repos/acme/old-infra/check-runs")
    });
    let create = serde_json::json!({
        "name": "terrapod/infra", "head_sha": sha, "status": "queued", "external_id": "run-1"
    });
    let id = github.create_check_run(&old_name, &create).await.unwrap();
    sim.inject_fault(Fault {
        method: Some("PATCH".into()),
        redirect_to: Some(format!("{}/repos/acme/infra/check-runs/{id}", sim.url())),
        redirect_status: Some(308),
        ..Fault::matching("/repos/acme/old-infra/check-runs/")
    });
    let done = serde_json::json!({"status": "completed", "conclusion": "success"});
    github.update_check_run(&old_name, id, &done).await.unwrap();
    let checks = sim.check_runs("acme/infra");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(
        (checks[0].name.as_str(), checks[0].head_sha.as_str()),
        ("terrapod/infra", sha.as_str())
    );
    assert_eq!(checks[0].conclusion.as_deref(), Some("success"));
    // A 302 would turn the write into a GET: it is not followed, and nothing is made.
    sim.inject_fault(Fault {
        method: Some("POST".into()),
        redirect_to: Some(format!("{}/repos/acme/infra/check-runs", sim.url())),
        ..Fault::matching("/repos/acme/old-infra/check-runs")
    });
    let err = github
        .create_check_run(&old_name, &create)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VcsError::Status { status: 302, .. }),
        "{err:?}"
    );
    // Redirects without end stop after ten hops, and nothing is made.
    sim.inject_fault(Fault {
        method: Some("POST".into()),
        redirect_to: Some(format!("{}/repos/acme/old-infra/check-runs", sim.url())),
        redirect_status: Some(307),
        count: 20,
        ..Fault::matching("/repos/acme/old-infra/check-runs")
    });
    let err = github
        .create_check_run(&old_name, &create)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 10 redirects"), "{err}");
    sim.clear_faults();
    // A 307 to another origin is refused: the body and token never leave.
    let elsewhere = HeaderTrap::start("application/json", b"{}".to_vec()).await;
    sim.inject_fault(Fault {
        method: Some("POST".into()),
        redirect_to: Some(format!("{}/check-runs", elsewhere.url())),
        redirect_status: Some(307),
        ..Fault::matching("/check-runs")
    });
    let err = github
        .create_check_run(&github_repo("acme/infra"), &create)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another origin"), "{err}");
    assert!(elsewhere.heads().is_empty());
    assert_eq!(sim.check_runs("acme/infra").len(), 1);
    // GitLab's commit statuses likewise.
    let (sim, gitlab) = gitlab_world().await;
    let sha = sim.create_repo(Kind::Gitlab, "platform/core", &[("main.tf", "x")]);
    let project = urlencoding_path("platform/core");
    sim.inject_fault(Fault {
        method: Some("POST".into()),
        redirect_to: Some(format!(
            "{}/api/v4/projects/{project}/statuses/{sha}",
            sim.url()
        )),
        redirect_status: Some(308),
        ..Fault::matching("/statuses/")
    });
    gitlab
        .set_commit_status(
            &gitlab_repo("platform/old-core"),
            &terrapod_shared::domain::CommitSha::parse(&sha).unwrap(),
            &serde_json::json!({"state": "running", "name": "terrapod/core"}),
        )
        .await
        .unwrap();
    assert_eq!(sim.commit_statuses("platform/core").len(), 1);
}

fn urlencoding_path(path: &str) -> String {
    path.replace('/', "%2F")
}

#[tokio::test]
async fn oversized_answers_are_refused_and_error_excerpts_stay_short() {
    let repo = gitlab_repo("platform/core");
    // A JSON answer above the limit is refused, not buffered whole.
    let huge = HeaderTrap::start(
        "application/json",
        vec![b' '; terrapod_shared::vcs::http::MAX_JSON_BYTES + 1024],
    )
    .await;
    let gitlab = GitLabClient::new(
        shared(),
        &huge.url(),
        SecretString::from("glpat-test"),
        Priority::Requested,
    );
    let err = gitlab.branch_head(&repo, "main").await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    // An error page of a megabyte becomes a short excerpt.
    let verbose = HeaderTrap::start_with_status(
        "500 Internal Server Error",
        "text/html",
        "<p>not here</p>".repeat(70_000).into_bytes(),
    )
    .await;
    let gitlab = GitLabClient::new(
        shared(),
        &verbose.url(),
        SecretString::from("glpat-test"),
        Priority::Requested,
    );
    let err = gitlab.branch_head(&repo, "main").await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("500") && message.len() < 400, "{message}");
}
