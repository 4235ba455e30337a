//! The HTTP face of the simulator: GitHub REST paths at the root, GitLab v4 under
//! `/api/v4`, downloads under `/_codeload`, and the admin API under `/_admin`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use chrono::Utc;
use jsonwebtoken::{Algorithm, Validation};
use ring::digest;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::render;
use crate::state::{key, Fault, Kind, PullState, Repo, Sim};

pub type Shared = Arc<Mutex<Sim>>;

pub struct Context {
    pub sim: Shared,
    pub base_url: String,
    pub client: reqwest::Client,
    pub deliveries: Mutex<Vec<crate::webhooks::Delivery>>,
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn query(req: &HttpRequest) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

pub(crate) fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Every request lands here and is routed by hand, so encoded slashes in GitLab
/// project ids and branch names arrive exactly as sent.
pub async fn dispatch(req: HttpRequest, body: web::Bytes, ctx: web::Data<Context>) -> HttpResponse {
    // GitHub Enterprise Server serves the same API under `/api/v3`.
    let raw_path = req.uri().path();
    let path = raw_path
        .strip_prefix("/api/v3")
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(raw_path)
        .to_owned();
    if let Some(rest) = path.strip_prefix("/_admin/") {
        return crate::admin::handle(&req, rest, &body, &ctx).await;
    }
    let kind = if path.starts_with("/api/v4/") {
        Kind::Gitlab
    } else {
        Kind::Github
    };
    let fault = {
        let mut sim = ctx.sim.lock().expect("sim lock");
        let method = req.method().as_str();
        let fault = sim
            .faults
            .iter_mut()
            .find(|f| f.count > 0 && f.matches(method, &path))
            .map(|f| {
                f.count -= 1;
                f.clone()
            });
        sim.faults.retain(|f| f.count > 0);
        fault
    };
    // GitHub's secondary limits, per installation, before anything else is done.
    let _in_flight = match admit_installation_request(&req, kind, &path, &ctx) {
        Ok(guard) => guard,
        Err(refused) => return *refused,
    };
    let latency = ctx.sim.lock().expect("sim lock").latency;
    if latency.fixed_ms > 0 || latency.jitter_ms > 0 {
        let jitter = random_below(latency.jitter_ms + 1);
        tokio::time::sleep(Duration::from_millis(latency.fixed_ms + jitter)).await;
    }
    if let Some(fault) = &fault {
        if let Some(latency) = fault.latency() {
            tokio::time::sleep(latency).await;
        }
        if let Some(status) = fault.status.filter(|_| !fault.answer_lost) {
            return injected(kind, fault, status, &ctx);
        }
        if let Some(location) = &fault.redirect_to {
            let status = fault
                .redirect_status
                .and_then(|status| StatusCode::from_u16(status).ok())
                .filter(StatusCode::is_redirection)
                .unwrap_or(StatusCode::FOUND);
            return HttpResponse::build(status)
                .insert_header(("Location", location.as_str()))
                .finish();
        }
    }
    let mut response = if let Some(rest) = path.strip_prefix("/_codeload/") {
        codeload(rest, &ctx).await
    } else {
        match kind {
            Kind::Gitlab => match gitlab(&req, &path["/api/v4/".len()..], &body, &ctx) {
                Answer::Ready(response) => response,
                Answer::Archive(kind, full, sha) => archive_response(&ctx, kind, &full, &sha).await,
            },
            Kind::Github => github(&req, &path[1..], &body, &ctx),
        }
    };
    if let Some(fault) = fault.as_ref().filter(|f| f.answer_lost) {
        if let Some(status) = fault.status {
            return injected(kind, fault, status, &ctx);
        }
    }
    if let Some(next) = fault.as_ref().and_then(|f| f.link_next.as_deref()) {
        if let Ok(value) = format!("<{next}>; rel=\"next\"").parse() {
            response
                .headers_mut()
                .insert(actix_web::http::header::LINK, value);
        }
    }
    response
}

/// A response, or an archive still to be made (outside the simulator's lock).
enum Answer {
    Ready(HttpResponse),
    Archive(Kind, String, String),
}

impl From<HttpResponse> for Answer {
    fn from(response: HttpResponse) -> Self {
        Answer::Ready(response)
    }
}

/// Counts an installation's request in flight until dropped.
struct InFlight {
    sim: Shared,
    installation: i64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut sim) = self.sim.lock() {
            if let Some(usage) = sim.usage.get_mut(&self.installation) {
                usage.in_flight = usage.in_flight.saturating_sub(1);
            }
        }
    }
}

