//! Run events and status on the commit (SPEC section 9), against PostgreSQL, RabbitMQ
//! and the simulator: the relay publishes the outbox in order and loses nothing, and
//! the reporter puts each run's current state on its commit exactly once per run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use terrapod_poller::poll::PollContext;
use terrapod_shared::db::models::Run;
use terrapod_shared::db::schema::{run_events_outbox, vcs_events};
use terrapod_shared::domain::RunStatus;
use terrapod_shared::lifecycle::Mover;
use terrapod_shared::outbox::{RunEvent, RUN_EVENTS_EXCHANGE};
use terrapod_shared::runs::move_run;
use terrapod_test_support::TcpProxy;
use terrapod_vcs_sim::{fault, Fault, Kind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::{poll, polled, pull, World};

/// The relay and the reporter of one replica, running until stopped.
struct Reporting {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Reporting {
    fn start(ctx: &Arc<PollContext>) -> Reporting {
        let (stop, shutdown) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(terrapod_poller::relay::run_relay(
                ctx.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(terrapod_poller::reporter::run_reporter(
                ctx.clone(),
                shutdown,
            )),
        ];
        Reporting { stop, tasks }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Waits until `check` holds (or fails the test after `limit`).
async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn move_to(world: &World, run: &Run, status: RunStatus) {
    let mut conn = world.db.connection().await;
    // People confirm; executors do the rest.
    let mover = match status {
        RunStatus::Confirmed => Mover::Person,
        _ => Mover::Executor,
    };
    move_run(&mut conn, &run.id, status, mover, None)
        .await
        .unwrap();
}

/// (status, conclusion) of the check runs on `sha`.
fn check_runs_on(world: &World, repo: &str, sha: &str) -> Vec<(String, Option<String>)> {
    world
        .sim
        .check_runs(repo)
        .into_iter()
        .filter(|run| run.head_sha == sha)
        .map(|run| (run.status, run.conclusion))
        .collect()
}

async fn event_kinds(world: &World) -> Vec<(String, String)> {
    let mut conn = world.db.connection().await;
    vcs_events::table
        .order(vcs_events::id)
        .select((vcs_events::kind, vcs_events::message))
        .load(&mut conn)
        .await
        .unwrap()
}

pub async fn outbox_len(world: &World) -> i64 {
    let mut conn = world.db.connection().await;
    run_events_outbox::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_requests_plan_shows_as_a_check_run_from_queued_to_success() {
    let world = World::new().await;
    let repo = "acme/network";
    let (main_sha, ws) = world
        .repo_with_workspace(Kind::Github, repo, "network")
        .await;
    let ctx = world.context(&[]);
    let reporting = Reporting::start(&ctx);
    // The first push run warms the relay and the reporter up.
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    eventually(Duration::from_secs(15), "the push run's check run", || {
        (!check_runs_on(&world, repo, &main_sha).is_empty()).then_some(())
    })
    .await;

    let head = world
        .sim
        .commit(
            Kind::Github,
            repo,
            "feature",
            "Add subnet",
            &[("subnet.tf", "")],
        )
        .await;
    world
        .sim
        .open_pull(Kind::Github, repo, pull("feature", "Add subnet"))
        .await;
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    let created = Instant::now();
    let plan = world
        .runs(&ws)
        .await
        .into_iter()
        .find(|run| run.vcs_pull_request_number.is_some())
        .unwrap();
    let first = eventually(Duration::from_secs(5), "the queued check run", || {
        world
            .sim
            .check_runs(repo)
            .into_iter()
            .find(|run| run.head_sha == head)
    })
    .await;
    let latency = created.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "the check run took {latency:?}"
    );
    assert_eq!(first.status, "queued");
    assert_eq!(first.name, "terrapod/default/network");
    assert_eq!(first.external_id.as_deref(), Some(plan.id.as_str()));
    assert_eq!(
        first.details_url.as_deref(),
        Some(format!("http://localhost:8080/app/default/network/runs/{}", plan.id).as_str())
    );

    for status in [RunStatus::PlanQueued, RunStatus::Planning] {
        move_to(&world, &plan, status).await;
    }
    eventually(Duration::from_secs(5), "in_progress", || {
        (check_runs_on(&world, repo, &head) == [("in_progress".to_owned(), None)]).then_some(())
    })
    .await;
    move_to(&world, &plan, RunStatus::PlannedAndFinished).await;
    eventually(Duration::from_secs(5), "completed (success)", || {
        (check_runs_on(&world, repo, &head)
            == [("completed".to_owned(), Some("success".to_owned()))])
        .then_some(())
    })
    .await;
    // One check run for the plan, updated in place.
    let runs: Vec<_> = world
        .sim
        .check_runs(repo)
        .into_iter()
        .filter(|r| r.head_sha == head)
        .collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].updates >= 2, "{:?}", runs[0]);
    reporting.stop().await;
    let events = event_kinds(&world).await;
    assert!(events
        .iter()
        .any(|(kind, message)| kind == "status-reported"
            && message == "check run terrapod/default/network set to completed (success)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_requests_plan_shows_as_a_commit_status_from_pending_to_success() {
    let world = World::new().await;
    let project = "group/network";
    let (_, ws) = world
        .repo_with_workspace(Kind::Gitlab, project, "network")
        .await;
    let head = world
        .sim
        .commit(
            Kind::Gitlab,
            project,
            "feature",
            "Add subnet",
            &[("subnet.tf", "")],
        )
        .await;
    world
        .sim
        .open_pull(Kind::Gitlab, project, pull("feature", "Add subnet"))
        .await;
    let ctx = world.context(&[]);
    let reporting = Reporting::start(&ctx);
    assert_eq!(polled(poll(&ctx, &ws).await).0, 2);
    let plan = world
        .runs(&ws)
        .await
        .into_iter()
        .find(|run| run.vcs_pull_request_number.is_some())
        .unwrap();
    let statuses = |sha: &str| -> Vec<(String, Option<String>)> {
        world
            .sim
            .commit_statuses(project)
            .into_iter()
            .filter(|s| s.sha == sha)
            .map(|s| (s.status, s.reference))
            .collect()
    };
    eventually(Duration::from_secs(5), "a pending commit status", || {
        (statuses(&head) == [("pending".to_owned(), Some("feature".to_owned()))]).then_some(())
    })
    .await;
    for status in [RunStatus::PlanQueued, RunStatus::Planning] {
        move_to(&world, &plan, status).await;
    }
    eventually(Duration::from_secs(5), "running", || {
        (statuses(&head) == [("running".to_owned(), Some("feature".to_owned()))]).then_some(())
    })
    .await;
    move_to(&world, &plan, RunStatus::PlannedAndFinished).await;
    let final_status = eventually(Duration::from_secs(5), "success", || {
        world
            .sim
            .commit_statuses(project)
            .into_iter()
            .find(|s| s.sha == head && s.status == "success")
    })
    .await;
    assert_eq!(final_status.name, "terrapod/default/network");
    assert!(final_status
        .target_url
        .unwrap()
        .ends_with(&format!("/runs/{}", plan.id)));
    reporting.stop().await;
}

/// A queue of our own on the run-events exchange, as an executor would bind one.
pub async fn follow_run_events(world: &World) -> (lapin::Connection, lapin::Consumer) {
    let connection = terrapod_shared::queue::connect(&world.vhost.url(), "test-follower")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    terrapod_shared::queue::declare_run_events(&channel)
        .await
        .unwrap();
    channel
        .queue_declare(
            "test.run-events".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "test.run-events".into(),
            RUN_EVENTS_EXCHANGE.into(),
            "run.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            "test.run-events".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, consumer)
}

/// Distinct run events received, and each run's sequences in arrival order
/// (duplicates kept).
#[derive(Default)]
pub struct Received {
    pub distinct: std::collections::HashSet<(String, i64)>,
    pub by_run: BTreeMap<String, Vec<i64>>,
}

/// Reads run events until `count` distinct ones arrived in all.
pub async fn read_events(consumer: &mut lapin::Consumer, received: &mut Received, count: usize) {
    while received.distinct.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("run events keep coming")
            .unwrap()
            .unwrap();
        let event: RunEvent = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("run.{}", event.status)
        );
        received
            .distinct
            .insert((event.run_id.clone(), event.sequence));
        received
            .by_run
            .entry(event.run_id)
            .or_default()
            .push(event.sequence);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_during_transitions_loses_no_event_and_no_status() {
    let world = World::new().await;
    let repo = "acme/outage";
    let (sha, ws) = world
        .repo_with_workspace(Kind::Github, repo, "outage")
        .await;
    let (_follower, mut events) = follow_run_events(&world).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let amqp = world.vhost.url_via(&proxy.address());
    let ctx = world.context(&[("TERRAPOD_AMQP__URL", &amqp)]);
    let reporting = Reporting::start(&ctx);
    proxy.cut();
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    let run = world.runs(&ws).await.remove(0);
    for status in [
        RunStatus::PlanQueued,
        RunStatus::Planning,
        RunStatus::Planned,
        RunStatus::Discarded,
    ] {
        move_to(&world, &run, status).await;
    }
    // Nothing could be sent: the events wait in PostgreSQL.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outbox_len(&world).await, 5);
    assert!(world.sim.check_runs(repo).is_empty());
    proxy.restore();
    let mut received = Received::default();
    read_events(&mut events, &mut received, 5).await;
    let mut sequences = received.by_run[run.id.as_str()].clone();
    sequences.dedup();
    assert_eq!(sequences, vec![1, 2, 3, 4, 5], "in sequence order");
    eventually(
        Duration::from_secs(30),
        "the final state on the commit",
        || {
            (check_runs_on(&world, repo, &sha)
                == [("completed".to_owned(), Some("cancelled".to_owned()))])
            .then_some(())
        },
    )
    .await;
    // Events whose confirms were lost with the connection are sent again: the outbox
    // empties once the relay's new connection confirms them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_len(&world).await > 0 {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reporting.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_ends_with_the_right_state_and_one_check_run() {
    let world = World::new().await;
    let repo = "acme/flaky";
    let (sha, ws) = world.repo_with_workspace(Kind::Github, repo, "flaky").await;
    // The first create happens, but its answer is lost; the lookup that follows and
    // the updates fail for a while too.
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        status: Some(502),
        answer_lost: true,
        ..Fault::matching("/check-runs")
    });
    world.sim.inject_fault(Fault {
        method: Some("GET".into()),
        ..fault("/check-runs", 500, 2)
    });
    world.sim.inject_fault(Fault {
        method: Some("PATCH".into()),
        ..fault("/check-runs", 503, 6)
    });
    let ctx = world.context(&[]);
    let reporting = Reporting::start(&ctx);
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    let run = world.runs(&ws).await.remove(0);
    for status in [
        RunStatus::PlanQueued,
        RunStatus::Planning,
        RunStatus::Planned,
        RunStatus::Confirmed,
        RunStatus::ApplyQueued,
        RunStatus::Applying,
        RunStatus::Errored,
    ] {
        move_to(&world, &run, status).await;
    }
    eventually(Duration::from_secs(60), "the final state", || {
        (check_runs_on(&world, repo, &sha)
            == [("completed".to_owned(), Some("failure".to_owned()))])
        .then_some(())
    })
    .await;
    // Whatever was retried, the run has one check run, and nothing failed for good.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.sim.check_runs(repo).len(), 1);
    reporting.stop().await;
    let events = event_kinds(&world).await;
    assert!(
        !events.iter().any(|(kind, _)| kind == "status-failed"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_finally_fails_is_recorded_and_never_touches_the_run() {
    let world = World::new().await;
    let project = "group/down";
    let (_, ws) = world
        .repo_with_workspace(Kind::Gitlab, project, "down")
        .await;
    world.sim.inject_fault(Fault {
        method: Some("POST".into()),
        ..fault("/statuses/", 500, 10_000)
    });
    let mut ctx = world.context(&[]);
    Arc::get_mut(&mut ctx).unwrap().report_persistence = Duration::from_secs(1);
    let reporting = Reporting::start(&ctx);
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    let run = world.runs(&ws).await.remove(0);
    let failed = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = event_kinds(&world).await;
            if let Some((_, message)) = events.into_iter().find(|(kind, _)| kind == "status-failed")
            {
                break message;
            }
            assert!(Instant::now() < deadline, "no status-failed event");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(failed.contains("HTTP 500"), "{failed}");
    assert!(!failed.contains(crate::helpers::GITLAB_TOKEN));
    // The run went on regardless.
    move_to(&world, &run, RunStatus::PlanQueued).await;
    reporting.stop().await;
    assert_eq!(world.runs(&ws).await[0].status, RunStatus::PlanQueued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_renamed_mid_run_keeps_one_check_run_and_a_disabled_connection_says_why() {
    let world = World::new().await;
    let repo = "acme/renamed";
    let (sha, ws) = world
        .repo_with_workspace(Kind::Github, repo, "before")
        .await;
    let ctx = world.context(&[]);
    let reporting = Reporting::start(&ctx);
    assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
    let run = world.runs(&ws).await.remove(0);
    eventually(Duration::from_secs(15), "the queued check run", || {
        (!check_runs_on(&world, repo, &sha).is_empty()).then_some(())
    })
    .await;
    {
        use terrapod_shared::db::schema::workspaces;
        let mut conn = world.db.connection().await;
        diesel::update(workspaces::table.find(&ws))
            .set(workspaces::name.eq("after"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    move_to(&world, &run, RunStatus::PlanQueued).await;
    move_to(&world, &run, RunStatus::Planning).await;
    eventually(Duration::from_secs(15), "in_progress", || {
        (check_runs_on(&world, repo, &sha) == [("in_progress".to_owned(), None)]).then_some(())
    })
    .await;
    let runs = world.sim.check_runs(repo);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].name, "terrapod/default/before");

    // A disabled connection: nothing is sent, and the log says why.
    {
        use terrapod_shared::db::schema::vcs_connections;
        let mut conn = world.db.connection().await;
        diesel::update(vcs_connections::table.find(&world.github))
            .set(vcs_connections::status.eq("disabled"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    move_to(&world, &run, RunStatus::Errored).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = event_kinds(&world).await;
        if events
            .iter()
            .any(|(kind, message)| kind == "status-failed" && message.contains("disabled"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        check_runs_on(&world, repo, &sha),
        [("in_progress".to_owned(), None)]
    );
    reporting.stop().await;
}
