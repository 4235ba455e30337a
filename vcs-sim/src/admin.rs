//! `/_admin/...`: set up and steer the simulated world over HTTP (demo, benchmarks).

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ops::{self, FileSpec, NewPull, PullUpdate};
use crate::server::Context;
use crate::state::{Fault, Kind, Latency, SecondaryLimits, SimError, WebhookTarget};

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|err| SimError::Invalid(err.to_string()))
}

fn files(map: Option<Map<String, Value>>) -> Result<Vec<(String, Option<FileSpec>)>, SimError> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(path, value)| {
            let spec = if value.is_null() {
                None
            } else {
                Some(
                    serde_json::from_value(value)
                        .map_err(|err| SimError::Invalid(err.to_string()))?,
                )
            };
            Ok((path, spec))
        })
        .collect()
}

#[derive(Deserialize)]
struct RepoBody {
    provider: Kind,
    path: String,
    #[serde(default)]
    default_branch: Option<String>,
    #[serde(default)]
    files: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct CommitBody {
    provider: Kind,
    repo: String,
    branch: String,
    message: String,
    #[serde(default)]
    files: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct PullBody {
    provider: Kind,
    repo: String,
    #[serde(flatten)]
    pull: NewPull,
}

#[derive(Deserialize)]
struct PullPatch {
    provider: Kind,
    repo: String,
    number: i64,
    #[serde(default)]
    state: Option<crate::state::PullState>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    draft: Option<bool>,
}

#[derive(Deserialize)]
struct AppBody {
    app_id: i64,
    public_key: String,
}

#[derive(Deserialize)]
struct InstallationBody {
    id: i64,
    app_id: i64,
    account: String,
    #[serde(default)]
    repos: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    #[serde(default)]
    projects: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RateBody {
    provider: Kind,
    remaining: u64,
    reset_in_seconds: i64,
}

#[derive(Deserialize)]
struct ArchiveBody {
    provider: Kind,
    repo: String,
    sha: String,
    base64: String,
}

pub async fn handle(req: &HttpRequest, path: &str, body: &[u8], ctx: &Context) -> HttpResponse {
    match route(req.method(), path, body, ctx).await {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(SimError::NotFound(message)) => {
            HttpResponse::NotFound().json(json!({"error": message}))
        }
        Err(err) => HttpResponse::BadRequest().json(json!({"error": err.to_string()})),
    }
}

async fn route(method: &Method, path: &str, body: &[u8], ctx: &Context) -> Result<Value, SimError> {
    let events = {
        let mut sim = ctx.sim.lock().expect("sim lock");
        let sim = &mut *sim;
        match (method.as_str(), path) {
            ("POST", "github/apps") => {
                let app: AppBody = parse(body)?;
                ops::add_github_app(sim, app.app_id, &app.public_key)?;
                return Ok(json!({"app_id": app.app_id}));
            }
            ("POST", "github/installations") => {
                let i: InstallationBody = parse(body)?;
                ops::add_installation(sim, i.id, i.app_id, &i.account, i.repos);
                return Ok(json!({"id": i.id}));
            }
            ("POST", "github/revoke-tokens") => {
                return Ok(json!({"revoked": ops::revoke_github_tokens(sim)}))
            }
            ("POST", "gitlab/tokens") => {
                let t: TokenBody = parse(body)?;
                ops::add_gitlab_token(sim, &t.token, t.projects);
                return Ok(json!({}));
            }
            ("POST", "rate-limit") => {
                let r: RateBody = parse(body)?;
                ops::set_rate_limit(sim, r.provider, r.remaining, r.reset_in_seconds);
                return Ok(json!({}));
            }
            ("POST", "latency") => {
                sim.latency = parse::<Latency>(body)?;
                return Ok(json!(sim.latency));
            }
            ("POST", "github/secondary-limits") => {
                sim.secondary_limits = parse::<Option<SecondaryLimits>>(body)?;
                return Ok(json!(sim.secondary_limits));
            }
            ("GET", usage)
                if usage.starts_with("github/installations/") && usage.ends_with("/usage") =>
            {
                let id = usage
                    .trim_start_matches("github/installations/")
                    .trim_end_matches("/usage")
                    .parse::<i64>()
                    .map_err(|_| SimError::Invalid("installation ids are numbers".into()))?;
                return Ok(json!(ops::installation_usage(sim, id)));
            }
            ("POST", "faults") => {
                ops::inject_fault(sim, parse::<Fault>(body)?);
                return Ok(json!({}));
            }
            ("DELETE", "faults") => {
                ops::clear_faults(sim);
                return Ok(json!({}));
            }
            ("POST", "webhooks") => {
                ops::add_webhook(sim, parse::<WebhookTarget>(body)?);
                return Ok(json!({}));
            }
            ("GET", "stats") => return Ok(json!(sim.stats)),
            // What a run's commit shows: every check run and commit status, as the
            // providers render them.
            ("GET", "checks") => {
                let base = ctx.base_url.as_str();
                let check_runs: Vec<Value> = sim
                    .check_runs
                    .iter()
                    .map(|run| crate::checks::render_check_run(base, run))
                    .collect();
                let statuses: Vec<Value> = sim
                    .commit_statuses
                    .iter()
                    .filter(|status| !status.retried)
                    .map(crate::checks::render_commit_status)
                    .collect();
                return Ok(json!({"check_runs": check_runs, "commit_statuses": statuses}));
            }
            ("GET", "deliveries") => return Ok(json!(*ctx.deliveries.lock().expect("lock"))),
            ("POST", "repos") => {
                let r: RepoBody = parse(body)?;
                let branch = r.default_branch.unwrap_or_else(|| "main".into());
                let (id, head) =
                    ops::create_repo(sim, r.provider, &r.path, &branch, &files(r.files)?)?;
                return Ok(json!({"id": id, "head": head}));
            }
            ("POST", "archives") => {
                let a: ArchiveBody = parse(body)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(a.base64)
                    .map_err(|err| SimError::Invalid(err.to_string()))?;
                ops::override_archive(sim, a.provider, &a.repo, &a.sha, bytes)?;
                return Ok(json!({}));
            }
            ("POST", "commits") => {
                let c: CommitBody = parse(body)?;
                let (sha, events) = ops::commit(
                    sim,
                    c.provider,
                    &c.repo,
                    &c.branch,
                    &c.message,
                    &files(c.files)?,
                )?;
                (json!({"sha": sha}), events, sim.webhooks.clone())
            }
            ("POST", "pulls") => {
                let p: PullBody = parse(body)?;
                let (number, events) = ops::open_pull(sim, p.provider, &p.repo, p.pull)?;
                (json!({"number": number}), events, sim.webhooks.clone())
            }
            ("PATCH", "pulls") => {
                let p: PullPatch = parse(body)?;
                let update = PullUpdate {
                    state: p.state,
                    title: p.title,
                    draft: p.draft,
                };
                let events = ops::update_pull(sim, p.provider, &p.repo, p.number, update)?;
                (json!({"number": p.number}), events, sim.webhooks.clone())
            }
            _ => {
                return Err(SimError::NotFound(format!(
                    "no admin route {method} /_admin/{path}"
                )))
            }
        }
    };
    let (answer, events, targets) = events;
    let delivered = crate::webhooks::deliver_all(&ctx.client, &targets, &events).await;
    ctx.deliveries.lock().expect("lock").extend(delivered);
    Ok(answer)
}
