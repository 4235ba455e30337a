//! `/api/v2/configuration-versions/{id}` and its tarball.

pub mod service;
pub mod view;

use actix_web::{web, HttpResponse};
use terrapod_shared::archives;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi;
use crate::startup::AppState;

/// `?include=ingress_attributes` adds them as `included` (TFE).
pub async fn show(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let include = jsonapi::query_param(&req, "include")?;
    let wants_ingress = include.as_deref().is_some_and(|list| {
        list.split(',')
            .any(|item| item.trim() == "ingress_attributes")
    });
    let mut conn = state.pool.get().await?;
    let cv = service::find(&mut conn, &id).await?;
    let mut document = serde_json::json!({"data": view::render(&cv)});
    if wants_ingress {
        document["included"] =
            serde_json::Value::Array(view::render_ingress(&cv).into_iter().collect());
    }
    Ok(HttpResponse::Ok()
        .content_type(jsonapi::CONTENT_TYPE)
        .json(document))
}

/// `GET /api/v2/configuration-versions/{id}/ingress-attributes`: 404 for versions
/// recorded before they were kept.
pub async fn ingress_attributes(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let cv = service::find(&mut conn, &id).await?;
    let rendered = view::render_ingress(&cv).ok_or_else(|| {
        ApiError::NotFound(format!(
            "configuration version `{id}` has no ingress attributes (recorded before they were kept)"
        ))
    })?;
    Ok(jsonapi::ok(rendered))
}

/// `GET /api/v2/workspaces/{id}/configuration-versions`, newest first.
pub async fn list(
    _caller: Caller,
    state: web::Data<AppState>,
    workspace_id: web::Path<String>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let page = jsonapi::Page::from_query(&req)?;
    let mut conn = state.pool.get().await?;
    let (rows, total) = service::list_for_workspace(&mut conn, &workspace_id, page).await?;
    Ok(jsonapi::list(
        rows.iter().map(view::render).collect(),
        page,
        total,
    ))
}

/// Streams the tarball chunk by chunk (each read on a connection of its own), so a
/// large archive never sits in the API's memory whole.
pub async fn download(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (sha256, size) = service::tarball(&mut *state.pool.get().await?, &id).await?;
    let pool = state.pool.clone();
    let chunks = futures_util::stream::try_unfold(0i32, move |seq| {
        let (pool, sha256) = (pool.clone(), sha256.clone());
        async move {
            let mut conn = pool.get().await.map_err(std::io::Error::other)?;
            let chunk = archives::chunk(&mut conn, &sha256, seq)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(chunk.map(|data| (web::Bytes::from(data), seq + 1)))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{id}.tar.gz\""),
        ))
        .no_chunking(u64::try_from(size).unwrap_or(0))
        .streaming(chunks))
}