/// Applies GitHub's secondary limits to requests made with an installation token:
/// over the points of the window or the concurrent requests, GitHub answers 403 with
/// `Retry-After`, as documented.
fn admit_installation_request(
    req: &HttpRequest,
    kind: Kind,
    path: &str,
    ctx: &Context,
) -> Result<Option<InFlight>, Box<HttpResponse>> {
    if kind != Kind::Github || path.starts_with("/_codeload/") {
        return Ok(None);
    }
    let mut sim = ctx.sim.lock().expect("sim lock");
    let (Some(limits), Some(installation)) = (sim.secondary_limits, github_installation(req, &sim))
    else {
        return Ok(None);
    };
    let points = if matches!(*req.method(), Method::GET | Method::HEAD) {
        1
    } else {
        5
    };
    if sim
        .usage
        .entry(installation)
        .or_default()
        .admit(&limits, points)
    {
        return Ok(Some(InFlight {
            sim: ctx.sim.clone(),
            installation,
        }));
    }
    sim.stats(Kind::Github).secondary_limited += 1;
    Err(Box::new(HttpResponse::Forbidden()
        .insert_header(("Retry-After", limits.window_seconds.to_string()))
        .json(json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
            "status": "403",
        }))))
}

fn random_below(bound: u64) -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random");
    u64::from_le_bytes(bytes) % bound.max(1)
}

fn injected(kind: Kind, fault: &Fault, status: u16, ctx: &Context) -> HttpResponse {
    let mut sim = ctx.sim.lock().expect("sim lock");
    sim.stats(kind).errors += 1;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    if let Some(after) = fault.retry_after {
        response.insert_header(("Retry-After", after.to_string()));
    }
    let message = match kind {
        Kind::Github => {
            json!({"message": status.canonical_reason().unwrap_or("error"), "documentation_url": "https://docs.github.com/rest"})
        }
        Kind::Gitlab => {
            json!({"message": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("error"))})
        }
    };
    response.json(message)
}

fn etag_of(body: &[u8]) -> String {
    format!(
        "W/\"{}\"",
        hex::encode(&digest::digest(&digest::SHA256, body).as_ref()[..16])
    )
}

/// A JSON answer with an ETag; a matching `If-None-Match` gets 304 and is not counted
/// against the rate limit.
pub(crate) fn conditional_json(
    req: &HttpRequest,
    sim: &mut Sim,
    kind: Kind,
    value: &Value,
    mut response: HttpResponseBuilder,
) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("JSON serialises");
    let etag = etag_of(&body);
    let matches = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    rate_headers(sim, kind, &mut response, !matches);
    response.insert_header(("ETag", etag));
    if matches {
        sim.stats(kind).not_modified += 1;
        response.status(StatusCode::NOT_MODIFIED);
        return response.finish();
    }
    sim.stats(kind).counted += 1;
    response
        .content_type("application/json; charset=utf-8")
        .body(body)
}

fn rate_headers(sim: &mut Sim, kind: Kind, response: &mut HttpResponseBuilder, counted: bool) {
    let rate = match kind {
        Kind::Github => &mut sim.github_rate,
        Kind::Gitlab => &mut sim.gitlab_rate,
    };
    rate.refresh();
    if counted {
        rate.remaining = rate.remaining.saturating_sub(1);
    }
    let reset = rate.reset_at.timestamp().to_string();
    let (limit, remaining, used) = (rate.limit, rate.remaining, rate.limit - rate.remaining);
    match kind {
        Kind::Github => {
            response
                .insert_header(("x-ratelimit-limit", limit.to_string()))
                .insert_header(("x-ratelimit-remaining", remaining.to_string()))
                .insert_header(("x-ratelimit-reset", reset))
                .insert_header(("x-ratelimit-used", used.to_string()))
                .insert_header(("x-ratelimit-resource", "core"))
                .insert_header(("x-github-api-version-selected", "2022-11-28"));
        }
        Kind::Gitlab => {
            response
                .insert_header(("RateLimit-Limit", limit.to_string()))
                .insert_header(("RateLimit-Remaining", remaining.to_string()))
                .insert_header(("RateLimit-Reset", reset))
                .insert_header(("RateLimit-Observed", used.to_string()));
        }
    }
}

fn rate_exhausted(sim: &mut Sim, kind: Kind) -> Option<HttpResponse> {
    let rate = match kind {
        Kind::Github => &mut sim.github_rate,
        Kind::Gitlab => &mut sim.gitlab_rate,
    };
    rate.refresh();
    if rate.remaining > 0 {
        return None;
    }
    sim.stats(kind).errors += 1;
    let (status, body) = match kind {
        Kind::Github => (
            StatusCode::FORBIDDEN,
            json!({"message": "API rate limit exceeded for installation. If you reach out to GitHub Support for help, please include the request ID.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api", "status": "403"}),
        ),
        Kind::Gitlab => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "Retry later"}),
        ),
    };
    let mut response = HttpResponse::build(status);
    rate_headers(sim, kind, &mut response, false);
    if kind == Kind::Gitlab {
        let wait = (sim.gitlab_rate.reset_at - Utc::now()).num_seconds().max(1);
        response.insert_header(("Retry-After", wait.to_string()));
    }
    Some(response.json(body))
}

