//! Organizations are addressed by name; only their existence matters here.

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
