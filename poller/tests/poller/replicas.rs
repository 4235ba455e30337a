//! Replicas sharing the work: never two runs for one head, never none.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use terrapod_poller::store;
use terrapod_shared::domain::TriggerReason;
use terrapod_vcs_sim::{Kind, PullState};

use crate::helpers::{pull, World};

/// A repository's final state: the main branch head, and (number, head) of open PRs.
type Heads = (String, Vec<(i64, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_racing_over_fifty_workspaces_create_exactly_one_run_per_head() {
    let world = World::new().await;
    let repos = [
        (Kind::Github, "acme/a"),
        (Kind::Github, "acme/b"),
        (Kind::Gitlab, "group/c"),
        (Kind::Gitlab, "group/sub/d"),
        (Kind::Github, "acme/e"),
    ];
    let mut workspaces = Vec::new();
    for (index, (kind, repo)) in repos.iter().enumerate() {
        world.sim.create_repo(*kind, repo, &[("main.tf", "")]);
        for n in 0..10 {
            let ws = world
                .workspace(&format!("w{index}-{n}"), *kind, repo, "main")
                .await;
            workspaces.push((ws, *kind, *repo));
        }
    }
    // File triggers on (the whole repository): every head is compared with the last
    // one, across replicas, and the guarantees hold unchanged.
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use terrapod_shared::db::schema::workspaces;
        let mut conn = world.db.connection().await;
        diesel::update(workspaces::table)
            .set(workspaces::file_triggers_enabled.eq(true))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let ctx = world.context(&[("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "1")]);
        let stop = stop.clone();
        replicas.push(tokio::spawn(async move {
            let (_tx, shutdown) = tokio::sync::watch::channel(false);
            let mut polled = 0;
            while !stop.load(Ordering::SeqCst) {
                polled += terrapod_poller::cycle::run_cycle(&ctx, &shutdown)
                    .await
                    .polled;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            polled
        }));
    }
    // Commits and PR updates land while the replicas poll.
    for round in 0..12 {
        let (kind, repo) = repos[round % repos.len()];
        world
            .sim
            .commit(
                kind,
                repo,
                "main",
                &format!("round {round}"),
                &[("r.tf", &round.to_string())],
            )
            .await;
        let branch = format!("feature-{}", round % 3);
        world
            .sim
            .commit(
                kind,
                repo,
                &branch,
                "feature work",
                &[("f.tf", &round.to_string())],
            )
            .await;
        let open = world
            .sim
            .sim()
            .repo(kind, repo)
            .unwrap()
            .pulls
            .iter()
            .any(|p| p.head_branch == branch && p.state == PullState::Open);
        if !open {
            world
                .sim
                .open_pull(kind, repo, pull(&branch, &format!("PR {branch}")))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Quiet: give every workspace at least two more intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total_polls = 0;
    for replica in replicas {
        total_polls += replica.await.unwrap();
    }
    assert!(total_polls >= 50);
    assert!(
        world.sim.stats(Kind::Github).change_lists > 0
            && world.sim.stats(Kind::Gitlab).change_lists > 0,
        "the heads were compared"
    );

    let runs = world.all_runs().await;
    let mut push_keys = HashSet::new();
    let mut pr_keys = HashSet::new();
    for run in &runs {
        let fresh = match run.trigger_reason {
            TriggerReason::Push => {
                push_keys.insert((run.workspace_id.clone(), run.vcs_commit_sha.clone()))
            }
            TriggerReason::PullRequest => pr_keys.insert((
                run.workspace_id.clone(),
                run.vcs_pull_request_number,
                run.vcs_commit_sha.clone(),
            )),
            TriggerReason::Tag => panic!("no workspace here follows tags: {run:?}"),
        };
        assert!(fresh, "duplicate run {run:?}");
    }
    // Never zero: every final head has its run in every workspace.
    let heads: HashMap<(Kind, &str), Heads> = {
        let sim = world.sim.sim();
        repos
            .iter()
            .map(|(kind, repo)| {
                let r = sim.repo(*kind, repo).unwrap();
                let pulls = r
                    .pulls
                    .iter()
                    .filter(|p| p.state == PullState::Open)
                    .map(|p| (p.number, r.branches[&p.head_branch].clone()))
                    .collect();
                ((*kind, *repo), (r.branches["main"].clone(), pulls))
            })
            .collect()
    };
    for (ws, kind, repo) in &workspaces {
        let (main, pulls) = &heads[&(*kind, *repo)];
        assert!(
            push_keys.contains(&(ws.clone(), main.clone())),
            "{ws} lacks a run for {main}"
        );
        for (number, sha) in pulls {
            assert!(
                pr_keys.contains(&(ws.clone(), Some(*number), sha.clone())),
                "{ws} lacks PR #{number} at {sha}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_workspaces_are_claimed_by_one_replica_once_per_interval() {
    let world = World::new().await;
    world
        .sim
        .create_repo(Kind::Github, "acme/a", &[("main.tf", "")]);
    for n in 0..40 {
        world
            .workspace(&format!("w{n}"), Kind::Github, "acme/a", "main")
            .await;
    }
    let (mut a, mut b) = (world.db.connection().await, world.db.connection().await);
    let now = store::database_now(&mut a).await.unwrap();
    let (first, second) = tokio::join!(
        store::claim_due(&mut a, now, 60.0, 30, &[]),
        store::claim_due(&mut b, now, 60.0, 30, &[])
    );
    let ids = |claimed: Vec<store::Claimed>| -> HashSet<_> {
        claimed.into_iter().map(|c| c.id).collect()
    };
    let (first, second) = (ids(first.unwrap()), ids(second.unwrap()));
    assert!(first.is_disjoint(&second));
    assert_eq!(first.len() + second.len(), 40);
    let now = store::database_now(&mut a).await.unwrap();
    assert!(
        store::claim_due(&mut a, now, 60.0, 100, &[])
            .await
            .unwrap()
            .is_empty(),
        "nothing is due again within the interval"
    );
    world.make_all_due().await;
    let now = store::database_now(&mut a).await.unwrap();
    assert_eq!(
        store::claim_due(&mut a, now, 60.0, 100, &[])
            .await
            .unwrap()
            .len(),
        40
    );
}
