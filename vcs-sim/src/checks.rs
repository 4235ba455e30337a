//! Check runs (GitHub Checks API) and commit statuses (GitLab), as the real services
//! answer them: GitHub's create (201), update (200), one and list-for-a-ref (with
//! `check_name`) and its 422s; GitLab's `POST /projects/:id/statuses/:sha` with its
//! refusal to set a status to the state it has, and the list of a commit's statuses.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::server::{conditional_json, github_error, gitlab_error, param, query};
use crate::state::{key, Kind, Sim};

#[derive(Clone, Debug)]
pub struct CheckRun {
    pub id: i64,
    /// `owner/name`, lower-case.
    pub repo: String,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub external_id: Option<String>,
    pub details_url: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Updates (PATCHes) received.
    pub updates: u32,
}

#[derive(Clone, Debug)]
pub struct CommitStatus {
    pub id: i64,
    /// `group/project`, lower-case.
    pub project: String,
    pub sha: String,
    pub reference: Option<String>,
    pub name: String,
    pub status: String,
    pub target_url: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Replaced by a newer status of the same name (GitLab's "retried").
    pub retried: bool,
}

const CHECK_STATUSES: &[&str] = &["queued", "in_progress", "completed"];
const CONCLUSIONS: &[&str] = &[
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
];
const GITLAB_STATES: &[&str] = &["pending", "running", "success", "failed", "canceled"];

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn invalid(message: &str) -> HttpResponse {
    github_error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

pub fn render_check_run(base: &str, run: &CheckRun) -> Value {
    let url = format!("{base}/repos/{}/check-runs/{}", run.repo, run.id);
    json!({
        "id": run.id, "node_id": format!("CR_{}", run.id), "head_sha": run.head_sha,
        "external_id": run.external_id, "url": url,
        "html_url": format!("{base}/{}/runs/{}", run.repo, run.id),
        "details_url": run.details_url, "status": run.status, "conclusion": run.conclusion,
        "started_at": ts(run.started_at), "completed_at": run.completed_at.map(ts),
        "output": {"title": run.title, "summary": run.summary, "text": null,
            "annotations_count": 0, "annotations_url": format!("{url}/annotations")},
        "name": run.name, "check_suite": {"id": run.id * 10}, "app": null, "pull_requests": [],
    })
}

/// Applies `status`, `conclusion` and `completed_at` as GitHub does: a conclusion
/// completes the run, and a completed run needs one.
/// Refusals are GitHub's 422 messages.
fn apply_state(run: &mut CheckRun, body: &Value) -> Result<(), String> {
    let status = body["status"].as_str();
    let conclusion = body["conclusion"].as_str();
    if let Some(status) = status.filter(|s| !CHECK_STATUSES.contains(s)) {
        return Err(format!(
            "Invalid request.\n\n{status} is not a member of [\"queued\", \"in_progress\", \"completed\"]."
        ));
    }
    if let Some(conclusion) = conclusion.filter(|c| !CONCLUSIONS.contains(c)) {
        return Err(format!(
            "Invalid request.\n\n{conclusion} is not a valid conclusion."
        ));
    }
    match (status, conclusion) {
        (Some("completed"), None) if run.conclusion.is_none() => {
            return Err(
                "Invalid request.\n\nNo subschema in \"anyOf\" matched.\n\"conclusion\" wasn't supplied."
                    .into(),
            )
        }
        (_, Some(conclusion)) => {
            run.status = "completed".into();
            run.conclusion = Some(conclusion.into());
            run.completed_at = Some(
                body["completed_at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
            );
        }
        (Some(status), None) => {
            run.status = status.into();
            if status != "completed" {
                run.conclusion = None;
                run.completed_at = None;
            }
        }
        (None, None) => {}
    }
    for (field, target) in [
        ("external_id", &mut run.external_id),
        ("details_url", &mut run.details_url),
    ] {
        if let Some(value) = body[field].as_str() {
            *target = Some(value.to_owned());
        }
    }
    if let Some(title) = body["output"]["title"].as_str() {
        run.title = Some(title.to_owned());
    }
    if let Some(summary) = body["output"]["summary"].as_str() {
        run.summary = Some(summary.to_owned());
    }
    Ok(())
}

/// `POST /repos/{o}/{r}/check-runs`, `PATCH /repos/{o}/{r}/check-runs/{id}`,
/// `GET /repos/{o}/{r}/check-runs/{id}`, `GET /repos/{o}/{r}/commits/{ref}/check-runs`.
pub fn github(
    req: &HttpRequest,
    sim: &mut Sim,
    full: &str,
    base: &str,
    rest: &[&str],
    body: &[u8],
) -> HttpResponse {
    let repo_key = full.to_ascii_lowercase();
    let not_found = || github_error(StatusCode::NOT_FOUND, "Not Found");
    let method = req.method();
    let parsed = || {
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(Value::is_object)
    };
    match (method, rest) {
        (&Method::POST, ["check-runs"]) => {
            let Some(body) = parsed() else {
                return github_error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
            };
            let (Some(name), Some(head_sha)) = (body["name"].as_str(), body["head_sha"].as_str())
            else {
                return invalid("Invalid request.\n\n\"name\", \"head_sha\" weren't supplied.");
            };
            let known = sim
                .repos
                .get(&key(Kind::Github, full))
                .is_some_and(|repo| repo.commits.contains_key(head_sha));
            if !known {
                return invalid(&format!("No commit found for SHA: {head_sha}"));
            }
            let mut run = CheckRun {
                id: sim.next_id(),
                repo: repo_key,
                name: name.to_owned(),
                head_sha: head_sha.to_owned(),
                status: "queued".into(),
                conclusion: None,
                external_id: None,
                details_url: None,
                title: None,
                summary: None,
                started_at: Utc::now(),
                completed_at: None,
                updates: 0,
            };
            if let Err(refused) = apply_state(&mut run, &body) {
                return invalid(&refused);
            }
            let value = render_check_run(base, &run);
            sim.check_runs.push(run);
            conditional_json(req, sim, Kind::Github, &value, HttpResponse::Created())
        }
        (&Method::PATCH, ["check-runs", id]) => {
            let Some(body) = parsed() else {
                return github_error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
            };
            let id = id.parse::<i64>().unwrap_or(-1);
            let Some(run) = sim
                .check_runs
                .iter_mut()
                .find(|r| r.id == id && r.repo == repo_key)
            else {
                return not_found();
            };
            let mut updated = run.clone();
            if let Err(refused) = apply_state(&mut updated, &body) {
                return invalid(&refused);
            }
            updated.updates += 1;
            *run = updated;
            let value = render_check_run(base, run);
            conditional_json(req, sim, Kind::Github, &value, HttpResponse::Ok())
        }
        (&Method::GET, ["check-runs", id]) => {
            let id = id.parse::<i64>().unwrap_or(-1);
            let Some(run) = sim
                .check_runs
                .iter()
                .find(|r| r.id == id && r.repo == repo_key)
            else {
                return not_found();
            };
            let value = render_check_run(base, run);
            conditional_json(req, sim, Kind::Github, &value, HttpResponse::Ok())
        }
        (&Method::GET, ["commits", reference, "check-runs"]) => {
            let sha = sim
                .repos
                .get(&key(Kind::Github, full))
                .and_then(|repo| repo.branches.get(*reference).cloned())
                .unwrap_or_else(|| (*reference).to_owned());
            let pairs = query(req);
            let name = param(&pairs, "check_name");
            let runs: Vec<Value> = sim
                .check_runs
                .iter()
                .filter(|r| r.repo == repo_key && r.head_sha == sha)
                .filter(|r| name.as_ref().is_none_or(|n| *n == r.name))
                .map(|r| render_check_run(base, r))
                .collect();
            let value = json!({"total_count": runs.len(), "check_runs": runs});
            conditional_json(req, sim, Kind::Github, &value, HttpResponse::Ok())
        }
        _ => not_found(),
    }
}

pub fn render_commit_status(status: &CommitStatus) -> Value {
    json!({
        "id": status.id, "sha": status.sha, "ref": status.reference, "status": status.status,
        "name": status.name, "target_url": status.target_url, "description": status.description,
        "created_at": ts(status.created_at), "started_at": status.started_at.map(ts),
        "finished_at": status.finished_at.map(ts), "allow_failure": false, "coverage": null,
        "pipeline_id": status.id * 10,
        "author": {"id": 1, "username": "terrapod", "name": "Terrapod", "state": "active",
            "avatar_url": null, "web_url": "https://gitlab.example.com/terrapod"},
    })
}

fn finished(state: &str) -> bool {
    matches!(state, "success" | "failed" | "canceled")
}

/// The state-machine event GitLab names in its refusal.
fn event_of(state: &str) -> &'static str {
    match state {
        "pending" => "enqueue",
        "running" => "run",
        "success" => "success",
        "failed" => "drop",
        _ => "cancel",
    }
}

/// `POST /projects/:id/statuses/:sha` (JSON or query parameters) and
/// `GET /projects/:id/repository/commits/:sha/statuses`.
pub fn gitlab(
    req: &HttpRequest,
    sim: &mut Sim,
    project: &str,
    rest: &[&str],
    body: &[u8],
) -> HttpResponse {
    let project_key = project.to_ascii_lowercase();
    match (req.method(), rest) {
        (&Method::POST, ["statuses", sha]) => {
            let json_body = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
            let pairs = query(req);
            let field = |name: &str| {
                json_body[name]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| param(&pairs, name))
            };
            let Some(state) = field("state").filter(|s| GITLAB_STATES.contains(&s.as_str())) else {
                return gitlab_error(StatusCode::BAD_REQUEST, "state does not have a valid value");
            };
            let known = sim
                .repos
                .get(&key(Kind::Gitlab, project))
                .is_some_and(|repo| repo.commits.contains_key(*sha));
            if !known {
                return gitlab_error(StatusCode::NOT_FOUND, "404 Commit Not Found");
            }
            let name = field("name").unwrap_or_else(|| "default".into());
            let reference = field("ref");
            let now = Utc::now();
            let latest = sim.commit_statuses.iter_mut().rev().find(|s| {
                s.project == project_key && s.sha == *sha && s.name == name && !s.retried
            });
            let status = match latest {
                Some(existing) if existing.status == state => {
                    return gitlab_error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Cannot transition status via :{} from :{} (Reason(s): Status cannot transition via \"{}\")",
                            event_of(&state), existing.status, event_of(&state)
                        ),
                    );
                }
                Some(existing) if !finished(&existing.status) => {
                    existing.status = state.clone();
                    existing
                }
                other => {
                    if let Some(existing) = other {
                        existing.retried = true;
                    }
                    let id = sim.next_id();
                    sim.commit_statuses.push(CommitStatus {
                        id,
                        project: project_key,
                        sha: (*sha).to_owned(),
                        reference: reference.clone(),
                        name,
                        status: state.clone(),
                        target_url: None,
                        description: None,
                        created_at: now,
                        started_at: None,
                        finished_at: None,
                        retried: false,
                    });
                    sim.commit_statuses.last_mut().expect("just pushed")
                }
            };
            if state == "running" && status.started_at.is_none() {
                status.started_at = Some(now);
            }
            status.finished_at = finished(&state).then_some(now);
            if let Some(url) = field("target_url") {
                status.target_url = Some(url);
            }
            if let Some(description) = field("description") {
                status.description = Some(description);
            }
            if reference.is_some() {
                status.reference = reference;
            }
            let value = render_commit_status(status);
            conditional_json(req, sim, Kind::Gitlab, &value, HttpResponse::Created())
        }
        (&Method::GET, ["repository", "commits", sha, "statuses"]) => {
            let statuses: Vec<Value> = sim
                .commit_statuses
                .iter()
                .filter(|s| s.project == project_key && s.sha == *sha && !s.retried)
                .map(render_commit_status)
                .collect();
            conditional_json(req, sim, Kind::Gitlab, &json!(statuses), HttpResponse::Ok())
        }
        _ => gitlab_error(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}
