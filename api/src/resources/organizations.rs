//! Organizations are addressed by name; `default` always exists. Read-only here.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::schema::organizations;
use terrapod_shared::domain::ResourceName;

use crate::error::ApiError;

/// 404 unless the organization exists.
pub async fn ensure_exists(conn: &mut AsyncPgConnection, name: &str) -> Result<(), ApiError> {
    if ResourceName::parse(name).is_err() {
        return Err(ApiError::not_found("organization", name));
    }
    let found: bool = diesel::select(diesel::dsl::exists(organizations::table.find(name)))
        .get_result(conn)
        .await?;
    if found {
        Ok(())
    } else {
        Err(ApiError::not_found("organization", name))
    }
}

/// `GET /api/v2/organizations/{org}` (type `organizations`, id = name, as TFE).
pub async fn show(
    _caller: crate::auth::Caller,
    state: actix_web::web::Data<crate::startup::AppState>,
    name: actix_web::web::Path<String>,
) -> Result<actix_web::HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let not_found = || ApiError::not_found("organization", &name);
    ResourceName::parse(&name).map_err(|_| not_found())?;
    let created_at: chrono::DateTime<chrono::Utc> = organizations::table
        .find(name.as_str())
        .select(organizations::created_at)
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(not_found)?;
    Ok(crate::jsonapi::ok(serde_json::json!({
        "id": name.as_str(),
        "type": "organizations",
        "attributes": {
            "name": name.as_str(),
            "created-at": crate::jsonapi::timestamp(created_at),
            "external-id": name.as_str(),
        },
        "links": {"self": format!("/api/v2/organizations/{}", name.as_str())},
    })))
}
