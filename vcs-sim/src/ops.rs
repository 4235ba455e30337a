//! What the admin API (and in-process tests) can do to the simulated world. Each
//! operation returns the webhook events it caused; [`crate::webhooks`] delivers them.

use std::collections::HashSet;

use chrono::Utc;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::git::FileChange;
use crate::state::{
    key, Fault, Installation, Kind, Pull, PullState, Sim, SimError, UsageReport, WebhookTarget,
};

/// A webhook to send: event name and payload, per provider conventions.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub name: &'static str,
    pub payload: Value,
}

/// A file's content, or `{content, mode}` for executables and symlinks, or `null` to delete.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FileSpec {
    Text(String),
    WithMode { content: String, mode: String },
}

pub fn changes(files: &[(String, Option<FileSpec>)]) -> Vec<FileChange> {
    files
        .iter()
        .map(|(path, spec)| match spec {
            None => FileChange {
                path: path.clone(),
                content: None,
                mode: "100644".into(),
            },
            Some(FileSpec::Text(content)) => FileChange {
                path: path.clone(),
                content: Some(content.clone().into_bytes()),
                mode: "100644".into(),
            },
            Some(FileSpec::WithMode { content, mode }) => FileChange {
                path: path.clone(),
                content: Some(content.clone().into_bytes()),
                mode: mode.clone(),
            },
        })
        .collect()
}

pub fn add_github_app(sim: &mut Sim, app_id: i64, public_key_pem: &str) -> Result<(), SimError> {
    let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
        .map_err(|err| SimError::Invalid(format!("public key: {err}")))?;
    sim.github_apps.insert(app_id, key);
    Ok(())
}

pub fn add_installation(
    sim: &mut Sim,
    id: i64,
    app_id: i64,
    account: &str,
    repos: Option<Vec<String>>,
) {
    sim.installations.insert(
        id,
        Installation {
            id,
            app_id,
            account: account.to_owned(),
            repos: repos.map(|r| {
                r.into_iter()
                    .map(|p| p.to_ascii_lowercase())
                    .collect::<HashSet<_>>()
            }),
        },
    );
}

pub fn add_gitlab_token(sim: &mut Sim, token: &str, projects: Option<Vec<String>>) {
    sim.gitlab_tokens.insert(
        token.to_owned(),
        projects.map(|p| p.into_iter().map(|x| x.to_ascii_lowercase()).collect()),
    );
}

pub fn revoke_github_tokens(sim: &mut Sim) -> usize {
    let count = sim.github_tokens.len();
    sim.github_tokens.clear();
    count
}

pub fn set_rate_limit(sim: &mut Sim, kind: Kind, remaining: u64, reset_in_seconds: i64) {
    let rate = match kind {
        Kind::Github => &mut sim.github_rate,
        Kind::Gitlab => &mut sim.gitlab_rate,
    };
    // Raising `remaining` above the limit raises the limit (benchmarks need room).
    rate.limit = rate.limit.max(remaining);
    rate.remaining = remaining;
    rate.reset_at = Utc::now() + chrono::Duration::seconds(reset_in_seconds);
}

/// An installation's traffic so far, judged over the secondary limits' window.
pub fn installation_usage(sim: &Sim, installation: i64) -> UsageReport {
    let window =
        std::time::Duration::from_secs(sim.secondary_limits.unwrap_or_default().window_seconds);
    sim.usage
        .get(&installation)
        .map(|usage| usage.report(window))
        .unwrap_or_default()
}

pub fn inject_fault(sim: &mut Sim, fault: Fault) {
    sim.faults.push(fault);
}

pub fn clear_faults(sim: &mut Sim) {
    sim.faults.clear();
}

pub fn add_webhook(sim: &mut Sim, target: WebhookTarget) {
    sim.webhooks.push(target);
}

/// Creates a repository, with a first commit on the default branch when `files` is
/// not empty. Returns (id, head SHA).
pub fn create_repo(
    sim: &mut Sim,
    kind: Kind,
    path: &str,
    default_branch: &str,
    files: &[(String, Option<FileSpec>)],
) -> Result<(i64, Option<String>), SimError> {
    let repo = sim.create_repo(kind, path, default_branch)?;
    let id = repo.id;
    if files.is_empty() {
        return Ok((id, None));
    }
    let (sha, _) = repo.commit_on(default_branch, None, "Initial commit", &changes(files))?;
    Ok((id, Some(sha)))
}

