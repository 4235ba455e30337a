//! `/api/v2/organizations/{org}/workspaces` and `/api/v2/workspaces/{id}`.

pub mod service;
pub mod view;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use terrapod_shared::queue::PollReason;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi::{self, InputDocument, JsonApiBody, Page};
use crate::startup::AppState;
use service::{WorkspaceAttributes, WorkspaceRelationships};

const KIND: &str = "workspaces";

type WorkspaceDocument = InputDocument<WorkspaceAttributes, WorkspaceRelationships>;

pub async fn create(
    _caller: Caller,
    state: web::Data<AppState>,
    organization: web::Path<String>,
    body: JsonApiBody<WorkspaceDocument>,
) -> Result<HttpResponse, ApiError> {
    let (attrs, relationships) = body.0.data.accept(KIND, None)?;
    let mut conn = state.pool.get().await?;
    let created = service::create(&mut conn, &organization, attrs, relationships).await?;
    drop(conn);
    tracing::info!(workspace.id = %created.id, "workspace created");
    if created.vcs_connection_id.is_some() {
        crate::polls::queue_best_effort(&state, &created.id, PollReason::Linked).await;
    }
    Ok(jsonapi::document(
        StatusCode::CREATED,
        view::render(&created),
    ))
}

pub async fn list(
    _caller: Caller,
    state: web::Data<AppState>,
    organization: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = Page::from_query(&req)?;
    let mut conn = state.pool.get().await?;
    let (rows, total) = service::list(&mut conn, &organization, page).await?;
    Ok(jsonapi::list(
        rows.iter().map(view::render).collect(),
        page,
        total,
    ))
}

pub async fn show_by_name(
    _caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organization, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    Ok(jsonapi::ok(view::render(
        &service::find_by_name(&mut conn, &organization, &name).await?,
    )))
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

pub async fn update(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonApiBody<WorkspaceDocument>,
) -> Result<HttpResponse, ApiError> {
    let (attrs, relationships) = body.0.data.accept(KIND, Some(&id))?;
    let mut conn = state.pool.get().await?;
    let updated = service::update(&mut conn, &id, attrs, relationships).await?;
    drop(conn);
    if updated.vcs_settings_changed && updated.workspace.vcs_connection_id.is_some() {
        crate::polls::queue_best_effort(&state, &updated.workspace.id, PollReason::Linked).await;
    }
    Ok(jsonapi::ok(view::render(&updated.workspace)))
}

/// Queues an immediate poll of a linked workspace (202), or 503 when the broker
/// cannot take it.
pub async fn poll_vcs(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let workspace = service::find(&mut *state.pool.get().await?, &id).await?;
    if workspace.vcs_connection_id.is_none() || workspace.vcs_repo_url.is_empty() {
        return Err(ApiError::Unprocessable(
            "the workspace is not linked to a repository through a VCS connection".into(),
        ));
    }
    crate::polls::queue(
        &state,
        std::slice::from_ref(&workspace.id),
        PollReason::Manual,
        None,
    )
    .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({"message": "poll queued"})))
}

pub async fn delete(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    service::delete(&mut conn, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
