//! `/api/v2/workspaces/{id}/runs` and `/api/v2/runs/{id}`.

pub mod service;
pub mod view;

use actix_web::http::StatusCode;
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

pub async fn show(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    Ok(jsonapi::ok(view::render(
        &service::find(&mut conn, &id).await?,
    )))
}

pub async fn cancel(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let run = service::cancel(&mut conn, &id).await?;
    tracing::info!(run.id = %run.id, "run canceled");
    Ok(jsonapi::document(StatusCode::ACCEPTED, view::render(&run)))
}

pub async fn apply(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let run = service::apply(&mut conn, &id).await?;
    tracing::info!(run.id = %run.id, "run apply confirmed");
    Ok(jsonapi::document(StatusCode::ACCEPTED, view::render(&run)))
}
