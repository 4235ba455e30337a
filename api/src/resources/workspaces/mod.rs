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

/// The workspace as the caller sees it, with its connection's `vcs-repo`.
async fn rendered(
    conn: &mut diesel_async::AsyncPgConnection,
    workspace: &terrapod_shared::db::models::Workspace,
    caller: Caller,
) -> Result<serde_json::Value, ApiError> {
    let connection = service::connection_of(conn, workspace).await?;
    Ok(view::render(workspace, connection.as_ref(), caller.role))
}

pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    organization: web::Path<String>,
    body: JsonApiBody<WorkspaceDocument>,
) -> Result<HttpResponse, ApiError> {
    let (attrs, relationships) = body.0.data.accept(KIND, None)?;
    let mut conn = state.pool.get().await?;
    let created = service::create(&mut conn, &organization, attrs, relationships).await?;
    let body = rendered(&mut conn, &created, caller).await?;
    drop(conn);
    tracing::info!(workspace.id = %created.id, "workspace created");
    if created.vcs_connection_id.is_some() {
        crate::polls::queue_best_effort(&state, &created.id, PollReason::Linked).await;
    }
    Ok(jsonapi::document(StatusCode::CREATED, body))
}

pub async fn list(
    caller: Caller,
    state: web::Data<AppState>,
    organization: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = Page::from_query(&req)?;
    jsonapi::refuse_unknown_filters(&req, &["search[name]"])?;
    let search = jsonapi::query_param(&req, "search[name]")?;
    let mut conn = state.pool.get().await?;
    let (rows, total) = service::list(&mut conn, &organization, search.as_deref(), page).await?;
    Ok(jsonapi::list(
        rows.iter()
            .map(|(workspace, connection)| {
                view::render(workspace, connection.as_ref(), caller.role)
            })
            .collect(),
        page,
        total,
    ))
}

pub async fn show_by_name(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organization, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    let workspace = service::find_by_name(&mut conn, &organization, &name).await?;
    Ok(jsonapi::ok(rendered(&mut conn, &workspace, caller).await?))
}

pub async fn show(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let (workspace, connection) = service::find_with_connection(&mut conn, &id).await?;
    Ok(jsonapi::ok(view::render(
        &workspace,
        connection.as_ref(),
        caller.role,
    )))
}

/// PATCH of a workspace by id or, with `by_name`, by organization and name (the body's
/// `id`, if any, must be the workspace's).
async fn update_workspace(
    caller: Caller,
    state: &AppState,
    id: String,
    body: WorkspaceDocument,
) -> Result<HttpResponse, ApiError> {
    let (attrs, relationships) = body.data.accept(KIND, Some(&id))?;
    let mut conn = state.pool.get().await?;
    let updated = service::update(&mut conn, &id, attrs, relationships).await?;
    let body = rendered(&mut conn, &updated.workspace, caller).await?;
    drop(conn);
    if updated.vcs_settings_changed && updated.workspace.vcs_connection_id.is_some() {
        crate::polls::queue_best_effort(state, &updated.workspace.id, PollReason::Linked).await;
    }
    Ok(jsonapi::ok(body))
}

pub async fn update(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: JsonApiBody<WorkspaceDocument>,
) -> Result<HttpResponse, ApiError> {
    update_workspace(caller, &state, id.into_inner(), body.0).await
}

pub async fn update_by_name(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: JsonApiBody<WorkspaceDocument>,
) -> Result<HttpResponse, ApiError> {
    let (organization, name) = path.into_inner();
    let id = {
        let mut conn = state.pool.get().await?;
        service::find_by_name(&mut conn, &organization, &name)
            .await?
            .id
    };
    update_workspace(caller, &state, id.to_string(), body.0).await
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

pub async fn delete_by_name(
    _caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (organization, name) = path.into_inner();
    let mut conn = state.pool.get().await?;
    let workspace = service::find_by_name(&mut conn, &organization, &name).await?;
    service::delete(&mut conn, workspace.id.as_str()).await?;
    Ok(HttpResponse::NoContent().finish())
}
