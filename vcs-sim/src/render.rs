//! Response bodies in the providers' own shapes (field names and types as GitHub's
//! REST API and GitLab's v4 API publish them).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::git::ChangedPath;
use crate::state::{Commit, Pull, PullState, Repo};

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn gh_user(base: &str, login: &str, id: i64, kind: &str) -> Value {
    json!({
        "login": login, "id": id, "node_id": format!("U_{id}"),
        "avatar_url": format!("{base}/avatars/{login}"), "gravatar_id": "",
        "url": format!("{base}/users/{login}"), "html_url": format!("{base}/{login}"),
        "followers_url": format!("{base}/users/{login}/followers"),
        "following_url": format!("{base}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{base}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{base}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{base}/users/{login}/subscriptions"),
        "organizations_url": format!("{base}/users/{login}/orgs"),
        "repos_url": format!("{base}/users/{login}/repos"),
        "events_url": format!("{base}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{base}/users/{login}/received_events"),
        "type": kind, "site_admin": false,
    })
}

pub fn github_repo(base: &str, repo: &Repo) -> Value {
    let full = repo.full_path();
    let url = format!("{base}/repos/{full}");
    let mut value = json!({
        "id": repo.id, "node_id": format!("R_{}", repo.id), "name": repo.name, "full_name": full,
        "private": true, "owner": gh_user(base, &repo.owner, repo.id * 10, "Organization"),
        "html_url": format!("{base}/{full}"), "description": null, "fork": false, "url": url,
        "default_branch": repo.default_branch, "visibility": "private",
        "created_at": ts(repo.created_at), "updated_at": ts(repo.created_at), "pushed_at": ts(Utc::now()),
        "git_url": format!("git://sim/{full}.git"), "ssh_url": format!("git@sim:{full}.git"),
        "clone_url": format!("{base}/{full}.git"), "svn_url": format!("{base}/{full}"),
        "homepage": null, "size": 0, "stargazers_count": 0, "watchers_count": 0, "language": "HCL",
        "has_issues": true, "has_projects": false, "has_downloads": true, "has_wiki": false, "has_pages": false,
        "has_discussions": false, "forks_count": 0, "mirror_url": null, "archived": false, "disabled": false,
        "open_issues_count": repo.pulls.iter().filter(|p| p.state == PullState::Open).count(),
        "license": null, "allow_forking": true, "is_template": false, "web_commit_signoff_required": false,
        "topics": [], "forks": 0, "open_issues": repo.pulls.iter().filter(|p| p.state == PullState::Open).count(),
        "watchers": 0, "network_count": 0, "subscribers_count": 0,
        "permissions": {"admin": false, "maintain": false, "push": false, "triage": false, "pull": true},
        "temp_clone_token": "",
    });
    for name in [
        "archive",
        "assignees",
        "blobs",
        "branches",
        "collaborators",
        "comments",
        "commits",
        "compare",
        "contents",
        "contributors",
        "deployments",
        "downloads",
        "events",
        "forks",
        "git_commits",
        "git_refs",
        "git_tags",
        "hooks",
        "issue_comment",
        "issue_events",
        "issues",
        "keys",
        "labels",
        "languages",
        "merges",
        "milestones",
        "notifications",
        "pulls",
        "releases",
        "stargazers",
        "statuses",
        "subscribers",
        "subscription",
        "tags",
        "teams",
        "trees",
    ] {
        value[format!("{name}_url")] = json!(format!("{url}/{name}"));
    }
    value
}