pub(crate) fn github_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": status.as_u16().to_string(),
    }))
}

pub(crate) fn gitlab_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "message": message }))
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim().to_owned())
}

#[derive(Deserialize)]
struct JwtClaims {
    iat: i64,
    exp: i64,
    iss: Value,
}

fn mint_installation_token(
    req: &HttpRequest,
    installation_id: &str,
    ctx: &Context,
) -> HttpResponse {
    let Some(jwt) = bearer(req) else {
        return github_error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    };
    let mut sim = ctx.sim.lock().expect("sim lock");
    let Ok(installation_id) = installation_id.parse::<i64>() else {
        return github_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some(installation) = sim.installations.get(&installation_id) else {
        return github_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let app_id = installation.app_id;
    let Some(key) = sim.github_apps.get(&app_id) else {
        return github_error(StatusCode::UNAUTHORIZED, "Integration not found");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<JwtClaims>(&jwt, key, &validation) {
        Ok(data) => data.claims,
        Err(_) => {
            return github_error(
                StatusCode::UNAUTHORIZED,
                "A JSON web token could not be decoded",
            )
        }
    };
    let now = Utc::now().timestamp();
    let iss_matches = match &claims.iss {
        Value::String(s) => s == &app_id.to_string(),
        Value::Number(n) => n.as_i64() == Some(app_id),
        _ => false,
    };
    if !iss_matches {
        return github_error(
            StatusCode::UNAUTHORIZED,
            "'Issuer' claim ('iss') must be an Integer",
        );
    }
    if claims.iat > now + 60 || claims.exp - now > 600 || claims.exp <= now {
        return github_error(
            StatusCode::UNAUTHORIZED,
            "'Expiration time' claim ('exp') is too far in the future",
        );
    }
    let token = format!("ghs_{}", hex::encode(random_bytes()));
    let expires_at = Utc::now() + chrono::Duration::hours(1);
    sim.github_tokens.insert(
        token.clone(),
        crate::state::InstallationToken {
            installation_id,
            expires_at,
        },
    );
    sim.stats(Kind::Github).tokens_minted += 1;
    let selection = if sim.installations[&installation_id].repos.is_some() {
        "selected"
    } else {
        "all"
    };
    HttpResponse::Created().json(json!({
        "token": token,
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "permissions": {"contents": "read", "metadata": "read", "pull_requests": "read", "statuses": "write"},
        "repository_selection": selection,
    }))
}

fn random_bytes() -> [u8; 18] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random");
    bytes
}

/// The installation behind a valid, unexpired token.
fn github_installation(req: &HttpRequest, sim: &Sim) -> Option<i64> {
    let info = sim.github_tokens.get(&bearer(req)?)?;
    (info.expires_at > Utc::now()).then_some(info.installation_id)
}

fn installation_sees(sim: &Sim, installation_id: i64, repo: &Repo) -> bool {
    sim.installations.get(&installation_id).is_some_and(|i| {
        i.repos
            .as_ref()
            .is_none_or(|repos| repos.contains(&repo.full_path().to_ascii_lowercase()))
    })
}

fn github(req: &HttpRequest, path: &str, body: &[u8], ctx: &Context) -> HttpResponse {
    let segments: Vec<String> = path.split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if req.method() == Method::POST {
        if let ["app", "installations", id, "access_tokens"] = segments.as_slice() {
            return mint_installation_token(req, id, ctx);
        }
    }
    if ![Method::GET, Method::POST, Method::PATCH].contains(req.method()) {
        return github_error(StatusCode::NOT_FOUND, "Not Found");
    }
    let mut sim = ctx.sim.lock().expect("sim lock");
    let Some(installation) = github_installation(req, &sim) else {
        return github_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    };
    if let Some(limited) = rate_exhausted(&mut sim, Kind::Github) {
        return limited;
    }
    let base = ctx.base_url.as_str();
    let not_found = || github_error(StatusCode::NOT_FOUND, "Not Found");
    match segments.as_slice() {
        ["installation", "repositories"] => {
            let repos: Vec<Value> = sim
                .repos
                .values()
                .filter(|r| r.kind == Kind::Github && installation_sees(&sim, installation, r))
                .map(|r| render::github_repo(base, r))
                .collect();
            let per_page = per_page(req, 30);
            let value = json!({"total_count": repos.len(), "repository_selection": "all", "repositories": repos.into_iter().take(per_page).collect::<Vec<_>>()});
            conditional_json(req, &mut sim, Kind::Github, &value, HttpResponse::Ok())
        }
        ["repos", owner, name, rest @ ..] => {
            let full = format!("{owner}/{name}");
            let Some(repo) = sim.repos.get(&key(Kind::Github, &full)) else {
                return not_found();
            };
            if !installation_sees(&sim, installation, repo) {
                return not_found();
            }
            if req.method() != Method::GET
                || matches!(rest, ["check-runs", ..] | ["commits", _, "check-runs"])
            {
                return crate::checks::github(req, &mut sim, &full, base, rest, body);
            }
            let value = match rest {
                [] => render::github_repo(base, repo),
                ["branches", branch @ ..] if !branch.is_empty() => {
                    let branch = branch.join("/");
                    let Some(commit) = repo.branches.get(&branch).and_then(|sha| repo.commit(sha))
                    else {
                        return github_error(StatusCode::NOT_FOUND, "Branch not found");
                    };
                    render::github_branch(base, repo, &branch, commit)
                }
                ["pulls"] => return github_pulls(req, &mut sim, &full, base),
                ["compare", spec] => return github_compare(req, &mut sim, &full, base, spec),
                ["tags"] => return github_tags(req, &mut sim, &full, base),
                ["pulls", number, "files"] => {
                    return github_pull_files(req, &mut sim, &full, base, number)
                }
                ["tarball", reference @ ..] if !reference.is_empty() => {
                    let reference = reference.join("/");
                    let sha = repo.branches.get(&reference).cloned().unwrap_or(reference);
                    if !repo.commits.contains_key(&sha)
                        && !repo.archive_overrides.contains_key(&sha)
                    {
                        return not_found();
                    }
                    let mut response = HttpResponse::Found();
                    rate_headers(&mut sim, Kind::Github, &mut response, true);
                    sim.stats(Kind::Github).counted += 1;
                    return response
                        .insert_header((
                            "Location",
                            format!("{base}/_codeload/github/{full}/legacy.tar.gz/{sha}"),
                        ))
                        .finish();
                }
                _ => return not_found(),
            };
            conditional_json(req, &mut sim, Kind::Github, &value, HttpResponse::Ok())
        }
        _ if req.method() != Method::GET => github_error(StatusCode::NOT_FOUND, "Not Found"),
        _ => not_found(),
    }
}

fn per_page(req: &HttpRequest, default: usize) -> usize {
    param(&query(req), "per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, 100)
}

fn page(req: &HttpRequest) -> usize {
    param(&query(req), "page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The head SHA of a pull request: its head branch's tip, in whichever repo holds it.
fn head_sha<'a>(sim: &'a Sim, kind: Kind, pull: &crate::state::Pull) -> Option<(&'a Repo, String)> {
    let head_repo = sim.repos.get(&key(kind, &pull.head_repo))?;
    let sha = head_repo.branches.get(&pull.head_branch)?.clone();
    Some((head_repo, sha))
}

/// One page (newest first) of the repository's pull/merge requests whose state
/// `keep`s and whose base is `base_branch` (any when `None`), rendered, with how many
/// matched in all.
#[allow(clippy::too_many_arguments)]
fn page_of_pulls(
    sim: &Sim,
    kind: Kind,
    full: &str,
    keep: impl Fn(PullState) -> bool,
    base_branch: Option<&str>,
    per_page: usize,
    page: usize,
    render: impl Fn(&Repo, &Repo, &crate::state::Pull, &str) -> Value,
) -> (Vec<Value>, usize) {
    let repo = &sim.repos[&key(kind, full)];
    let mut matching: Vec<&crate::state::Pull> = repo
        .pulls
        .iter()
        .filter(|p| keep(p.state) && base_branch.is_none_or(|b| p.base_branch == b))
        .collect();
    matching.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.number.cmp(&a.number))
    });
    let items = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .filter_map(|p| head_sha(sim, kind, p).map(|(head, sha)| render(repo, head, p, &sha)))
        .collect();
    (items, matching.len())
}

fn github_pulls(req: &HttpRequest, sim: &mut Sim, full: &str, base: &str) -> HttpResponse {
    let pairs = query(req);
    let state_filter = param(&pairs, "state").unwrap_or_else(|| "open".into());
    let base_filter = param(&pairs, "base");
    let (per_page, page) = (per_page(req, 30), page(req));
    let keep = |state: PullState| match state_filter.as_str() {
        "all" => true,
        "closed" => state != PullState::Open,
        _ => state == PullState::Open,
    };
    let (items, total) = page_of_pulls(
        sim,
        Kind::Github,
        full,
        keep,
        base_filter.as_deref(),
        per_page,
        page,
        |repo, head, pull, sha| render::github_pull(base, repo, head, pull, sha),
    );
    let last = total.div_ceil(per_page).max(1);
    let mut response = HttpResponse::Ok();
    let link_to = |n: usize, rel: &str| {
        let mut params: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| k != "page").cloned().collect();
        params.push(("page".into(), n.to_string()));
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!(
            "<{base}/repos/{full}/pulls?{}>; rel=\"{rel}\"",
            query.join("&")
        )
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link_to(page - 1, "prev"));
        links.push(link_to(1, "first"));
    }
    if page < last {
        links.push(link_to(page + 1, "next"));
        links.push(link_to(last, "last"));
    }
    if !links.is_empty() {
        response.insert_header(("Link", links.join(", ")));
    }
    let value = Value::Array(items);
    conditional_json(req, sim, Kind::Github, &value, response)
}

