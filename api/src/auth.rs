//! Bearer-token authentication and the two roles.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use terrapod_shared::domain::Role;
use terrapod_shared::tokens;

use crate::error::ApiError;
use crate::startup::AppState;

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
            let mut conn = state.pool.get().await?;
            let found = tokens::authenticate(&mut conn, &token).await?;
            found
                .map(|row| Caller { role: row.role })
                .ok_or(ApiError::Unauthorized)
        })
    }
}