/// A commit as GitHub's REST API renders it (the `commit` schema).
pub fn github_commit(base: &str, repo: &Repo, commit: &Commit) -> Value {
    let url = format!("{base}/repos/{}", repo.full_path());
    let signature = json!({"name": "Terrapod Simulator", "email": "sim@terrapod.invalid", "date": ts(commit.at)});
    json!({
        "sha": commit.sha, "node_id": format!("C_{}", commit.sha),
        "commit": {
            "author": signature, "committer": signature, "message": commit.message,
            "tree": {"sha": commit.sha, "url": format!("{url}/git/trees/{}", commit.sha)},
            "url": format!("{url}/git/commits/{}", commit.sha), "comment_count": 0,
            "verification": {"verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null},
        },
        "url": format!("{url}/commits/{}", commit.sha),
        "html_url": format!("{base}/{}/commit/{}", repo.full_path(), commit.sha),
        "comments_url": format!("{url}/commits/{}/comments", commit.sha),
        "author": gh_user(base, "octocat", 1, "User"), "committer": null,
        "parents": commit.parent.iter().map(|p| json!({"sha": p, "url": format!("{url}/commits/{p}"), "html_url": format!("{base}/{}/commit/{p}", repo.full_path())})).collect::<Vec<_>>(),
    })
}

pub fn github_branch(base: &str, repo: &Repo, branch: &str, commit: &Commit) -> Value {
    let url = format!("{base}/repos/{}", repo.full_path());
    json!({
        "name": branch,
        "commit": github_commit(base, repo, commit),
        "_links": {"self": format!("{url}/branches/{branch}"), "html": format!("{base}/{}/tree/{branch}", repo.full_path())},
        "protected": false,
        "protection": {"enabled": false, "required_status_checks": {"enforcement_level": "off", "contexts": [], "checks": []}},
        "protection_url": format!("{url}/branches/{branch}/protection"),
    })
}

fn github_pull_ref(base: &str, repo: &Repo, branch: &str, sha: &str) -> Value {
    json!({
        "label": format!("{}:{branch}", repo.owner), "ref": branch, "sha": sha,
        "user": gh_user(base, &repo.owner, repo.id * 10, "Organization"),
        "repo": github_repo(base, repo),
    })
}

pub fn github_pull(
    base: &str,
    repo: &Repo,
    head_repo: &Repo,
    pull: &Pull,
    head_sha: &str,
) -> Value {
    let url = format!("{base}/repos/{}/pulls/{}", repo.full_path(), pull.number);
    let base_sha = repo
        .branches
        .get(&pull.base_branch)
        .cloned()
        .unwrap_or_default();
    let html = format!("{base}/{}/pull/{}", repo.full_path(), pull.number);
    json!({
        "url": url, "id": pull.id, "node_id": format!("PR_{}", pull.id), "html_url": html,
        "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
        "issue_url": format!("{base}/repos/{}/issues/{}", repo.full_path(), pull.number),
        "commits_url": format!("{url}/commits"), "review_comments_url": format!("{url}/comments"),
        "review_comment_url": format!("{base}/repos/{}/pulls/comments{{/number}}", repo.full_path()),
        "comments_url": format!("{base}/repos/{}/issues/{}/comments", repo.full_path(), pull.number),
        "statuses_url": format!("{base}/repos/{}/statuses/{head_sha}", repo.full_path()),
        "number": pull.number, "state": if pull.state == PullState::Open { "open" } else { "closed" },
        "locked": false, "title": pull.title,
        "user": gh_user(base, "octocat", 1, "User"), "body": null, "labels": [], "milestone": null,
        "active_lock_reason": null, "created_at": ts(pull.created_at), "updated_at": ts(pull.updated_at),
        "closed_at": null, "merged_at": null, "merge_commit_sha": null, "assignee": null, "assignees": [],
        "requested_reviewers": [], "requested_teams": [],
        "head": github_pull_ref(base, head_repo, &pull.head_branch, head_sha),
        "base": github_pull_ref(base, repo, &pull.base_branch, &base_sha),
        "_links": {
            "self": {"href": url}, "html": {"href": html},
            "issue": {"href": format!("{base}/repos/{}/issues/{}", repo.full_path(), pull.number)},
            "comments": {"href": format!("{base}/repos/{}/issues/{}/comments", repo.full_path(), pull.number)},
            "review_comments": {"href": format!("{url}/comments")},
            "review_comment": {"href": format!("{base}/repos/{}/pulls/comments{{/number}}", repo.full_path())},
            "commits": {"href": format!("{url}/commits")},
            "statuses": {"href": format!("{base}/repos/{}/statuses/{head_sha}", repo.full_path())},
        },
        "author_association": "MEMBER", "auto_merge": null, "draft": pull.draft,
    })
}

pub fn gitlab_project(base: &str, repo: &Repo) -> Value {
    let full = repo.full_path();
    json!({
        "id": repo.id, "description": null, "name": repo.name, "name_with_namespace": full.replace('/', " / "),
        "path": repo.name, "path_with_namespace": full, "created_at": ts(repo.created_at),
        "default_branch": if repo.branches.is_empty() { Value::Null } else { json!(repo.default_branch) },
        "tag_list": [], "topics": [],
        "ssh_url_to_repo": format!("git@sim:{full}.git"), "http_url_to_repo": format!("{base}/{full}.git"),
        "web_url": format!("{base}/{full}"), "readme_url": null, "avatar_url": null,
        "forks_count": 0, "star_count": 0, "last_activity_at": ts(Utc::now()),
        "namespace": {"id": repo.id * 10, "name": repo.owner, "path": repo.owner, "kind": "group",
            "full_path": repo.owner, "parent_id": null, "avatar_url": null, "web_url": format!("{base}/groups/{}", repo.owner)},
        "visibility": "private", "archived": false, "empty_repo": repo.branches.is_empty(),
        "open_issues_count": 0, "merge_requests_enabled": true, "issues_enabled": true,
    })
}

pub fn gitlab_commit(base: &str, repo: &Repo, commit: &Commit) -> Value {
    json!({
        "id": commit.sha, "short_id": &commit.sha[..8], "created_at": ts(commit.at),
        "parent_ids": commit.parent.iter().collect::<Vec<_>>(),
        "title": commit.message.lines().next().unwrap_or_default(), "message": commit.message,
        "author_name": "Terrapod Simulator", "author_email": "sim@terrapod.invalid", "authored_date": ts(commit.at),
        "committer_name": "Terrapod Simulator", "committer_email": "sim@terrapod.invalid", "committed_date": ts(commit.at),
        "trailers": {}, "extended_trailers": {},
        "web_url": format!("{base}/{}/-/commit/{}", repo.full_path(), commit.sha),
    })
}

pub fn gitlab_branch(base: &str, repo: &Repo, branch: &str, commit: &Commit) -> Value {
    json!({
        "name": branch, "commit": gitlab_commit(base, repo, commit), "merged": false, "protected": false,
        "developers_can_push": false, "developers_can_merge": false, "can_push": false,
        "default": branch == repo.default_branch,
        "web_url": format!("{base}/{}/-/tree/{branch}", repo.full_path()),
    })
}

pub fn gitlab_merge_request(
    base: &str,
    repo: &Repo,
    head_repo: &Repo,
    pull: &Pull,
    head_sha: &str,
) -> Value {
    let author = json!({"id": 1, "username": "octocat", "name": "Octo Cat", "state": "active", "locked": false,
        "avatar_url": null, "web_url": format!("{base}/octocat")});
    json!({
        "id": pull.id, "iid": pull.number, "project_id": repo.id, "title": pull.title, "description": null,
        "state": match pull.state { PullState::Open => "opened", PullState::Closed => "closed", PullState::Merged => "merged" },
        "created_at": ts(pull.created_at), "updated_at": ts(pull.updated_at),
        "merged_by": null, "merge_user": null, "merged_at": null, "closed_by": null, "closed_at": null,
        "target_branch": pull.base_branch, "source_branch": pull.head_branch,
        "user_notes_count": 0, "upvotes": 0, "downvotes": 0, "author": author, "assignees": [], "assignee": null,
        "reviewers": [], "source_project_id": head_repo.id, "target_project_id": repo.id, "labels": [],
        "draft": pull.draft, "work_in_progress": pull.draft, "milestone": null,
        "merge_when_pipeline_succeeds": false, "merge_status": "can_be_merged", "detailed_merge_status": "mergeable",
        "sha": head_sha, "merge_commit_sha": null, "squash_commit_sha": null,
        "discussion_locked": null, "should_remove_source_branch": null, "force_remove_source_branch": false,
        "prepared_at": ts(pull.created_at), "reference": format!("!{}", pull.number),
        "references": {"short": format!("!{}", pull.number), "relative": format!("!{}", pull.number), "full": format!("{}!{}", repo.full_path(), pull.number)},
        "web_url": format!("{base}/{}/-/merge_requests/{}", repo.full_path(), pull.number),
        "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": null, "human_total_time_spent": null},
        "squash": false, "squash_on_merge": false, "task_completion_status": {"count": 0, "completed_count": 0},
        "has_conflicts": false, "blocking_discussions_resolved": true, "approvals_before_merge": null,
    })
}