/// The repository's tags, sorted by name (GitHub and GitLab both list newest-first by
/// their own ordering; names are enough for the simulator).
fn sorted_tags(sim: &Sim, kind: Kind, full: &str) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = sim.repos[&key(kind, full)]
        .tags
        .iter()
        .map(|(name, sha)| (name.clone(), sha.clone()))
        .collect();
    tags.sort();
    tags
}

/// `GET /repos/{owner}/{repo}/tags`, paginated with `Link`.
fn github_tags(req: &HttpRequest, sim: &mut Sim, full: &str, base: &str) -> HttpResponse {
    let tags = sorted_tags(sim, Kind::Github, full);
    let (per_page, page) = (per_page(req, 30), page(req));
    let items: Vec<Value> = {
        let repo = &sim.repos[&key(Kind::Github, full)];
        tags.iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|(name, sha)| render::github_tag(base, repo, name, sha))
            .collect()
    };
    let response = github_page(
        &format!("{base}/repos/{full}/tags"),
        tags.len(),
        per_page,
        page,
    );
    conditional_json(req, sim, Kind::Github, &Value::Array(items), response)
}

/// `GET /projects/:id/repository/tags`, paginated with `X-Next-Page`.
fn gitlab_tags(req: &HttpRequest, sim: &mut Sim, full: &str, base: &str) -> HttpResponse {
    let tags = sorted_tags(sim, Kind::Gitlab, full);
    let (per_page, page) = (per_page(req, 20), page(req));
    let items: Vec<Value> = {
        let repo = &sim.repos[&key(Kind::Gitlab, full)];
        tags.iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .filter_map(|(name, sha)| Some(render::gitlab_tag(base, repo, name, repo.commit(sha)?)))
            .collect()
    };
    let response = gitlab_page(tags.len(), per_page, page);
    conditional_json(req, sim, Kind::Gitlab, &Value::Array(items), response)
}

