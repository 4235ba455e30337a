//! `/api/v2/configuration-versions/{id}` and its tarball.

pub mod service;
pub mod view;

use actix_web::{web, HttpResponse};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::jsonapi;
use crate::startup::AppState;

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

pub async fn download(
    _caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let tarball = service::tarball(&mut conn, &id).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/gzip")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{id}.tar.gz\""),
        ))
        .body(tarball))
}