pub fn gitlab_user(base: &str) -> Value {
    json!({"id": 1, "username": "terrapod-bot", "name": "Terrapod Bot", "state": "active", "locked": false,
        "avatar_url": null, "web_url": format!("{base}/terrapod-bot"), "created_at": "2026-01-01T00:00:00Z",
        "bot": true, "public_email": null, "bio": "", "location": "", "organization": "", "job_title": "",
        "linkedin": "", "skype": "", "twitter": "", "website_url": "", "followers": 0, "following": 0})
}

/// A changed file as GitHub lists it in a comparison or a pull request (`diff-entry`).
pub fn github_diff_entry(base: &str, repo: &Repo, head_sha: &str, change: &ChangedPath) -> Value {
    let status = match change.kind {
        'A' => "added",
        'D' => "removed",
        'R' => "renamed",
        'C' => "copied",
        'M' => "modified",
        _ => "changed",
    };
    let mut entry = json!({
        "sha": head_sha, "filename": change.path, "status": status,
        "additions": 0, "deletions": 0, "changes": 0,
        "blob_url": format!("{base}/{}/blob/{head_sha}/{}", repo.full_path(), change.path),
        "raw_url": format!("{base}/{}/raw/{head_sha}/{}", repo.full_path(), change.path),
        "contents_url": format!("{base}/repos/{}/contents/{}?ref={head_sha}", repo.full_path(), change.path),
    });
    if let Some(previous) = &change.previous {
        entry["previous_filename"] = json!(previous);
    }
    entry
}