/// GitHub lists at most this many files of a comparison, and of a pull request.
const GITHUB_COMPARE_MAX_FILES: usize = 300;
const GITHUB_PULL_MAX_FILES: usize = 3000;

/// A branch name or a known commit of `repo`, as a SHA.
fn resolve_ref(repo: &Repo, reference: &str) -> Option<String> {
    repo.branches.get(reference).cloned().or_else(|| {
        repo.commits
            .contains_key(reference)
            .then(|| reference.to_owned())
    })
}

/// The commits after `from` up to `to`, oldest first (following first parents).
fn commits_between<'a>(repo: &'a Repo, from: &str, to: &str) -> Vec<&'a crate::state::Commit> {
    let mut commits = Vec::new();
    let mut at = Some(to.to_owned());
    while let Some(sha) = at {
        if sha == from || commits.len() >= 250 {
            break;
        }
        let Some(commit) = repo.commit(&sha) else {
            break;
        };
        commits.push(commit);
        at = commit.parent.clone();
    }
    commits.reverse();
    commits
}

/// `GET /repos/{owner}/{repo}/compare/{base}...{head}`: 404 when either end is not a
/// commit the repository has (a base lost to a force-push and garbage collection).
fn github_compare(
    req: &HttpRequest,
    sim: &mut Sim,
    full: &str,
    base: &str,
    spec: &str,
) -> HttpResponse {
    sim.stats(Kind::Github).change_lists += 1;
    let not_found = || github_error(StatusCode::NOT_FOUND, "Not Found");
    let value = {
        let repo = &sim.repos[&key(Kind::Github, full)];
        let Some((from, to)) = spec.split_once("...") else {
            return not_found();
        };
        let (Some(from), Some(to)) = (resolve_ref(repo, from), resolve_ref(repo, to)) else {
            return not_found();
        };
        let Ok(changes) = repo.git.changed_files(&from, &to) else {
            return not_found();
        };
        let commits = commits_between(repo, &from, &to);
        let merge_base = repo.git.merge_base(&from, &to).unwrap_or_default();
        let behind = commits_between(repo, &merge_base, &from).len();
        let status = if from == to {
            "identical"
        } else if merge_base == from {
            "ahead"
        } else if merge_base == to {
            "behind"
        } else {
            "diverged"
        };
        let base_commit = render::github_commit(base, repo, &repo.commits[&from]);
        let url = format!("{base}/repos/{full}");
        json!({
            "url": format!("{url}/compare/{spec}"),
            "html_url": format!("{base}/{full}/compare/{spec}"),
            "permalink_url": format!("{base}/{full}/compare/{from}...{to}"),
            "diff_url": format!("{base}/{full}/compare/{spec}.diff"),
            "patch_url": format!("{base}/{full}/compare/{spec}.patch"),
            "base_commit": base_commit.clone(),
            "merge_base_commit": base_commit,
            "status": status,
            "ahead_by": if merge_base == from { commits.len() } else { 0 },
            "behind_by": behind, "total_commits": commits.len(),
            "commits": commits.iter().map(|c| render::github_commit(base, repo, c)).collect::<Vec<_>>(),
            "files": changes.iter().take(GITHUB_COMPARE_MAX_FILES)
                .map(|c| render::github_diff_entry(base, repo, &to, c)).collect::<Vec<_>>(),
        })
    };
    conditional_json(req, sim, Kind::Github, &value, HttpResponse::Ok())
}

