//! Rows as stored. Serialization to the API lives in `terrapod-api`'s views, never here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::schema::{api_tokens, configuration_versions, runs, vcs_connections, workspaces};
use crate::domain::{ConnectionStatus, ExecutionMode, Provider, Role, RunStatus, TriggerReason};
use crate::ids::{ConfigurationVersionId, RunId, VcsConnectionId, WorkspaceId};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_tokens, check_for_backend(diesel::pg::Pg))]
pub struct ApiToken {
    pub id: i64,
    pub role: Role,
    pub description: String,
}

#[derive(Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = vcs_connections, check_for_backend(diesel::pg::Pg))]
pub struct VcsConnection {
    pub id: VcsConnectionId,
    pub organization_name: String,
    pub name: String,
    pub provider: Provider,
    pub server_url: String,
    pub status: ConnectionStatus,
    pub github_app_id: Option<i64>,
    pub github_installation_id: Option<i64>,
    pub github_account_login: Option<String>,
    pub github_account_type: Option<String>,
    /// Fernet ciphertext; decrypt only where the clear value is needed.
    pub encrypted_credential: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// Hand-written so the ciphertext never reaches a log line either.
impl std::fmt::Debug for VcsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcsConnection")
            .field("id", &self.id)
            .field("organization_name", &self.organization_name)
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("server_url", &self.server_url)
            .field("status", &self.status)
            .field("has_credentials", &self.encrypted_credential.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Insertable)]
#[diesel(table_name = vcs_connections)]
pub struct NewVcsConnection<'a> {
    pub id: &'a VcsConnectionId,
    pub organization_name: &'a str,
    pub name: &'a str,
    pub provider: Provider,
    pub server_url: &'a str,
    pub status: ConnectionStatus,
    pub github_app_id: Option<i64>,
    pub github_installation_id: Option<i64>,
    pub github_account_login: Option<&'a str>,
    pub github_account_type: Option<&'a str>,
    pub encrypted_credential: Option<&'a str>,
}

/// A partial update; `None` leaves a column as it is.
#[derive(AsChangeset, Default)]
#[diesel(table_name = vcs_connections)]
pub struct VcsConnectionChanges {
    pub name: Option<String>,
    pub server_url: Option<String>,
    pub status: Option<ConnectionStatus>,
    pub github_app_id: Option<Option<i64>>,
    pub github_installation_id: Option<Option<i64>>,
    pub github_account_login: Option<Option<String>>,
    pub github_account_type: Option<Option<String>>,
    pub encrypted_credential: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = workspaces, check_for_backend(diesel::pg::Pg))]
pub struct Workspace {
    pub id: WorkspaceId,
    pub organization_name: String,
    pub name: String,
    pub execution_mode: ExecutionMode,
    pub auto_apply: bool,
    pub vcs_connection_id: Option<VcsConnectionId>,
    pub vcs_repo_url: String,
    pub vcs_branch: String,
    pub working_directory: String,
    pub vcs_last_commit_sha: Option<String>,
    pub vcs_last_polled_at: Option<DateTime<Utc>>,
    pub vcs_last_error: Option<String>,
    pub vcs_last_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped whenever the VCS settings change; polls record results only for the
    /// generation they read.
    pub vcs_settings_generation: i64,
    pub file_triggers_enabled: bool,
    pub trigger_prefixes: Vec<String>,
    pub trigger_patterns: Vec<String>,
    pub speculative_enabled: bool,
    /// When set, the workspace follows matching tags instead of branch commits.
    pub vcs_tags_regex: Option<String>,
    pub vcs_tags_baselined_at: Option<DateTime<Utc>>,
}