/// Commits on `branch` (created from `from` or the default branch when missing).
pub fn commit(
    sim: &mut Sim,
    kind: Kind,
    path: &str,
    branch: &str,
    message: &str,
    files: &[(String, Option<FileSpec>)],
) -> Result<(String, Vec<Event>), SimError> {
    let repo = sim.repo_mut(kind, path)?;
    let default = repo.default_branch.clone();
    let from = if repo.branches.is_empty() {
        None
    } else {
        Some(default.as_str())
    };
    let (sha, before) = repo.commit_on(branch, from, message, &changes(files))?;
    let mut events = vec![push_event(
        sim,
        kind,
        path,
        branch,
        before.as_deref(),
        &sha,
        message,
    )];
    // Pull requests whose head is this branch (in this repo or a fork) got a new head.
    let full = sim.repo(kind, path)?.full_path();
    let synchronized: Vec<(String, i64)> = sim
        .repos
        .values()
        .filter(|r| r.kind == kind)
        .flat_map(|r| {
            r.pulls
                .iter()
                .filter(|p| {
                    p.state == PullState::Open
                        && p.head_branch == branch
                        && p.head_repo.eq_ignore_ascii_case(&full)
                })
                .map(move |p| (r.full_path(), p.number))
        })
        .collect();
    for (base_repo, number) in synchronized {
        events.push(pull_event(
            sim,
            kind,
            &base_repo,
            number,
            "synchronize",
            before.as_deref(),
        )?);
    }
    Ok((sha, events))
}

#[derive(Deserialize)]
pub struct NewPull {
    pub head: String,
    pub base: Option<String>,
    pub title: String,
    #[serde(default)]
    pub draft: bool,
    /// The fork holding `head`; this repository when absent.
    #[serde(default)]
    pub head_repo: Option<String>,
}

pub fn open_pull(
    sim: &mut Sim,
    kind: Kind,
    path: &str,
    new: NewPull,
) -> Result<(i64, Vec<Event>), SimError> {
    let id = sim.next_id();
    let head_repo = match &new.head_repo {
        Some(fork) => sim.repo(kind, fork)?.full_path(),
        None => sim.repo(kind, path)?.full_path(),
    };
    if !sim.repo(kind, &head_repo)?.branches.contains_key(&new.head) {
        return Err(SimError::NotFound(format!(
            "no branch {} in {head_repo}",
            new.head
        )));
    }
    let repo = sim.repo_mut(kind, path)?;
    let number = repo.pulls.iter().map(|p| p.number).max().unwrap_or(0) + 1;
    let base = new.base.unwrap_or_else(|| repo.default_branch.clone());
    repo.pulls.push(Pull {
        number,
        id,
        title: new.title,
        head_repo,
        head_branch: new.head,
        base_branch: base,
        state: PullState::Open,
        draft: new.draft,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    });
    let event = pull_event(sim, kind, path, number, "opened", None)?;
    Ok((number, vec![event]))
}

#[derive(Deserialize, Default)]
pub struct PullUpdate {
    pub state: Option<PullState>,
    pub title: Option<String>,
    pub draft: Option<bool>,
}

pub fn update_pull(
    sim: &mut Sim,
    kind: Kind,
    path: &str,
    number: i64,
    update: PullUpdate,
) -> Result<Vec<Event>, SimError> {
    let repo = sim.repo_mut(kind, path)?;
    let pull = repo
        .pulls
        .iter_mut()
        .find(|p| p.number == number)
        .ok_or_else(|| SimError::NotFound(format!("no pull request {number}")))?;
    let action = match update.state {
        Some(PullState::Open) if pull.state != PullState::Open => "reopened",
        Some(PullState::Closed | PullState::Merged) if pull.state == PullState::Open => "closed",
        _ => "edited",
    };
    if let Some(state) = update.state {
        pull.state = state;
    }
    if let Some(title) = update.title {
        pull.title = title;
    }
    if let Some(draft) = update.draft {
        pull.draft = draft;
    }
    pull.updated_at = Utc::now();
    Ok(vec![pull_event(sim, kind, path, number, action, None)?])
}

pub fn override_archive(
    sim: &mut Sim,
    kind: Kind,
    path: &str,
    sha: &str,
    bytes: Vec<u8>,
) -> Result<(), SimError> {
    sim.repo_mut(kind, path)?
        .archive_overrides
        .insert(sha.to_owned(), bytes);
    Ok(())
}