/// The changed files of pull/merge request `number` of `full` (base branch tip to head).
fn pull_changes(
    sim: &Sim,
    kind: Kind,
    full: &str,
    number: &str,
) -> Option<(Vec<crate::git::ChangedPath>, String)> {
    let repo = &sim.repos[&key(kind, full)];
    let pull = repo.pulls.iter().find(|p| p.number.to_string() == number)?;
    let (_, head) = head_sha(sim, kind, pull)?;
    let base_tip = repo.branches.get(&pull.base_branch)?;
    // A fork's head is not in this repository: the simulator lists no files for it.
    let changes = repo.git.changed_files(base_tip, &head).unwrap_or_default();
    Some((changes, head))
}

/// `GET /repos/{owner}/{repo}/pulls/{number}/files`, paginated, at most 3,000 files.
fn github_pull_files(
    req: &HttpRequest,
    sim: &mut Sim,
    full: &str,
    base: &str,
    number: &str,
) -> HttpResponse {
    sim.stats(Kind::Github).change_lists += 1;
    let Some((changes, head)) = pull_changes(sim, Kind::Github, full, number) else {
        return github_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let (per_page, page) = (per_page(req, 30), page(req));
    let listed = changes.len().min(GITHUB_PULL_MAX_FILES);
    let items: Vec<Value> = {
        let repo = &sim.repos[&key(Kind::Github, full)];
        changes[..listed]
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|c| render::github_diff_entry(base, repo, &head, c))
            .collect()
    };
    let response = github_page(
        &format!("{base}/repos/{full}/pulls/{number}/files"),
        listed,
        per_page,
        page,
    );
    conditional_json(req, sim, Kind::Github, &Value::Array(items), response)
}

/// `GET /projects/:id/repository/compare?from=&to=`.
fn gitlab_compare(req: &HttpRequest, sim: &mut Sim, full: &str, base: &str) -> HttpResponse {
    sim.stats(Kind::Gitlab).change_lists += 1;
    let pairs = query(req);
    let value = {
        let repo = &sim.repos[&key(Kind::Gitlab, full)];
        let ends = (
            param(&pairs, "from").and_then(|r| resolve_ref(repo, &r)),
            param(&pairs, "to").and_then(|r| resolve_ref(repo, &r)),
        );
        let (Some(from), Some(to)) = ends else {
            return gitlab_error(StatusCode::NOT_FOUND, "404 Ref Not Found");
        };
        let straight = param(&pairs, "straight").is_some_and(|v| v == "true");
        let changes = if straight {
            repo.git.tree_changes(&from, &to)
        } else {
            repo.git.changed_files(&from, &to)
        };
        let Ok(changes) = changes else {
            return gitlab_error(StatusCode::NOT_FOUND, "404 Ref Not Found");
        };
        let commits = commits_between(repo, &from, &to);
        json!({
            "commit": commits.last().map(|c| render::gitlab_commit(base, repo, c)),
            "commits": commits.iter().map(|c| render::gitlab_commit(base, repo, c)).collect::<Vec<_>>(),
            "diffs": changes.iter().map(render::gitlab_diff).collect::<Vec<_>>(),
            "compare_timeout": false,
            "compare_same_ref": from == to,
            "web_url": format!("{base}/{full}/-/compare/{from}...{to}"),
        })
    };
    conditional_json(req, sim, Kind::Gitlab, &value, HttpResponse::Ok())
}

