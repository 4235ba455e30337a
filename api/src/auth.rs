//! Bearer-token authentication and the roles. A middleware authenticates and
//! authorizes every request of the API before its handler runs — before any body is
//! read — so a wrong token is a 401 and a missing role a 403, whatever the body.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use terrapod_shared::domain::Role;
use terrapod_shared::tokens;

use crate::error::ApiError;
use crate::startup::AppState;

/// Recently verified tokens (by digest, never in clear), so a busy client costs no
/// token query per request. Bounded; an entry lasts [`TOKEN_CACHE_TTL`], so a revoked
/// token stops working within that on every replica.
pub struct TokenCache {
    entries: moka::sync::Cache<Vec<u8>, Role>,
}

pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Verified tokens remembered at most.
const TOKEN_CACHE_MAX: u64 = 10_000;

impl TokenCache {
    pub fn new() -> Self {
        TokenCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_MAX)
                .time_to_live(TOKEN_CACHE_TTL)
                .build(),
        }
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The authenticated caller of a request (set by [`authenticate_requests`]).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
}

/// Routes under `/api/v2` that need no token: they are public or authenticate by
/// signature.
fn is_public(route: &str) -> bool {
    matches!(
        route,
        "/api/v2/ping" | "/api/v2/vcs-events/github" | "/api/v2/vcs-events/gitlab"
    )
}

/// The route executors move runs through.
const TRANSITION_ROUTE: &str = "/api/v2/runs/{id}/actions/transition";

/// What executors may read: workspaces, runs and configuration versions.
fn executor_may_read(route: &str) -> bool {
    matches!(
        route,
        "/api/v2/organizations/{org}/workspaces"
            | "/api/v2/organizations/{org}/workspaces/{name}"
            | "/api/v2/workspaces/{id}"
            | "/api/v2/workspaces/{id}/runs"
            | "/api/v2/workspaces/{id}/configuration-versions"
            | "/api/v2/runs/{id}"
            | "/api/v2/configuration-versions/{id}"
            | "/api/v2/configuration-versions/{id}/download"
            | "/api/v2/configuration-versions/{id}/ingress-attributes"
    )
}

/// What each role may do: admins everything; members everything but changing VCS
/// connections and moving runs; executors read workspaces, runs and configuration
/// versions and move runs, nothing else (SPEC sections 3, 4 and 9).
pub fn authorize(role: Role, method: &Method, route: &str) -> Result<(), ApiError> {
    let changes_connections = method != Method::GET
        && matches!(
            route,
            "/api/v2/organizations/{org}/vcs-connections" | "/api/v2/vcs-connections/{id}"
        );
    let moves_runs = route == TRANSITION_ROUTE;
    match role {
        Role::Admin => Ok(()),
        Role::Member if changes_connections => Err(ApiError::Forbidden(
            "only admin tokens may create, change or delete VCS connections".into(),
        )),
        Role::Member if moves_runs => Err(ApiError::Forbidden(
            "only executor and admin tokens may move runs".into(),
        )),
        Role::Member => Ok(()),
        Role::Executor if moves_runs => Ok(()),
        Role::Executor if method == Method::GET && executor_may_read(route) => Ok(()),
        Role::Executor => Err(ApiError::Forbidden(
            "executor tokens may only read workspaces, runs and configuration versions and move runs".into(),
        )),
    }
}

fn bearer_token(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

async fn verify(state: &AppState, token: &str) -> Result<Role, ApiError> {
    let digest = tokens::digest_of(token);
    if let Some(role) = state.token_cache.entries.get(&digest) {
        return Ok(role);
    }
    let mut conn = state.pool.get().await?;
    let found = tokens::authenticate(&mut conn, token).await?;
    let role = found.map(|row| row.role).ok_or(ApiError::Unauthorized)?;
    state.token_cache.entries.insert(digest, role);
    Ok(role)
}

/// Authenticates and authorizes every request to a known `/api/v2` route but the
/// public ones, and hands the [`Caller`] to the handler. A refusal is answered here,
/// as a response (so the request is still counted and logged). Unknown routes go on
/// to their 404.
pub async fn authenticate_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(route) = crate::routes::RoutePattern::of(&req) {
        if route.starts_with("/api/v2/") && !is_public(&route) {
            match caller_of(&req, &route).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(err) => return Ok(req.error_response(err).map_into_right_body()),
            }
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

async fn caller_of(req: &ServiceRequest, route: &str) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Unavailable("application state missing".into()))?;
    let token = bearer_token(req).ok_or(ApiError::Unauthorized)?;
    let role = verify(state, &token).await?;
    authorize(role, req.method(), route)?;
    Ok(Caller { role })
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .copied()
                .ok_or(ApiError::Unauthorized),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_may_do_everything_but_change_connections() {
        let connections = "/api/v2/vcs-connections/{id}";
        assert!(authorize(Role::Member, &Method::GET, connections).is_ok());
        assert!(authorize(Role::Member, &Method::PATCH, connections).is_err());
        assert!(authorize(
            Role::Member,
            &Method::POST,
            "/api/v2/organizations/{org}/vcs-connections"
        )
        .is_err());
        assert!(authorize(Role::Member, &Method::PATCH, "/api/v2/workspaces/{id}").is_ok());
        assert!(authorize(Role::Admin, &Method::DELETE, connections).is_ok());
        assert!(authorize(Role::Member, &Method::POST, TRANSITION_ROUTE).is_err());
    }

    #[test]
    fn executors_read_and_move_runs_only() {
        assert!(authorize(Role::Executor, &Method::POST, TRANSITION_ROUTE).is_ok());
        assert!(authorize(Role::Executor, &Method::GET, "/api/v2/runs/{id}").is_ok());
        assert!(authorize(Role::Executor, &Method::GET, "/api/v2/workspaces/{id}").is_ok());
        for (method, route) in [
            (Method::PATCH, "/api/v2/workspaces/{id}"),
            (Method::DELETE, "/api/v2/workspaces/{id}"),
            (Method::GET, "/api/v2/vcs-connections/{id}"),
            (Method::POST, "/api/v2/runs/{id}/actions/apply"),
            (Method::POST, "/api/v2/workspaces/{id}/actions/poll-vcs"),
            (Method::GET, "/api/v2/workspaces/{id}/vcs-events"),
        ] {
            assert!(
                authorize(Role::Executor, &method, route).is_err(),
                "{method} {route}"
            );
        }
    }
}
