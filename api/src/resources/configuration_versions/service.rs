use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::models::ConfigurationVersion;
use terrapod_shared::db::schema::{configuration_archives, configuration_versions};
use terrapod_shared::ids::ConfigurationVersionId;

use crate::error::ApiError;

fn parse_id(id: &str) -> Result<ConfigurationVersionId, ApiError> {
    ConfigurationVersionId::parse(id).map_err(|_| ApiError::not_found("configuration version", id))
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    id: &str,
) -> Result<ConfigurationVersion, ApiError> {
    configuration_versions::table
        .find(&parse_id(id)?)
        .select(ConfigurationVersion::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("configuration version", id))
}

/// The stored tarball of a configuration version: its SHA-256 and size (the chunks
/// are streamed by the handler).
pub async fn tarball(conn: &mut AsyncPgConnection, id: &str) -> Result<(String, i64), ApiError> {
    configuration_versions::table
        .inner_join(configuration_archives::table)
        .filter(configuration_versions::id.eq(&parse_id(id)?))
        .select((configuration_archives::sha256, configuration_archives::size))
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("configuration version", id))
}