/// `GET /projects/:id/merge_requests/:iid/diffs`, paginated like every GitLab list.
fn gitlab_merge_request_diffs(
    req: &HttpRequest,
    sim: &mut Sim,
    full: &str,
    iid: &str,
) -> HttpResponse {
    sim.stats(Kind::Gitlab).change_lists += 1;
    let Some((changes, _)) = pull_changes(sim, Kind::Gitlab, full, iid) else {
        return gitlab_error(StatusCode::NOT_FOUND, "404 Not found");
    };
    let (per_page, page) = (per_page(req, 20), page(req));
    let items: Vec<Value> = changes
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(render::gitlab_diff)
        .collect();
    let response = gitlab_page(changes.len(), per_page, page);
    conditional_json(req, sim, Kind::Gitlab, &Value::Array(items), response)
}

/// An `OK` answer carrying GitLab's pagination headers for page `page` of `total`
/// items, `per_page` a page.
fn gitlab_page(total: usize, per_page: usize, page: usize) -> HttpResponseBuilder {
    let total_pages = total.div_ceil(per_page).max(1);
    let next = if page < total_pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let prev = if page > 1 {
        (page - 1).to_string()
    } else {
        String::new()
    };
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("X-Page", page.to_string()))
        .insert_header(("X-Per-Page", per_page.to_string()))
        .insert_header(("X-Next-Page", next))
        .insert_header(("X-Prev-Page", prev))
        .insert_header(("X-Total", total.to_string()))
        .insert_header(("X-Total-Pages", total_pages.to_string()));
    response
}

/// An `OK` answer with GitHub's `Link` to the next and last pages of a list at `url`
/// (`per_page` and `page` its only parameters), when there is a next page.
fn github_page(url: &str, total: usize, per_page: usize, page: usize) -> HttpResponseBuilder {
    let last = total.div_ceil(per_page).max(1);
    let mut response = HttpResponse::Ok();
    if page < last {
        let link =
            |n: usize, rel: &str| format!("<{url}?per_page={per_page}&page={n}>; rel=\"{rel}\"");
        response.insert_header((
            "Link",
            format!("{}, {}", link(page + 1, "next"), link(last, "last")),
        ));
    }
    response
}

fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn codeload(rest: &str, ctx: &Context) -> HttpResponse {
    let segments: Vec<String> = rest.split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (kind, path, sha) = match segments.as_slice() {
        ["github", owner @ .., "legacy.tar.gz", sha] => {
            (Kind::Github, owner.join("/"), sha.to_string())
        }
        _ => return HttpResponse::NotFound().finish(),
    };
    archive_response(ctx, kind, &path, &sha).await
}

async fn archive_response(ctx: &Context, kind: Kind, path: &str, sha: &str) -> HttpResponse {
    let (git, prefix) = {
        let mut sim = ctx.sim.lock().expect("sim lock");
        let Ok(repo) = sim.repo(kind, path) else {
            return HttpResponse::NotFound().finish();
        };
        if let Some(bytes) = repo.archive_overrides.get(sha).cloned() {
            sim.stats(kind).archives += 1;
            return HttpResponse::Ok()
                .content_type("application/x-gzip")
                .body(bytes);
        }
        if !repo.commits.contains_key(sha) {
            return HttpResponse::NotFound().finish();
        }
        let prefix = match kind {
            Kind::Github => format!("{}-{}-{}", repo.owner, repo.name, &sha[..7]),
            Kind::Gitlab => format!("{}-{sha}-{sha}", repo.name),
        };
        let git = repo.git.clone();
        sim.stats(kind).archives += 1;
        (git, prefix)
    };
    // Outside the lock and off the workers: `git archive` takes a while and other
    // requests need not wait.
    let sha = sha.to_owned();
    let prefix_for_git = prefix.clone();
    let archived = tokio::task::spawn_blocking(move || git.archive(&sha, &prefix_for_git))
        .await
        .unwrap_or_else(|err| Err(crate::git::GitError::new("archive", err.to_string())));
    match archived {
        Ok(bytes) => HttpResponse::Ok()
            .content_type("application/x-gzip")
            .insert_header((
                "Content-Disposition",
                format!("attachment; filename={prefix}.tar.gz"),
            ))
            .body(bytes),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

/// The project a GitLab token may see, by numeric id or URL-encoded path.
fn gitlab_project<'a>(sim: &'a Sim, id: &str) -> Option<&'a Repo> {
    match id.parse::<i64>() {
        Ok(numeric) => sim
            .repos
            .values()
            .find(|r| r.kind == Kind::Gitlab && r.id == numeric),
        Err(_) => sim.repos.get(&key(Kind::Gitlab, id)),
    }
}

