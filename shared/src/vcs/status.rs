//! A run's state on its commit (SPEC section 9): a GitHub check run or a GitLab commit
//! status named `terrapod/<organization>/<workspace>`.

use serde_json::{json, Value};

use super::{ProviderClient, RepoUrl, VcsError};
use crate::domain::{CommitSha, Provider, RunStatus};

/// What to say about one run on its commit.
pub struct CommitReport<'a> {
    pub repo: &'a RepoUrl,
    pub sha: &'a CommitSha,
    /// The branch (or tag) the run is for; GitLab files the status under it.
    pub reference: &'a str,
    /// `terrapod/<organization>/<workspace>`.
    pub name: &'a str,
    pub run_id: &'a str,
    /// `{TERRAPOD_EXTERNAL_URL}/app/{org}/{workspace}/runs/{run-id}`.
    pub details_url: &'a str,
    pub status: RunStatus,
}

/// The check run's `status` and `conclusion` for a run status.
pub fn check_run_state(status: RunStatus) -> (&'static str, Option<&'static str>) {
    use RunStatus::*;
    match status {
        Pending | PlanQueued => ("queued", None),
        Planning | Confirmed | ApplyQueued | Applying => ("in_progress", None),
        // A plan awaiting confirmation succeeded so far; its summary says what waits.
        Planned | PlannedAndFinished | Applied => ("completed", Some("success")),
        Errored => ("completed", Some("failure")),
        Canceled | Discarded => ("completed", Some("cancelled")),
    }
}

/// The GitLab commit status `state` for a run status.
pub fn commit_status_state(status: RunStatus) -> &'static str {
    use RunStatus::*;
    match status {
        Pending | PlanQueued => "pending",
        Planning | Confirmed | ApplyQueued | Applying => "running",
        Planned | PlannedAndFinished | Applied => "success",
        Errored => "failed",
        Canceled | Discarded => "canceled",
    }
}

/// One line for people: what the run is doing.
pub fn title(status: RunStatus) -> &'static str {
    use RunStatus::*;
    match status {
        Pending => "Run pending",
        PlanQueued => "Plan queued",
        Planning => "Planning",
        Planned => "Planned: awaiting confirmation",
        Confirmed => "Apply confirmed",
        ApplyQueued => "Apply queued",
        Applying => "Applying",
        Applied => "Applied",
        PlannedAndFinished => "Planned and finished",
        Discarded => "Run discarded",
        Canceled => "Run canceled",
        Errored => "Run errored",
    }
}

/// "check run terrapod/default/net set to completed (success)", for the event log.
pub fn describe(provider: Provider, name: &str, status: RunStatus) -> String {
    let state = match provider {
        Provider::GitHub => match check_run_state(status) {
            (state, Some(conclusion)) => format!("{state} ({conclusion})"),
            (state, None) => state.to_owned(),
        },
        Provider::GitLab => commit_status_state(status).to_owned(),
    };
    let what = match provider {
        Provider::GitHub => "check run",
        Provider::GitLab => "commit status",
    };
    format!("{what} {name} set to {state}")
}

fn summary(report: &CommitReport<'_>) -> String {
    let mut summary = format!("Terraform run {}: {}.", report.run_id, title(report.status));
    // The executor's message is not copied here: it may quote Terraform's output, and
    // whoever sees the repository sees the commit's checks. The run's link leads to it.
    if report.status == RunStatus::Planned {
        summary.push_str(" Apply it to continue, or discard it.");
    }
    summary
}

/// The body of a check run update (and, with name, SHA and external id, of a create).
pub fn check_run_body(report: &CommitReport<'_>) -> Value {
    let (status, conclusion) = check_run_state(report.status);
    let mut body = json!({
        "status": status,
        "details_url": report.details_url,
        "external_id": report.run_id,
        "output": {"title": title(report.status), "summary": summary(report)},
    });
    if let Some(conclusion) = conclusion {
        body["conclusion"] = json!(conclusion);
        body["completed_at"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    body
}

/// The body of a GitLab commit status.
pub fn commit_status_body(report: &CommitReport<'_>) -> Value {
    // GitLab keeps 255 characters of a description.
    let description: String = summary(report).chars().take(255).collect();
    json!({
        "state": commit_status_state(report.status),
        "name": report.name,
        "target_url": report.details_url,
        "description": description,
        "ref": report.reference,
    })
}

/// Puts the run's state on its commit. On GitHub, `check_run_id` is the run's check
/// run if one is known; otherwise one made by a create whose answer was lost is looked
/// for before a new one is created, so a run never gets two. Returns the check run's
/// id (GitHub) or `None` (GitLab).
pub async fn report(
    client: &ProviderClient,
    report: &CommitReport<'_>,
    check_run_id: Option<i64>,
) -> Result<Option<i64>, VcsError> {
    match client {
        ProviderClient::GitHub(github) => {
            let body = check_run_body(report);
            let known = match check_run_id {
                Some(id) => Some(id),
                None => {
                    github
                        .find_check_run(report.repo, report.sha, report.name, report.run_id)
                        .await?
                }
            };
            if let Some(id) = known {
                match github.update_check_run(report.repo, id, &body).await {
                    // Deleted on GitHub's side: a new one is made below.
                    Err(VcsError::NotFound { .. }) => {}
                    other => return other.map(|()| Some(id)),
                }
            }
            let mut create = body;
            create["name"] = json!(report.name);
            create["head_sha"] = json!(report.sha.as_str());
            github
                .create_check_run(report.repo, &create)
                .await
                .map(Some)
        }
        ProviderClient::GitLab(gitlab) => gitlab
            .set_commit_status(report.repo, report.sha, &commit_status_body(report))
            .await
            .map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_as_the_spec_says() {
        assert_eq!(check_run_state(RunStatus::Pending), ("queued", None));
        assert_eq!(check_run_state(RunStatus::Planning), ("in_progress", None));
        assert_eq!(
            check_run_state(RunStatus::PlannedAndFinished),
            ("completed", Some("success"))
        );
        assert_eq!(
            check_run_state(RunStatus::Planned),
            ("completed", Some("success"))
        );
        assert_eq!(
            check_run_state(RunStatus::Errored),
            ("completed", Some("failure"))
        );
        assert_eq!(
            check_run_state(RunStatus::Discarded),
            ("completed", Some("cancelled"))
        );
        assert_eq!(commit_status_state(RunStatus::Applying), "running");
        assert_eq!(commit_status_state(RunStatus::Errored), "failed");
        assert_eq!(commit_status_state(RunStatus::Canceled), "canceled");
    }

    #[test]
    fn bodies_name_the_run_and_carry_the_executors_message() {
        let repo = RepoUrl::parse(Provider::GitLab, "https://gitlab.com/group/project").unwrap();
        let sha = CommitSha::parse(&"a".repeat(40)).unwrap();
        let report = CommitReport {
            repo: &repo,
            sha: &sha,
            reference: "main",
            name: "terrapod/default/net",
            run_id: "run-x",
            details_url: "http://localhost:8080/app/default/net/runs/run-x",
            status: RunStatus::Planned,
        };
        let github = check_run_body(&report);
        assert_eq!(github["conclusion"], "success");
        assert_eq!(github["external_id"], "run-x");
        let summary = github["output"]["summary"].as_str().unwrap();
        assert!(summary.contains("awaiting confirmation"), "{summary}");
        let gitlab = commit_status_body(&report);
        assert_eq!(gitlab["state"], "success");
        assert_eq!(gitlab["ref"], "main");
        assert!(gitlab["description"].as_str().unwrap().chars().count() <= 255);
    }
}
