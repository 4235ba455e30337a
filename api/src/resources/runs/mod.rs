//! `/api/v2/workspaces/{id}/runs` and `/api/v2/runs/{id}`.

pub mod service;
pub mod view;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi::{self, JsonApiBody, Page};
use crate::startup::AppState;
use terrapod_shared::domain::RunStatus;
use terrapod_shared::lifecycle::Mover;

pub async fn list(
    _caller: Caller,
    state: web::Data<AppState>,
    workspace_id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = Page::from_query(&req)?;
    let filter = service::RunFilter::from_query(&req)?;
    let mut conn = state.pool.get().await?;
    let (rows, total) =
        service::list_for_workspace(&mut conn, &workspace_id, &filter, page).await?;
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

/// A person's action on a run (cancel, apply, discard): 202 with the run, as TFE.
async fn act(state: &AppState, id: &str, to: RunStatus) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let run = match to {
        RunStatus::Confirmed => service::apply(&mut conn, id).await?,
        _ => service::move_to(&mut conn, id, to, Mover::Person, None).await?,
    };
    tracing::info!(run.id = %run.id, run.status = %run.status, "run moved by request");
    Ok(jsonapi::document(StatusCode::ACCEPTED, view::render(&run)))
}

pub async fn cancel(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act(&state, &id, RunStatus::Canceled).await
}

pub async fn apply(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act(&state, &id, RunStatus::Confirmed).await
}

pub async fn discard(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    act(&state, &id, RunStatus::Discarded).await
}

/// An executor reports progress: 200 with the moved run, 409 naming both statuses
/// when the lifecycle does not allow the move.
pub async fn transition(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonApiBody<service::TransitionRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0;
    let mut conn = state.pool.get().await?;
    let run = service::move_to(
        &mut conn,
        &id,
        request.status,
        Mover::Executor,
        request.message.as_deref(),
    )
    .await?;
    tracing::info!(run.id = %run.id, run.status = %run.status, "run moved by its executor");
    Ok(jsonapi::ok(view::render(&run)))
}
