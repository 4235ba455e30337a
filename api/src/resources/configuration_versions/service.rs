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

/// A workspace's configuration versions, newest first, with how many it has.
pub async fn list_for_workspace(
    conn: &mut AsyncPgConnection,
    workspace_id: &str,
    page: crate::jsonapi::Page,
) -> Result<(Vec<ConfigurationVersion>, i64), ApiError> {
    use terrapod_shared::db::schema::workspaces;
    let not_found = || ApiError::not_found("workspace", workspace_id);
    let id = terrapod_shared::ids::WorkspaceId::parse(workspace_id).map_err(|_| not_found())?;
    let exists: bool = diesel::select(diesel::dsl::exists(workspaces::table.find(&id)))
        .get_result(conn)
        .await?;
    if !exists {
        return Err(not_found());
    }
    let total: i64 = configuration_versions::table
        .filter(configuration_versions::workspace_id.eq(&id))
        .count()
        .get_result(conn)
        .await?;
    let rows = configuration_versions::table
        .filter(configuration_versions::workspace_id.eq(&id))
        .order((
            configuration_versions::created_at.desc(),
            configuration_versions::id.desc(),
        ))
        .limit(page.size)
        .offset(page.offset())
        .select(ConfigurationVersion::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
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
