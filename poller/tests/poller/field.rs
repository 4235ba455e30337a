//! The poller as a production install meets GitHub: answers that take hundreds of
//! milliseconds, passes longer than the interval, the installation's budget, large
//! and refused archives, message bursts during busy cycles, lock keys and lost locks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use terrapod_poller::cycle::{run_cycle, CycleReport};
use terrapod_poller::store;
use terrapod_shared::domain::Provider;
use terrapod_shared::ids::WorkspaceId;
use terrapod_shared::queue::{PollMessage, PollReason, Publisher};
use terrapod_vcs_sim::{fault, Kind, SecondaryLimits};

use crate::helpers::{poll, polled, World};

/// Runs one cycle in the background.
fn cycle_in_background(
    ctx: &Arc<terrapod_poller::poll::PollContext>,
) -> tokio::task::JoinHandle<CycleReport> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        run_cycle(&ctx, &shutdown).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_longer_than_the_interval_polls_each_workspace_once_and_polls_after_a_commit_see_it()
{
    let world = World::new().await;
    let mut workspaces = Vec::new();
    for n in 0..10 {
        let repo = format!("acme/r{n}");
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &repo, &format!("w{n}"))
            .await;
        workspaces.push((repo, ws));
    }
    let ctx = world.context(&[
        ("TERRAPOD_POLLER__CONCURRENCY", "1"),
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "1"),
    ]);
    assert_eq!(cycle_in_background(&ctx).await.unwrap().polled, 10);

    // Every answer now takes 400 ms: a pass of ten workspaces takes several seconds,
    // several intervals.
    world.sim.set_latency(400, 0);
    world.make_all_due().await;
    let pass = cycle_in_background(&ctx);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (repo, _) in &workspaces {
        world
            .sim
            .commit(Kind::Github, repo, "main", "Mid-pass", &[("x.tf", "1")])
            .await;
    }
    let committed_at = world.now().await;
    let report = pass.await.unwrap();
    assert_eq!(
        report.polled, 10,
        "each workspace once, though the pass outlasted the interval several times"
    );
    let mut checked = 0;
    for (repo, ws) in &workspaces {
        let head = world.sim.sim().repo(Kind::Github, repo).unwrap().branches["main"].clone();
        let row = world.row(ws).await;
        // A poll reported well after the commit (more than one poll's time) read the
        // branch after it, so it must have seen it.
        if row.vcs_last_polled_at.unwrap() > committed_at + chrono::Duration::milliseconds(1500) {
            checked += 1;
            assert!(
                world
                    .runs(ws)
                    .await
                    .iter()
                    .any(|r| r.vcs_commit_sha == head),
                "{ws} reported a poll after the commit without a run for it"
            );
        }
    }
    assert!(checked >= 3, "only {checked} polls came after the commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_seen_only_by_the_poll_that_met_it() {
    let world = World::new().await;
    world
        .sim
        .create_repo(Kind::Github, "acme/mono", &[("main.tf", "")]);
    let mut workspaces = Vec::new();
    for n in 0..3 {
        workspaces.push(
            world
                .workspace(&format!("w{n}"), Kind::Github, "acme/mono", "main")
                .await,
        );
    }
    // Exactly the attempts of one call fail; the next workspace's call succeeds.
    world.sim.inject_fault(fault("/branches/main", 500, 4));
    let ctx = world.context(&[]);
    let report = cycle_in_background(&ctx).await.unwrap();
    assert_eq!((report.polled, report.errors), (3, 1), "{report:?}");
    let mut with_error = 0;
    for ws in &workspaces {
        let row = world.row(ws).await;
        match row.vcs_last_error {
            Some(error) => {
                assert!(error.contains("500"), "{error}");
                with_error += 1;
            }
            None => assert_eq!(world.runs(ws).await.len(), 1),
        }
    }
    assert_eq!(with_error, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_an_installations_budget_and_never_meet_its_secondary_limits() {
    let world = World::new().await;
    // The budget and GitHub's limit alike: 20 points in any 6 seconds.
    let window = Duration::from_secs(6);
    world.sim.set_secondary_limits(Some(SecondaryLimits {
        points_per_window: 20,
        concurrent: 20,
        window_seconds: 6,
    }));
    let mut workspaces = Vec::new();
    for n in 0..8 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &format!("acme/r{n}"), &format!("w{n}"))
            .await;
        workspaces.push(ws);
    }
    let overrides = [
        ("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", "20"),
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "1"),
        ("TERRAPOD_POLLER__CONCURRENCY", "4"),
    ];
    let started = Instant::now();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let ctx = world.context_with_window(&overrides, window);
        replicas.push(tokio::spawn(async move {
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let mut max_lag: f64 = 0.0;
            while started.elapsed() < Duration::from_secs(18) {
                let report = run_cycle(&ctx, &shutdown).await;
                max_lag = max_lag.max(
                    report
                        .max_lag_seconds
                        .get(&Provider::GitHub)
                        .copied()
                        .unwrap_or(0.0),
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            max_lag
        }));
    }
    let mut max_lag: f64 = 0.0;
    for replica in replicas {
        max_lag = max_lag.max(replica.await.unwrap());
    }
    for ws in &workspaces {
        assert_eq!(world.runs(ws).await.len(), 1, "{ws} was never polled");
    }
    let stats = world.sim.stats(Kind::Github);
    assert_eq!(stats.secondary_limited, 0, "{stats:?}");
    let usage = world.sim.installation_usage(7);
    assert!(usage.max_points_in_window <= 20, "{usage:?}");
    assert!(usage.requests >= 40, "the replicas kept polling: {usage:?}");
    assert!(
        max_lag >= 1.0,
        "the budget stretched the 1 s interval, and the lag says so: {max_lag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polls_asked_for_go_before_the_schedule_when_the_budget_runs_short() {
    let world = World::new().await;
    world.sim.set_secondary_limits(None);
    let window = Duration::from_secs(6);
    let overrides = [
        ("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", "40"),
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "3600"),
        ("TERRAPOD_POLLER__CONCURRENCY", "4"),
    ];
    let (_, urgent) = world
        .repo_with_workspace(Kind::Github, "acme/urgent", "urgent")
        .await;
    let asked = world.context_with_window(&overrides, window);
    assert_eq!(polled(poll(&asked, &urgent).await), (1, None));
    let mut scheduled = Vec::new();
    for n in 0..20 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &format!("acme/s{n}"), &format!("s{n}"))
            .await;
        scheduled.push(ws);
    }
    let schedule = world.context_with_window(&overrides, window);
    let pass = cycle_in_background(&schedule);
    // The schedule has used its share of the window by now and waits for more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    world
        .sim
        .commit(
            Kind::Github,
            "acme/urgent",
            "main",
            "Hotfix",
            &[("fix.tf", "1")],
        )
        .await;
    let started = Instant::now();
    assert_eq!(polled(poll(&asked, &urgent).await), (1, None));
    let took = started.elapsed();
    assert!(
        !pass.is_finished(),
        "the schedule was still waiting for budget"
    );
    assert!(
        took < Duration::from_millis(1500),
        "the requested poll waited {took:?} behind the schedule"
    );
    let report = pass.await.unwrap();
    assert_eq!(report.polled, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_archive_is_remembered_until_a_limit_is_raised() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Github, "acme/big", "big")
        .await;
    let strict = world.context(&[("TERRAPOD_VCS__MAX_ARCHIVE_BYTES", "64")]);
    let (created, error) = polled(poll(&strict, &ws).await);
    assert_eq!(created, 0);
    assert!(
        error
            .unwrap()
            .contains("TERRAPOD_VCS__MAX_ARCHIVE_BYTES (64 bytes)"),
        "the refusal names the limit"
    );
    assert_eq!(world.sim.stats(Kind::Github).archives, 1);
    for _ in 0..2 {
        let (created, error) = polled(poll(&strict, &ws).await);
        assert_eq!(created, 0);
        let error = error.unwrap();
        assert!(error.contains("not downloaded again"), "{error}");
        assert!(error.contains("MAX_ARCHIVE_BYTES (64 bytes)"), "{error}");
    }
    assert_eq!(
        world.sim.stats(Kind::Github).archives,
        1,
        "not downloaded again"
    );
    let relaxed = world.context(&[]);
    assert_eq!(polled(poll(&relaxed, &ws).await), (1, None));
    assert_eq!(world.sim.stats(Kind::Github).archives, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commits_archive_is_downloaded_once_for_every_workspace_and_replica() {
    let world = World::new().await;
    let (sha, first) = world
        .repo_with_workspace(Kind::Gitlab, "group/mono", "first")
        .await;
    let second = world
        .workspace("second", Kind::Gitlab, "group/mono", "main")
        .await;
    let replica_a = world.context(&[]);
    let replica_b = world.context(&[]);
    assert_eq!(polled(poll(&replica_a, &first).await), (1, None));
    assert_eq!(polled(poll(&replica_b, &second).await), (1, None));
    assert_eq!(world.sim.stats(Kind::Gitlab).archives, 1);
    let (a, b) = (world.runs(&first).await, world.runs(&second).await);
    assert_eq!(
        (a[0].vcs_commit_sha.as_str(), b[0].vcs_commit_sha.as_str()),
        (sha.as_str(), sha.as_str())
    );
}

/// (messages ready, consumers) of a queue.
async fn queue_depth(amqp_url: &str, queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let connection = terrapod_shared::queue::connect(amqp_url, "test-inspector")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let depth = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map(|state| state.message_count())
        .unwrap_or(0);
    let _ = connection.close(200, "done".into()).await;
    depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_burst_during_a_busy_cycle_is_polled_at_once_and_nothing_is_dead_lettered() {
    let world = World::new().await;
    world.sim.set_secondary_limits(None);
    let overrides = [
        ("TERRAPOD_POLLER__CONCURRENCY", "4"),
        ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "3600"),
    ];
    // Requested workspaces, polled once already (so the schedule leaves them alone).
    let warm = world.context(&overrides);
    let mut requested = Vec::new();
    for n in 0..8 {
        let repo = format!("acme/hook{n}");
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &repo, &format!("hook{n}"))
            .await;
        assert_eq!(polled(poll(&warm, &ws).await), (1, None));
        requested.push((repo, ws));
    }
    let mut scheduled = Vec::new();
    for n in 0..24 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &format!("acme/busy{n}"), &format!("busy{n}"))
            .await;
        scheduled.push(ws);
    }
    // Each poll now takes over a second: the schedule is busy for several.
    world.sim.set_latency(300, 0);
    let ctx = world.context(&overrides);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(terrapod_poller::run(ctx, listener, shutdown));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = 0;
        for ws in &scheduled {
            done += world.runs(ws).await.len();
        }
        if done >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the schedule never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = Publisher::new(&world.vhost.url(), "test-webhooks");
    let burst = Instant::now();
    for (repo, ws) in &requested {
        world
            .sim
            .commit(Kind::Github, repo, "main", "Pushed", &[("p.tf", "1")])
            .await;
        publisher
            .publish(&PollMessage::new(ws, PollReason::Webhook), Some("delivery"))
            .await
            .unwrap();
    }
    let mut pending: HashSet<&WorkspaceId> = requested.iter().map(|(_, ws)| ws).collect();
    while !pending.is_empty() {
        let mut still = HashSet::new();
        for ws in pending {
            if world.runs(ws).await.len() < 2 {
                still.insert(ws);
            }
        }
        pending = still;
        assert!(
            burst.elapsed() < Duration::from_secs(10),
            "message polls waited for the schedule: {} left",
            pending.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst_done = burst.elapsed();
    let mut scheduled_done = 0;
    for ws in &scheduled {
        scheduled_done += world.runs(ws).await.len();
    }
    assert!(
        scheduled_done < scheduled.len(),
        "the schedule was still busy when the burst was served ({burst_done:?})"
    );
    let _ = stop.send(true);
    poller.await.unwrap().unwrap();
    let url = world.vhost.url();
    assert_eq!(
        queue_depth(&url, terrapod_shared::queue::DEAD_LETTER_QUEUE).await,
        0
    );
    assert_eq!(
        queue_depth(&url, terrapod_shared::queue::POLL_QUEUE).await,
        0
    );
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = Array<Text>)]
    ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_whose_32_bit_hashes_collide_still_lock_independently() {
    let world = World::new().await;
    let mut conn = world.db.connection().await;
    // Among 300,000 ids, two share a 32-bit `hashtext` almost surely (birthday bound).
    let candidates: Vec<String> = (0..300_000)
        .map(|_| WorkspaceId::generate().to_string())
        .collect();
    let pair: Pair = diesel::sql_query(
        "SELECT array_agg(id) AS ids FROM unnest($1::text[]) AS id
         GROUP BY hashtext(id) HAVING count(*) > 1 LIMIT 1",
    )
    .bind::<Array<Text>, _>(&candidates)
    .get_result(&mut conn)
    .await
    .expect("a 32-bit collision among 300,000 ids");
    let (a, b) = (
        WorkspaceId::parse(&pair.ids[0]).unwrap(),
        WorkspaceId::parse(&pair.ids[1]).unwrap(),
    );
    let mut other = world.db.connection().await;
    assert!(store::try_lock(&mut conn, &a).await.unwrap());
    assert!(
        store::try_lock(&mut other, &b).await.unwrap(),
        "{a} and {b} collide in 32 bits but not in the lock's 64"
    );
    assert!(!store::try_lock(&mut other, &a).await.unwrap());
}