fn gitlab(req: &HttpRequest, path: &str, body: &[u8], ctx: &Context) -> Answer {
    if req.method() != Method::GET && req.method() != Method::POST {
        return gitlab_error(StatusCode::NOT_FOUND, "404 Not Found").into();
    }
    let segments: Vec<String> = path.split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut sim = ctx.sim.lock().expect("sim lock");
    let token = req
        .headers()
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(scope) = token.and_then(|t| sim.gitlab_tokens.get(&t).cloned()) else {
        return gitlab_error(StatusCode::UNAUTHORIZED, "401 Unauthorized").into();
    };
    if let Some(limited) = rate_exhausted(&mut sim, Kind::Gitlab) {
        return limited.into();
    }
    let base = ctx.base_url.as_str();
    let not_found =
        |what: &str| gitlab_error(StatusCode::NOT_FOUND, &format!("404 {what} Not Found"));
    match segments.as_slice() {
        ["user"] => {
            let value = render::gitlab_user(base);
            conditional_json(req, &mut sim, Kind::Gitlab, &value, HttpResponse::Ok()).into()
        }
        ["projects", id, rest @ ..] => {
            let Some(repo) = gitlab_project(&sim, id) else {
                return not_found("Project").into();
            };
            if scope
                .as_ref()
                .is_some_and(|s| !s.contains(&repo.full_path().to_ascii_lowercase()))
            {
                return not_found("Project").into();
            }
            let full = repo.full_path();
            if req.method() != Method::GET
                || matches!(rest, ["repository", "commits", _, "statuses"])
            {
                return crate::checks::gitlab(req, &mut sim, &full, rest, body).into();
            }
            let value = match rest {
                [] => render::gitlab_project(base, repo),
                ["repository", "branches", branch] => {
                    let Some(commit) = repo.branches.get(*branch).and_then(|sha| repo.commit(sha))
                    else {
                        return not_found("Branch").into();
                    };
                    render::gitlab_branch(base, repo, branch, commit)
                }
                ["merge_requests"] => {
                    return gitlab_merge_requests(req, &mut sim, &full, base).into()
                }
                ["repository", "tags"] => return gitlab_tags(req, &mut sim, &full, base).into(),
                ["repository", "compare"] => {
                    return gitlab_compare(req, &mut sim, &full, base).into()
                }
                ["merge_requests", iid, "diffs"] => {
                    return gitlab_merge_request_diffs(req, &mut sim, &full, iid).into()
                }
                ["repository", "archive.tar.gz"] | ["repository", "archive"] => {
                    let reference =
                        param(&query(req), "sha").unwrap_or_else(|| repo.default_branch.clone());
                    let sha = repo.branches.get(&reference).cloned().unwrap_or(reference);
                    sim.stats(Kind::Gitlab).counted += 1;
                    return Answer::Archive(Kind::Gitlab, full, sha);
                }
                _ => return not_found("").into(),
            };
            conditional_json(req, &mut sim, Kind::Gitlab, &value, HttpResponse::Ok()).into()
        }
        _ => not_found("").into(),
    }
}

fn gitlab_merge_requests(req: &HttpRequest, sim: &mut Sim, full: &str, base: &str) -> HttpResponse {
    let pairs = query(req);
    let state_filter = param(&pairs, "state").unwrap_or_else(|| "all".into());
    let target = param(&pairs, "target_branch");
    let (per_page, page) = (per_page(req, 20), page(req));
    let keep = |state: PullState| match state_filter.as_str() {
        "opened" => state == PullState::Open,
        "closed" => state == PullState::Closed,
        "merged" => state == PullState::Merged,
        _ => true,
    };
    let (items, total) = page_of_pulls(
        sim,
        Kind::Gitlab,
        full,
        keep,
        target.as_deref(),
        per_page,
        page,
        |repo, head, pull, sha| render::gitlab_merge_request(base, repo, head, pull, sha),
    );
    let response = gitlab_page(total, per_page, page);
    let value = Value::Array(items);
    conditional_json(req, sim, Kind::Gitlab, &value, response)
}
