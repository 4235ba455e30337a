//! Bearer-token authentication and the two roles.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use terrapod_shared::domain::Role;
use terrapod_shared::tokens;

use crate::error::ApiError;
use crate::startup::AppState;

/// Recently verified tokens (by digest, never in clear), so a busy client costs no
/// token query per request. Bounded, and each entry expires [`TOKEN_CACHE_TTL`] after
/// it was verified, so a change of a token's role is seen within that time.
pub struct TokenCache {
    entries: moka::sync::Cache<Vec<u8>, Role>,
}

pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
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

    fn get(&self, digest: &[u8]) -> Option<Role> {
        self.entries.get(digest)
    }

    fn insert(&self, digest: Vec<u8>, role: Role) {
        self.entries.insert(digest, role);
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
}

impl Caller {
    /// Only admins may create, change or delete VCS connections.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Member => Err(ApiError::Forbidden(
                "only admin tokens may create, change or delete VCS connections".into(),
            )),
        }
    }
}

fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let token = token.ok_or(ApiError::Unauthorized)?;
            let state =
                state.ok_or_else(|| ApiError::Unavailable("application state missing".into()))?;
            let digest = tokens::digest_of(&token);
            if let Some(role) = state.token_cache.get(&digest) {
                return Ok(Caller { role });
            }
            let mut conn = state.pool.get().await?;
            let found = tokens::authenticate(&mut conn, &token).await?;
            let caller = found
                .map(|row| Caller { role: row.role })
                .ok_or(ApiError::Unauthorized)?;
            state.token_cache.insert(digest, caller.role);
            Ok(caller)
        })
    }
}