/// Advisory locks held in the test's database right now.
async fn advisory_locks_held(world: &World) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
    )
    .get_result::<Count>(&mut world.db.connection().await)
    .await
    .unwrap()
    .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cancelled_midway_gives_its_lock_up() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Github, "acme/slow", "slow")
        .await;
    world.sim.set_latency(3_000, 0);
    let ctx = world.context(&[("TERRAPOD_POLLER__CONCURRENCY", "1")]);
    let task = {
        let (ctx, ws) = (ctx.clone(), ws.clone());
        tokio::spawn(async move { poll(&ctx, &ws).await })
    };
    let mut other = world.db.connection().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait until the poll holds the lock, then cancel it mid-poll.
    while advisory_locks_held(&world).await == 0 {
        assert!(Instant::now() < deadline, "the poll never took its lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store::try_lock(&mut other, &ws).await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "the cancelled poll's connection kept the workspace locked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverys_polls_share_answers_but_never_older_than_what_they_were_asked_to_see() {
    use diesel::{ExpressionMethods, QueryDsl};
    use terrapod_poller::cache::CycleCache;
    use terrapod_poller::poll::{poll_workspace, Trigger};
    use terrapod_shared::db::schema::workspaces;

    let world = World::new().await;
    let first_head = world
        .sim
        .create_repo(Kind::Github, "acme/mono", &[("main.tf", "")]);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            world
                .workspace(&format!("w{n}"), Kind::Github, "acme/mono", "main")
                .await,
        );
    }
    // What the API does for a webhook: every workspace asked for, a message queued.
    let ask = async |which: &[WorkspaceId]| {
        let mut conn = world.db.connection().await;
        diesel::update(workspaces::table.filter(workspaces::id.eq_any(which)))
            .set((
                workspaces::vcs_poll_requested_at.eq(diesel::dsl::now),
                workspaces::vcs_poll_queued_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    };
    ask(&ids).await;
    let ctx = world.context(&[]);
    let delivery = CycleCache::default();
    let poll_with =
        async |ws: &WorkspaceId| match poll_workspace(&ctx, &delivery, ws, Trigger::Message)
            .await
            .unwrap()
        {
            terrapod_poller::poll::PollOutcome::Polled(report) => report.runs_created,
            other => panic!("{other:?}"),
        };
    assert_eq!(poll_with(&ids[0]).await, 1);
    let after_first = world.sim.stats(Kind::Github);

    // A second push; its webhook folds into the messages still queued for w1 (and
    // not w2, to show the difference).
    let second_head = world
        .sim
        .commit(Kind::Github, "acme/mono", "main", "Second", &[("b.tf", "")])
        .await;
    ask(&ids[1..2]).await;
    assert_eq!(poll_with(&ids[1]).await, 1, "w1 must see the second push");
    assert_eq!(world.runs(&ids[1]).await[0].vcs_commit_sha, second_head);
    let after_second = world.sim.stats(Kind::Github);
    assert!(
        after_second.counted + after_second.not_modified
            > after_first.counted + after_first.not_modified,
        "w1 asked the provider again"
    );
    // w2 was asked for by the first delivery only: any of the delivery's answers do,
    // and the freshest (w1's) is the one kept.
    assert_eq!(poll_with(&ids[2]).await, 1);
    assert_eq!(world.runs(&ids[2]).await[0].vcs_commit_sha, second_head);
    assert_eq!(world.runs(&ids[0]).await[0].vcs_commit_sha, first_head);
    let after_third = world.sim.stats(Kind::Github);
    assert_eq!(
        after_third.counted + after_third.not_modified,
        after_second.counted + after_second.not_modified,
        "w2 reused the delivery's answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_installation_held_back_by_its_budget_does_not_hold_back_the_others() {
    use diesel::{ExpressionMethods, QueryDsl};
    use terrapod_shared::db::schema::workspaces;

    let world = World::new().await;
    world.sim.set_secondary_limits(None);
    let mut starved = Vec::new();
    for n in 0..6 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &format!("acme/s{n}"), &format!("s{n}"))
            .await;
        starved.push(ws);
    }
    let mut others = Vec::new();
    for n in 0..6 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Gitlab, &format!("group/o{n}"), &format!("o{n}"))
            .await;
        others.push(ws);
    }
    // The GitHub installation's workspaces come first in the claims (never polled),
    // the GitLab ones after (due for a minute).
    diesel::update(workspaces::table.filter(workspaces::id.eq_any(&others)))
        .set(workspaces::vcs_last_attempt_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)))
        .execute(&mut world.db.connection().await)
        .await
        .unwrap();
    let ctx = world.context_with_window(
        &[
            ("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", "8"),
            ("TERRAPOD_POLLER__CONCURRENCY", "4"),
        ],
        Duration::from_secs(6),
    );
    let started = Instant::now();
    let pass = cycle_in_background(&ctx);
    let mut done = HashSet::new();
    while done.len() < others.len() {
        for ws in &others {
            if !world.runs(ws).await.is_empty() {
                done.insert(ws.clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the GitLab workspaces waited for GitHub's budget"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut starved_done = 0;
    for ws in &starved {
        starved_done += usize::from(!world.runs(ws).await.is_empty());
    }
    assert!(
        starved_done < starved.len(),
        "GitHub's budget was the bottleneck"
    );
    let report = pass.await.unwrap();
    assert_eq!(report.polled, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_meets_a_poll_under_way_is_covered_by_that_poll() {
    use diesel::{ExpressionMethods, QueryDsl};
    use terrapod_shared::db::schema::workspaces;

    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Github, "acme/busy", "busy")
        .await;
    let ctx = world.context(&[]);
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
    world.sim.set_latency(700, 0);
    let first_poll = {
        let (ctx, ws) = (ctx.clone(), ws.clone());
        tokio::spawn(async move { poll(&ctx, &ws).await })
    };
    // While the poll waits for its answers: a push, and a webhook's request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.sim.set_latency(0, 0);
    let pushed = world
        .sim
        .commit(Kind::Github, "acme/busy", "main", "During", &[("d.tf", "")])
        .await;
    diesel::update(workspaces::table.find(&ws))
        .set((
            workspaces::vcs_poll_requested_at.eq(diesel::dsl::now),
            workspaces::vcs_poll_queued_at.eq(diesel::dsl::now),
        ))
        .execute(&mut world.db.connection().await)
        .await
        .unwrap();
    let started = Instant::now();
    let second = poll(&ctx, &ws).await;
    assert!(
        matches!(second, terrapod_poller::poll::PollOutcome::Locked),
        "{second:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no waiting for the lock"
    );
    let (created, error) = polled(first_poll.await.unwrap());
    assert_eq!(
        (created, error),
        (1, None),
        "the poll under way looked again before letting go"
    );
    assert_eq!(world.runs(&ws).await.last().unwrap().vcs_commit_sha, pushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_rate_limit_holds_every_replica_back_until_it_resets() {
    let world = World::new().await;
    let (_, first) = world
        .repo_with_workspace(Kind::Gitlab, "group/a", "a")
        .await;
    let (_, second) = world
        .repo_with_workspace(Kind::Gitlab, "group/b", "b")
        .await;
    world.sim.set_rate_limit(Kind::Gitlab, 0, 45);
    let replica_a = world.context(&[]);
    let (_, error) = polled(poll(&replica_a, &first).await);
    // The head and the MR list are asked at once: the 429 of one is told by GitLab, the
    // other may already be held back by the budget that 429 set.
    let error = error.unwrap_or_default();
    assert!(
        error.contains("rate limit exhausted") || error.contains("rate-limits it for"),
        "{error}"
    );
    let asked = world.sim.stats(Kind::Gitlab);
    assert!(
        asked.errors >= 1,
        "GitLab refused the first replica: {asked:?}"
    );
    // Another replica does not ask at all: the budget says GitLab refuses until then.
    let replica_b = world.context(&[]);
    let started = Instant::now();
    let (_, error) = polled(poll(&replica_b, &second).await);
    let error = error.unwrap();
    assert!(error.contains("rate-limits it for"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let after = world.sim.stats(Kind::Gitlab);
    assert_eq!(
        after.counted + after.errors + after.not_modified,
        asked.counted + asked.errors + asked.not_modified,
        "no request reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_waits_for_the_budget_and_hands_the_workspaces_back() {
    let world = World::new().await;
    world.sim.set_secondary_limits(None);
    let mut workspaces = Vec::new();
    for n in 0..4 {
        let (_, ws) = world
            .repo_with_workspace(Kind::Github, &format!("acme/w{n}"), &format!("w{n}"))
            .await;
        workspaces.push(ws);
    }
    // Room for the token and one poll: the other polls wait for the next window.
    let ctx = world.context_with_window(
        &[("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", "9")],
        Duration::from_secs(60),
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let pass = {
        let ctx = ctx.clone();
        tokio::spawn(async move { run_cycle(&ctx, &shutdown).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pass.is_finished(), "the pass waits for the budget");
    let stopped = Instant::now();
    let _ = stop.send(true);
    ctx.vcs.http.budget().unwrap().stop_waiting();
    pass.await.unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "the waits ended at once"
    );
    let mut handed_back = 0;
    for ws in &workspaces {
        let row = world.row(ws).await;
        if world.runs(ws).await.is_empty() {
            let attempt: Option<chrono::DateTime<chrono::Utc>> = {
                use diesel::QueryDsl;
                use terrapod_shared::db::schema::workspaces;
                workspaces::table
                    .find(ws)
                    .select(workspaces::vcs_last_attempt_at)
                    .first(&mut world.db.connection().await)
                    .await
                    .unwrap()
            };
            assert!(attempt.is_none(), "{ws} is due again at once");
            assert!(
                row.vcs_last_error.is_none(),
                "nothing was recorded for {ws}"
            );
            handed_back += 1;
        }
    }
    assert!(handed_back >= 2, "{handed_back}");
}
