//! `/api/v2/organizations/{org}/vcs-connections` and `/api/v2/vcs-connections/{id}`.

pub mod service;
pub mod view;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi::{self, InputDocument, JsonApiBody, Page};
use crate::startup::AppState;
use service::ConnectionAttributes;
use terrapod_shared::queue::PollReason;

const KIND: &str = "vcs-connections";

pub async fn create(
    _caller: Caller,
    state: web::Data<AppState>,
    organization: web::Path<String>,
    body: JsonApiBody<InputDocument<ConnectionAttributes>>,
) -> Result<HttpResponse, ApiError> {
    let (attrs, _) = body.0.data.accept(KIND, None)?;
    let mut conn = state.pool.get().await?;
    let created = service::create(
        &mut conn,
        state.settings.encryption.as_ref(),
        &organization,
        attrs,
    )
    .await?;
    tracing::info!(vcs_connection.id = %created.id, provider = %created.provider, "VCS connection created");
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
    body: JsonApiBody<InputDocument<ConnectionAttributes>>,
) -> Result<HttpResponse, ApiError> {
    let (attrs, _) = body.0.data.accept(KIND, Some(&id))?;
    let mut conn = state.pool.get().await?;
    let updated =
        service::update(&mut conn, state.settings.encryption.as_ref(), &id, attrs).await?;
    drop(conn);
    if !updated.to_poll.is_empty() {
        // One confirmed message per workspace: a connection with thousands of them
        // should not hold the response.
        let (state, to_poll) = (state.clone(), updated.to_poll);
        actix_web::rt::spawn(async move {
            crate::polls::queue_all_best_effort(&state, &to_poll, PollReason::Linked).await;
        });
    }
    Ok(jsonapi::ok(view::render(&updated.connection)))
}

pub async fn delete(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    service::delete(&mut conn, &id).await?;
    tracing::info!(vcs_connection.id = %id, "VCS connection deleted");
    Ok(HttpResponse::NoContent().finish())
}