/// A changed file as GitLab lists it in a comparison or a merge request's diffs.
pub fn gitlab_diff(change: &ChangedPath) -> Value {
    json!({
        "old_path": change.previous.as_deref().unwrap_or(&change.path),
        "new_path": change.path,
        "a_mode": "100644", "b_mode": "100644", "diff": "",
        "new_file": change.kind == 'A', "renamed_file": change.kind == 'R',
        "deleted_file": change.kind == 'D', "generated_file": false,
    })
}

/// A tag as GitHub lists it (`tag`).
pub fn github_tag(base: &str, repo: &Repo, name: &str, sha: &str) -> Value {
    let url = format!("{base}/repos/{}", repo.full_path());
    json!({
        "name": name,
        "commit": {"sha": sha, "url": format!("{url}/commits/{sha}")},
        "zipball_url": format!("{url}/zipball/refs/tags/{name}"),
        "tarball_url": format!("{url}/tarball/refs/tags/{name}"),
        "node_id": format!("REF_{name}"),
    })
}

/// A tag as GitLab lists it (lightweight: no message, no release).
pub fn gitlab_tag(base: &str, repo: &Repo, name: &str, commit: &Commit) -> Value {
    json!({
        "name": name, "message": "", "target": commit.sha,
        "commit": gitlab_commit(base, repo, commit),
        "release": null, "protected": false, "created_at": null,
    })
}
