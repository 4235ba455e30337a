//! `GET /api/v2/workspaces/{id}/vcs-events`: what the VCS side did for a workspace and
//! why (SPEC section 9), newest first.

pub mod service;
pub mod view;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi::{self, Page};
use crate::startup::AppState;

pub async fn list(
    _caller: Caller,
    state: web::Data<AppState>,
    workspace_id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = Page::from_query(&req)?;
    let mut conn = state.pool.get().await?;
    let (rows, total) = service::list_for_workspace(&mut conn, &workspace_id, page).await?;
    Ok(jsonapi::list(
        rows.iter().map(view::render).collect(),
        page,
        total,
    ))
}
