//! Each flow of the specification's poller section, for GitHub and GitLab.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::{configuration_versions, vcs_connections, workspaces};
use terrapod_shared::domain::{RunStatus, TriggerReason};
use terrapod_vcs_sim::{fault, Kind, PullState, PullUpdate};

use crate::helpers::{poll, polled, pull, World, GITLAB_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_on_the_tracked_branch_gets_exactly_one_push_run() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let repo = match kind {
            Kind::Github => "acme/network",
            Kind::Gitlab => "platform/infra/network",
        };
        let first = world
            .sim
            .create_repo(kind, repo, &[("main.tf", "terraform {}")]);
        let ws = world.workspace("network", kind, repo, "main").await;
        let ctx = world.context(&[]);

        assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "{kind:?}");
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (0, None),
            "{kind:?}: nothing new"
        );
        let second = world
            .sim
            .commit(
                kind,
                repo,
                "main",
                "Add subnets\n\ndetails",
                &[("subnets.tf", "x")],
            )
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));

        let runs = world.runs(&ws).await;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].vcs_commit_sha, first);
        assert_eq!(runs[1].vcs_commit_sha, second);
        let run = &runs[1];
        assert_eq!(run.trigger_reason, TriggerReason::Push);
        assert_eq!(run.status, RunStatus::Pending);
        assert!(!run.plan_only);
        assert_eq!(run.vcs_branch, "main");
        assert_eq!(
            run.message,
            format!("Triggered by commit {} on main: Add subnets", &second[..8])
        );
        let row = world.row(&ws).await;
        assert_eq!(row.vcs_last_commit_sha.as_deref(), Some(second.as_str()));
        assert!(row.vcs_last_polled_at.is_some());
        assert!(row.vcs_last_error.is_none());

        // The configuration version holds the repository at that commit, wrapper removed.
        let mut conn = world.db.connection().await;
        let archive: String = configuration_versions::table
            .filter(configuration_versions::id.eq(&run.configuration_version_id))
            .select(configuration_versions::archive_sha256)
            .first(&mut conn)
            .await
            .unwrap();
        let tarball = terrapod_shared::archives::read_all(&mut conn, &archive)
            .await
            .unwrap();
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&tarball[..]))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["main.tf", "subnets.tf"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_branch_tracks_the_default_branch() {
    let world = World::new().await;
    let sha = world
        .sim
        .create_repo(Kind::Github, "acme/app", &[("main.tf", "")]);
    world
        .sim
        .commit(
            Kind::Github,
            "acme/app",
            "other",
            "elsewhere",
            &[("x.tf", "")],
        )
        .await;
    let ws = world.workspace("app", Kind::Github, "acme/app", "").await;
    let ctx = world.context(&[]);
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
    let runs = world.runs(&ws).await;
    assert_eq!(
        (runs[0].vcs_commit_sha.as_str(), runs[0].vcs_branch.as_str()),
        (sha.as_str(), "main")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_pull_request_head_gets_one_speculative_plan_and_supersedes_the_last() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let repo = "acme/infra";
        world.sim.create_repo(kind, repo, &[("main.tf", "")]);
        world
            .sim
            .create_repo(kind, "mallory/infra", &[("main.tf", "")]);
        let first = world
            .sim
            .commit(kind, repo, "feature", "Try it", &[("f.tf", "1")])
            .await;
        let number = world
            .sim
            .open_pull(kind, repo, pull("feature", "Try a feature"))
            .await;
        world
            .sim
            .commit(kind, "mallory/infra", "evil", "evil", &[("x.tf", "")])
            .await;
        let mut from_fork = pull("evil", "Innocent change");
        from_fork.head_repo = Some("mallory/infra".into());
        world.sim.open_pull(kind, repo, from_fork).await;
        let ws = world.workspace("infra", kind, repo, "main").await;
        let ctx = world.context(&[]);

        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (2, None),
            "{kind:?}: the push and the PR"
        );
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
        let second = world
            .sim
            .commit(kind, repo, "feature", "Fix it", &[("f.tf", "2")])
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));

        let plans: Vec<_> = world
            .runs(&ws)
            .await
            .into_iter()
            .filter(|r| r.trigger_reason == TriggerReason::PullRequest)
            .collect();
        assert_eq!(plans.len(), 2, "{kind:?}: the fork PR is never planned");
        assert_eq!(
            (plans[0].vcs_commit_sha.as_str(), plans[0].status),
            (first.as_str(), RunStatus::Canceled)
        );
        assert_eq!(
            (plans[1].vcs_commit_sha.as_str(), plans[1].status),
            (second.as_str(), RunStatus::Pending)
        );
        let plan = &plans[1];
        assert!(plan.plan_only && !plan.auto_apply);
        assert_eq!(plan.vcs_pull_request_number, Some(number));
        assert_eq!(plan.vcs_branch, "feature");
        assert_eq!(
            plan.message,
            format!("Speculative plan for PR #{number}: Try a feature")
        );

        world
            .sim
            .update_pull(
                kind,
                repo,
                number,
                PullUpdate {
                    state: Some(PullState::Closed),
                    ..Default::default()
                },
            )
            .await;
        world
            .sim
            .commit(kind, repo, "feature", "After close", &[("f.tf", "3")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (0, None),
            "closed PRs are not planned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_download_loses_no_commit_and_makes_exactly_one_run_once_it_recovers() {
    let world = World::new().await;
    let (sha, ws) = world
        .repo_with_workspace(Kind::Github, "acme/infra", "infra")
        .await;
    let ctx = world.context(&[]);
    world.sim.inject_fault(fault("/tarball/", 500, 1_000));
    for _ in 0..2 {
        let (created, error) = polled(poll(&ctx, &ws).await);
        assert_eq!(created, 0);
        assert!(error.unwrap().contains("500"));
        let row = world.row(&ws).await;
        assert_eq!(
            row.vcs_last_commit_sha, None,
            "the SHA does not advance without its run"
        );
        assert!(row.vcs_last_error_at.is_some());
    }
    terrapod_vcs_sim::ops::clear_faults(&mut world.sim.sim());
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
    assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
    let runs = world.runs(&ws).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].vcs_commit_sha, sha);
    assert!(
        world.row(&ws).await.vcs_last_error.is_none(),
        "success clears the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_whose_connection_is_missing_or_disabled_are_skipped_with_a_reason() {
    let world = World::new().await;
    world
        .sim
        .create_repo(Kind::Github, "acme/infra", &[("main.tf", "")]);
    world
        .sim
        .create_repo(Kind::Gitlab, "group/project", &[("main.tf", "")]);
    let disabled = world
        .workspace("disabled", Kind::Github, "acme/infra", "main")
        .await;
    let orphan = world
        .workspace("orphan", Kind::Gitlab, "group/project", "main")
        .await;
    let mut conn = world.db.connection().await;
    diesel::update(vcs_connections::table.find(&world.github))
        .set(vcs_connections::status.eq("disabled"))
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::update(workspaces::table.find(&orphan))
        .set(workspaces::vcs_connection_id.eq(None::<String>))
        .execute(&mut conn)
        .await
        .unwrap();
    let ctx = world.context(&[]);
    let (created, error) = polled(poll(&ctx, &disabled).await);
    assert_eq!(created, 0);
    assert!(error.unwrap().contains("disabled"));
    let (created, error) = polled(poll(&ctx, &orphan).await);
    assert_eq!(created, 0);
    assert!(error.unwrap().contains("no VCS connection"));
    assert!(world.all_runs().await.is_empty());
    assert!(world
        .row(&disabled)
        .await
        .vcs_last_error
        .unwrap()
        .contains("disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_are_recorded_short_and_without_credentials() {
    let world = World::new().await;
    let (_, ws) = world
        .repo_with_workspace(Kind::Gitlab, "group/project", "p")
        .await;
    let missing = world
        .workspace("m", Kind::Gitlab, "group/missing", "main")
        .await;
    world.sim.sim().gitlab_tokens.clear();
    let ctx = world.context(&[]);
    let (_, error) = polled(poll(&ctx, &ws).await);
    let error = error.unwrap();
    assert!(
        error.contains("rejected the connection's credentials"),
        "{error}"
    );
    assert!(!error.contains(GITLAB_TOKEN));
    world.sim.add_gitlab_token(GITLAB_TOKEN, None);
    let (_, error) = polled(poll(&ctx, &missing).await);
    assert!(error.unwrap().contains("not found"));
    let stored = world.row(&ws).await.vcs_last_error.unwrap();
    assert!(stored.len() <= 500 && !stored.contains(GITLAB_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_workspaces_on_one_repository_cost_about_one_set_of_provider_calls() {
    let world = World::new().await;
    world
        .sim
        .create_repo(Kind::Github, "acme/mono", &[("main.tf", "")]);
    for n in 0..50 {
        world
            .workspace(&format!("ws-{n}"), Kind::Github, "acme/mono", "main")
            .await;
    }
    let ctx = world.context(&[]);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let report = terrapod_poller::cycle::run_cycle(&ctx, &shutdown).await;
    assert_eq!(
        (report.polled, report.runs_created, report.errors),
        (50, 50, 0)
    );
    let stats = world.sim.stats(Kind::Github);
    // A token, the branch, the PR list and one archive; not 50 of each.
    assert!(stats.counted + stats.not_modified <= 8, "{stats:?}");
    assert_eq!(stats.archives, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_versions_keep_where_their_commit_came_from() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let repo = "acme/origin";
        let (first, ws) = world.repo_with_workspace(kind, repo, "origin").await;
        let ctx = world.context(&[]);
        assert_eq!(polled(poll(&ctx, &ws).await).0, 1);
        let second = world
            .sim
            .commit(kind, repo, "main", "Add VPC\n\nbody", &[("vpc.tf", "")])
            .await;
        let head = world
            .sim
            .commit(kind, repo, "feature", "Try", &[("f.tf", "")])
            .await;
        let number = world
            .sim
            .open_pull(kind, repo, pull("feature", "Try a feature"))
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await).0, 2);
        let mut conn = world.db.connection().await;
        let mut ingresses: std::collections::HashMap<String, serde_json::Value> =
            configuration_versions::table
                .select((
                    configuration_versions::vcs_commit_sha,
                    configuration_versions::ingress,
                ))
                .load::<(String, Option<serde_json::Value>)>(&mut conn)
                .await
                .unwrap()
                .into_iter()
                .map(|(sha, ingress)| (sha, ingress.unwrap()))
                .collect();
        let push = ingresses.remove(&second).unwrap();
        let (web, section, sender) = match kind {
            // The connections' server is the simulator: links point there.
            Kind::Github => (world.sim.url(), "", "octocat"),
            Kind::Gitlab => (world.sim.url(), "-/", "Terrapod Simulator"),
        };
        assert_eq!(push["branch"], "main", "{kind:?}");
        assert_eq!(push["commit-sha"], second.as_str());
        assert_eq!(push["commit-message"], "Add VPC");
        assert_eq!(push["identifier"], repo);
        assert_eq!(push["is-pull-request"], false);
        assert_eq!(push["on-default-branch"], true);
        assert_eq!(push["sender-username"], sender, "{kind:?}");
        assert_eq!(push["clone-url"], format!("{web}/{repo}.git"));
        assert_eq!(
            push["commit-url"],
            format!("{web}/{repo}/{section}commit/{second}")
        );
        assert_eq!(
            push["compare-url"],
            format!("{web}/{repo}/{section}compare/{first}...{second}")
        );
        let plan = ingresses.remove(&head).unwrap();
        assert_eq!(plan["is-pull-request"], true, "{kind:?}");
        assert_eq!(plan["pull-request-number"], number);
        assert_eq!(plan["pull-request-title"], "Try a feature");
        assert_eq!(plan["branch"], "feature");
        assert_eq!(plan["on-default-branch"], false);
        assert!(
            plan["pull-request-url"]
                .as_str()
                .unwrap()
                .ends_with(&number.to_string()),
            "{plan}"
        );
        assert!(plan["sender-username"].is_string(), "{plan}");
    }
}
