//! File triggers (SPEC section 8): which commits and pull requests get runs.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use terrapod_shared::db::schema::{vcs_events, workspaces};
use terrapod_shared::domain::TriggerReason;
use terrapod_shared::ids::WorkspaceId;
use terrapod_vcs_sim::{fault, Kind};

use crate::helpers::{poll, polled, pull, World};

/// Turns file triggers on for `workspace`, in `directory`, with `prefixes` or `patterns`.
async fn filter(
    world: &World,
    workspace: &WorkspaceId,
    directory: &str,
    prefixes: &[&str],
    patterns: &[&str],
) {
    let mut conn = world.db.connection().await;
    diesel::update(workspaces::table.find(workspace))
        .set((
            workspaces::file_triggers_enabled.eq(true),
            workspaces::working_directory.eq(directory),
            workspaces::trigger_prefixes
                .eq(prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
            workspaces::trigger_patterns
                .eq(patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The workspace's recorded decisions not to run, oldest first.
async fn skips(world: &World, workspace: &WorkspaceId) -> Vec<String> {
    let mut conn = world.db.connection().await;
    vcs_events::table
        .filter(vcs_events::workspace_id.eq(workspace))
        .filter(vcs_events::kind.eq("skipped"))
        .order(vcs_events::id.asc())
        .select(vcs_events::message)
        .load(&mut conn)
        .await
        .unwrap()
}

const TREE: &[(&str, &str)] = &[
    ("README.md", "# infra"),
    ("envs/prod/main.tf", "terraform {}"),
    ("envs/staging/main.tf", "terraform {}"),
    ("modules/vpc/main.tf", "resource {}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_on_a_directory_runs_only_for_commits_that_touch_it() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let repo = "acme/mono";
        world.sim.create_repo(kind, repo, TREE);
        let ws = world.workspace("prod", kind, repo, "main").await;
        filter(&world, &ws, "envs/prod", &["modules"], &[]).await;
        let ctx = world.context(&[]);
        // No previous SHA: the changed files cannot be known, so the first head runs.
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "{kind:?}");

        let readme = world
            .sim
            .commit(kind, repo, "main", "Docs", &[("README.md", "# new")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (0, None),
            "{kind:?}: root-only commit"
        );
        assert_eq!(
            world.row(&ws).await.vcs_last_commit_sha.as_deref(),
            Some(readme.as_str())
        );
        let skipped = skips(&world, &ws).await;
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].contains("no changed file matches the triggers"),
            "{skipped:?}"
        );

        let prod = world
            .sim
            .commit(kind, repo, "main", "Prod", &[("envs/prod/x.tf", "x")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: its directory"
        );
        let module = world
            .sim
            .commit(kind, repo, "main", "Module", &[("modules/vpc/v.tf", "v")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: a trigger prefix"
        );

        // Three commits between two polls; only the middle one touches the directory.
        world
            .sim
            .commit(kind, repo, "main", "a", &[("README.md", "a")])
            .await;
        world
            .sim
            .commit(kind, repo, "main", "b", &[("envs/prod/b.tf", "b")])
            .await;
        let head = world
            .sim
            .commit(kind, repo, "main", "c", &[("envs/staging/c.tf", "c")])
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "{kind:?}: range");
        let shas: Vec<String> = world
            .runs(&ws)
            .await
            .into_iter()
            .map(|r| r.vcs_commit_sha)
            .collect();
        assert_eq!(&shas[1..], &[prod, module, head.clone()]);
        assert!(world
            .runs(&ws)
            .await
            .iter()
            .all(|r| r.trigger_reason == TriggerReason::Push));
        // Nothing is compared twice: polling again costs no comparison.
        let before = world.sim.stats(kind).change_lists;
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
        assert_eq!(world.sim.stats(kind).change_lists, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_replace_the_directory_rule() {
    let world = World::new().await;
    world.sim.create_repo(Kind::Github, "acme/mono", TREE);
    let ws = world
        .workspace("tf", Kind::Github, "acme/mono", "main")
        .await;
    filter(&world, &ws, "envs/prod", &[], &["**/*.tf", "modules/**"]).await;
    let ctx = world.context(&[]);
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
    world
        .sim
        .commit(
            Kind::Github,
            "acme/mono",
            "main",
            "md",
            &[("envs/prod/notes.md", "n")],
        )
        .await;
    assert_eq!(
        polled(poll(&ctx, &ws).await),
        (0, None),
        "not a .tf file, not under modules/"
    );
    world
        .sim
        .commit(
            Kind::Github,
            "acme/mono",
            "main",
            "tf",
            &[("elsewhere/x.tf", "x")],
        )
        .await;
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "**/*.tf");
    world
        .sim
        .commit(
            Kind::Github,
            "acme/mono",
            "main",
            "doc",
            &[("modules/README", "r")],
        )
        .await;
    assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "modules/**");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_changed_files_cannot_be_known_the_run_is_created() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        world.sim.create_repo(kind, "acme/mono", TREE);
        let ws = world.workspace("prod", kind, "acme/mono", "main").await;
        filter(&world, &ws, "envs/prod", &[], &[]).await;
        let ctx = world.context(&[]);
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
        // The comparison fails, retries included: a spare plan, not a missed change.
        world.sim.inject_fault(fault("compare", 500, 20));
        world
            .sim
            .commit(kind, "acme/mono", "main", "r", &[("README.md", "1")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: compare failure"
        );
        world.sim.clear_faults();
        // A force-push: the old base is gone from the provider.
        let gone = world.row(&ws).await.vcs_last_commit_sha.unwrap();
        world.sim.forget_commit(kind, "acme/mono", &gone);
        world
            .sim
            .commit(kind, "acme/mono", "main", "r2", &[("README.md", "2")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: base gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_are_filtered_by_their_files_and_can_be_switched_off() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let repo = "acme/mono";
        world.sim.create_repo(kind, repo, TREE);
        let ws = world.workspace("prod", kind, repo, "main").await;
        filter(&world, &ws, "envs/prod", &[], &[]).await;
        let ctx = world.context(&[]);
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
        world
            .sim
            .commit(kind, repo, "docs", "Docs", &[("README.md", "d")])
            .await;
        world
            .sim
            .open_pull(kind, repo, pull("docs", "Docs only"))
            .await;
        let prod = world
            .sim
            .commit(kind, repo, "prod", "Prod", &[("envs/prod/p.tf", "p")])
            .await;
        world
            .sim
            .open_pull(kind, repo, pull("prod", "Prod change"))
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "{kind:?}");
        let plans: Vec<_> = world
            .runs(&ws)
            .await
            .into_iter()
            .filter(|r| r.plan_only)
            .collect();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].vcs_commit_sha, prod);
        assert!(skips(&world, &ws)
            .await
            .iter()
            .any(|m| m.contains("no changed file matches")));
        // Decided once: the next poll asks for no file list again.
        let before = world.sim.stats(kind).change_lists;
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
        assert_eq!(world.sim.stats(kind).change_lists, before);

        // speculative-enabled: false — no plans at all, and the reason is recorded.
        let mut conn = world.db.connection().await;
        diesel::update(workspaces::table.find(&ws))
            .set(workspaces::speculative_enabled.eq(false))
            .execute(&mut conn)
            .await
            .unwrap();
        world
            .sim
            .commit(kind, repo, "prod", "More", &[("envs/prod/q.tf", "q")])
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None), "{kind:?}");
        assert!(skips(&world, &ws)
            .await
            .iter()
            .any(|m| m.contains("speculative plans are disabled")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_workspaces_in_different_directories_share_one_comparison() {
    let world = World::new().await;
    let mut tree: Vec<(String, String)> = Vec::new();
    for n in 0..50 {
        tree.push((format!("stacks/s{n}/main.tf"), "terraform {}".into()));
    }
    let files: Vec<(&str, &str)> = tree.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    world.sim.create_repo(Kind::Github, "acme/mono", &files);
    let mut workspaces = Vec::new();
    for n in 0..50 {
        let ws = world
            .workspace(&format!("s{n}"), Kind::Github, "acme/mono", "main")
            .await;
        filter(&world, &ws, &format!("stacks/s{n}"), &[], &[]).await;
        workspaces.push(ws);
    }
    let ctx = world.context(&[]);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let first = terrapod_poller::cycle::run_cycle(&ctx, &shutdown).await;
    assert_eq!(
        first.runs_created, 50,
        "no previous SHA: every workspace runs once"
    );
    world
        .sim
        .commit(
            Kind::Github,
            "acme/mono",
            "main",
            "s7",
            &[("stacks/s7/x.tf", "x")],
        )
        .await;
    world.make_all_due().await;
    let before = world.sim.stats(Kind::Github);
    let second = terrapod_poller::cycle::run_cycle(&ctx, &shutdown).await;
    let after = world.sim.stats(Kind::Github);
    assert_eq!(
        (second.polled, second.runs_created, second.errors),
        (50, 1, 0)
    );
    assert_eq!(
        after.change_lists - before.change_lists,
        1,
        "one comparison for 50 workspaces"
    );
    assert_eq!(world.runs(&workspaces[7]).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_back_to_an_older_commit_runs_when_it_undoes_the_directory() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        world.sim.create_repo(kind, "acme/mono", TREE);
        let ws = world.workspace("prod", kind, "acme/mono", "main").await;
        filter(&world, &ws, "envs/prod", &[], &[]).await;
        let ctx = world.context(&[]);
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
        let docs = world
            .sim
            .commit(kind, "acme/mono", "main", "docs", &[("README.md", "d")])
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
        world
            .sim
            .commit(
                kind,
                "acme/mono",
                "main",
                "prod",
                &[("envs/prod/p.tf", "p")],
            )
            .await;
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None));
        // The branch goes back to `docs`: envs/prod/p.tf disappears, which is a change.
        world.sim.set_branch(kind, "acme/mono", "main", &docs);
        assert_eq!(polled(poll(&ctx, &ws).await), (1, None), "{kind:?}");
        assert_eq!(world.runs(&ws).await.last().unwrap().vcs_commit_sha, docs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_driven_workspace_runs_once_per_new_or_moved_matching_tag() {
    for kind in [Kind::Github, Kind::Gitlab] {
        let world = World::new().await;
        let first = world.sim.create_repo(kind, "acme/app", &[("main.tf", "")]);
        world.sim.set_tag(kind, "acme/app", "v1.0.0", &first);
        world.sim.set_tag(kind, "acme/app", "v1.1.0", &first);
        let ws = world.workspace("release", kind, "acme/app", "main").await;
        {
            let mut conn = world.db.connection().await;
            diesel::update(workspaces::table.find(&ws))
                .set(workspaces::vcs_tags_regex.eq(r"^v\d+\.\d+\.\d+$"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let ctx = world.context(&[]);
        // The first poll records the tags present: no runs, not even for the branch.
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (0, None),
            "{kind:?}: baseline"
        );
        assert!(world.row(&ws).await.vcs_tags_baselined_at.is_some());
        // Branch commits are not followed; a new matching tag is.
        let second = world
            .sim
            .commit(kind, "acme/app", "main", "next", &[("b.tf", "b")])
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (0, None),
            "{kind:?}: branch commit"
        );
        world.sim.set_tag(kind, "acme/app", "v2.0.0", &second);
        world.sim.set_tag(kind, "acme/app", "nightly", &second);
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: new tag"
        );
        let runs = world.runs(&ws).await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].trigger_reason, TriggerReason::Tag);
        assert_eq!(runs[0].vcs_tag.as_deref(), Some("v2.0.0"));
        assert_eq!(runs[0].vcs_commit_sha, second);
        assert!(!runs[0].plan_only);
        // Nothing new: one more poll makes no run and, on GitHub, counts no request.
        let before = world.sim.stats(kind);
        assert_eq!(polled(poll(&ctx, &ws).await), (0, None));
        let after = world.sim.stats(kind);
        if kind == Kind::Github {
            assert_eq!(after.counted, before.counted, "an idle tag list is a 304");
        }
        // A tag moved to another commit counts as new for that commit.
        let third = world
            .sim
            .commit(kind, "acme/app", "main", "fix", &[("c.tf", "c")])
            .await;
        world.sim.set_tag(kind, "acme/app", "v2.0.0", &third);
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: moved tag"
        );
        let runs = world.runs(&ws).await;
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[1].vcs_tag.as_deref(), runs[1].vcs_commit_sha.as_str()),
            (Some("v2.0.0"), third.as_str())
        );
        // Pull requests still get speculative plans.
        let feature = world
            .sim
            .commit(kind, "acme/app", "feature", "f", &[("f.tf", "f")])
            .await;
        world
            .sim
            .open_pull(kind, "acme/app", pull("feature", "Feature"))
            .await;
        assert_eq!(
            polled(poll(&ctx, &ws).await),
            (1, None),
            "{kind:?}: PR plan"
        );
        let plan = world.runs(&ws).await.pop().unwrap();
        assert!(plan.plan_only && plan.vcs_commit_sha == feature);
    }
}