fn repository_payload(sim: &Sim, kind: Kind, path: &str) -> Result<Value, SimError> {
    let repo = sim.repo(kind, path)?;
    Ok(match kind {
        Kind::Github => json!({
            "id": repo.id, "name": repo.name, "full_name": repo.full_path(), "private": true,
            "owner": {"login": repo.owner, "id": repo.id * 10, "type": "Organization"},
            "default_branch": repo.default_branch,
        }),
        Kind::Gitlab => json!({
            "id": repo.id, "name": repo.name, "path_with_namespace": repo.full_path(),
            "default_branch": repo.default_branch, "web_url": format!("https://gitlab.example/{}", repo.full_path()),
        }),
    })
}

/// The installation a GitHub webhook names: the first that can see the repository.
fn installation_for(sim: &Sim, path: &str) -> Option<i64> {
    let full = path.to_ascii_lowercase();
    let mut ids: Vec<&Installation> = sim
        .installations
        .values()
        .filter(|i| i.repos.as_ref().is_none_or(|repos| repos.contains(&full)))
        .collect();
    ids.sort_by_key(|i| i.id);
    ids.first().map(|i| i.id)
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

fn push_event(
    sim: &Sim,
    kind: Kind,
    path: &str,
    branch: &str,
    before: Option<&str>,
    after: &str,
    message: &str,
) -> Event {
    let repository = repository_payload(sim, kind, path).unwrap_or(Value::Null);
    let before = before.unwrap_or(ZERO_SHA);
    match kind {
        Kind::Github => Event {
            kind,
            name: "push",
            payload: json!({
                "ref": format!("refs/heads/{branch}"), "before": before, "after": after,
                "created": before == ZERO_SHA, "deleted": false, "forced": false,
                "repository": repository,
                "installation": installation_for(sim, path).map(|id| json!({"id": id})),
                "head_commit": {"id": after, "message": message, "timestamp": Utc::now().to_rfc3339()},
                "commits": [{"id": after, "message": message}],
                "pusher": {"name": "octocat"},
            }),
        },
        Kind::Gitlab => Event {
            kind,
            name: "Push Hook",
            payload: json!({
                "object_kind": "push", "event_name": "push", "ref": format!("refs/heads/{branch}"),
                "before": before, "after": after, "checkout_sha": after,
                "project_id": repository["id"], "project": repository,
                "commits": [{"id": after, "message": message, "title": message.lines().next().unwrap_or_default()}],
                "total_commits_count": 1,
            }),
        },
    }
}

fn pull_event(
    sim: &Sim,
    kind: Kind,
    path: &str,
    number: i64,
    action: &str,
    before: Option<&str>,
) -> Result<Event, SimError> {
    let repo = sim.repo(kind, path)?;
    let pull = repo
        .pulls
        .iter()
        .find(|p| p.number == number)
        .ok_or_else(|| SimError::NotFound(format!("no pull request {number}")))?;
    let head_repo = sim.repo(kind, &pull.head_repo)?;
    let head_sha = head_repo
        .branches
        .get(&pull.head_branch)
        .cloned()
        .unwrap_or_default();
    let repository = repository_payload(sim, kind, path)?;
    Ok(match kind {
        Kind::Github => Event {
            kind,
            name: "pull_request",
            payload: json!({
                "action": action, "number": number, "before": before,
                "pull_request": {
                    "number": number, "title": pull.title, "state": if pull.state == PullState::Open { "open" } else { "closed" },
                    "draft": pull.draft,
                    "head": {"ref": pull.head_branch, "sha": head_sha, "repo": {"full_name": head_repo.full_path()}},
                    "base": {"ref": pull.base_branch, "repo": {"full_name": repo.full_path()}},
                },
                "repository": repository,
                "installation": installation_for(sim, path).map(|id| json!({"id": id})),
            }),
        },
        Kind::Gitlab => {
            let gitlab_action = match action {
                "opened" => "open",
                "synchronize" => "update",
                "closed" => "close",
                "reopened" => "reopen",
                _ => "update",
            };
            Event {
                kind,
                name: "Merge Request Hook",
                payload: json!({
                    "object_kind": "merge_request", "event_type": "merge_request",
                    "project": repository,
                    "object_attributes": {
                        "iid": number, "title": pull.title, "action": gitlab_action,
                        "state": match pull.state { PullState::Open => "opened", PullState::Closed => "closed", PullState::Merged => "merged" },
                        "source_branch": pull.head_branch, "target_branch": pull.base_branch,
                        "source_project_id": head_repo.id, "target_project_id": repo.id,
                        "last_commit": {"id": head_sha}, "oldrev": before,
                    },
                }),
            }
        }
    })
}

pub fn github_repo_exists(sim: &Sim, path: &str) -> bool {
    sim.repos.contains_key(&key(Kind::Github, path))
}