#[derive(Insertable)]
#[diesel(table_name = workspaces)]
pub struct NewWorkspace<'a> {
    pub id: &'a WorkspaceId,
    pub organization_name: &'a str,
    pub name: &'a str,
    pub execution_mode: ExecutionMode,
    pub auto_apply: bool,
    pub vcs_connection_id: Option<&'a VcsConnectionId>,
    pub vcs_repo_url: &'a str,
    /// The URL's repository path, lowercased; empty when unlinked.
    pub vcs_repo_path: &'a str,
    pub vcs_branch: &'a str,
    pub working_directory: &'a str,
    pub file_triggers_enabled: bool,
    pub trigger_prefixes: &'a [String],
    pub trigger_patterns: &'a [String],
    pub speculative_enabled: bool,
    pub vcs_tags_regex: Option<&'a str>,
}

/// A partial update; `None` leaves a column as it is.
#[derive(AsChangeset, Default)]
#[diesel(table_name = workspaces)]
pub struct WorkspaceChanges {
    pub name: Option<String>,
    pub execution_mode: Option<ExecutionMode>,
    pub auto_apply: Option<bool>,
    pub vcs_connection_id: Option<Option<VcsConnectionId>>,
    pub vcs_repo_url: Option<String>,
    pub vcs_repo_path: Option<String>,
    pub vcs_branch: Option<String>,
    pub working_directory: Option<String>,
    pub vcs_last_commit_sha: Option<Option<String>>,
    pub vcs_last_error: Option<Option<String>>,
    pub vcs_last_error_at: Option<Option<DateTime<Utc>>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub file_triggers_enabled: Option<bool>,
    pub trigger_prefixes: Option<Vec<String>>,
    pub trigger_patterns: Option<Vec<String>>,
    pub speculative_enabled: Option<bool>,
    pub vcs_tags_regex: Option<Option<String>>,
    pub vcs_tags_baselined_at: Option<Option<DateTime<Utc>>>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = configuration_versions, check_for_backend(diesel::pg::Pg))]
pub struct ConfigurationVersion {
    pub id: ConfigurationVersionId,
    pub workspace_id: WorkspaceId,
    pub source: String,
    pub status: String,
    pub speculative: bool,
    pub vcs_commit_sha: String,
    pub vcs_branch: String,
    pub vcs_pull_request_number: Option<i64>,
    pub working_directory: String,
    pub archive_sha256: String,
    pub size: i64,
    pub created_at: DateTime<Utc>,
    /// TFE's ingress attributes (`runs::ingress_attributes`); `None` before they were kept.
    pub ingress: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = runs, check_for_backend(diesel::pg::Pg))]
pub struct Run {
    pub id: RunId,
    pub workspace_id: WorkspaceId,
    pub configuration_version_id: ConfigurationVersionId,
    pub status: RunStatus,
    pub source: String,
    pub plan_only: bool,
    pub auto_apply: bool,
    pub message: String,
    pub trigger_reason: TriggerReason,
    pub vcs_commit_sha: String,
    pub vcs_branch: String,
    pub vcs_pull_request_number: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tag whose push or move made a `tag` run.
    pub vcs_tag: Option<String>,
    /// `{"planning-at": "…", …}`: when the run reached each status (SPEC section 9).
    pub status_timestamps: RawJson,
    /// Counts the run's status changes (1 when created); orders its run events.
    pub status_sequence: i64,
    /// What the executor said with its last transition.
    pub status_message: Option<String>,
}

/// One entry of a workspace's event log (SPEC section 9).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = crate::db::schema::vcs_events, check_for_backend(diesel::pg::Pg))]
pub struct VcsEvent {
    pub id: i64,
    pub kind: String,
    pub commit_sha: Option<String>,
    pub pull_request_number: Option<i64>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub run_id: Option<String>,
}

/// A JSONB value kept as the text PostgreSQL sent: read without building a tree and
/// written into responses as is (the run list is the API's hottest route).
#[derive(Debug, Clone, diesel::deserialize::FromSqlRow)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Jsonb, diesel::pg::Pg> for RawJson {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        // Binary JSONB is a version byte (1) and the document's text.
        match value.as_bytes().split_first() {
            Some((1, text)) => Ok(RawJson(serde_json::value::RawValue::from_string(
                std::str::from_utf8(text)?.to_owned(),
            )?)),
            _ => Err("unsupported JSONB encoding".into()),
        }
    }
}

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
