//! Workspaces: validation of their VCS settings against the linked connection, storage.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Deserializer};
use terrapod_shared::db::models::{NewWorkspace, VcsConnection, Workspace, WorkspaceChanges};
use terrapod_shared::db::schema::{vcs_connections, workspaces};
use terrapod_shared::domain::{BranchName, ExecutionMode, ResourceName, WorkingDirectory};
use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
use terrapod_shared::triggers;
use terrapod_shared::vcs::RepoUrl;

use crate::error::ApiError;
use crate::jsonapi::{Page, RelationshipInput};
use crate::resources::{organizations, unique_violation};

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct WorkspaceAttributes {
    pub name: Option<String>,
    pub execution_mode: Option<String>,
    pub auto_apply: Option<bool>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub vcs_repo_url: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub vcs_branch: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub vcs_working_directory: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub working_directory: Option<String>,
    #[serde(default, deserialize_with = "file_triggers_flag")]
    pub file_triggers_enabled: Option<bool>,
    #[serde(default, deserialize_with = "null_as_no_items")]
    pub trigger_prefixes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_as_no_items")]
    pub trigger_patterns: Option<Vec<String>>,
    #[serde(default, deserialize_with = "speculative_flag")]
    pub speculative_enabled: Option<bool>,
    /// Present (`Some`) even when `null`, to tell "unset" from "absent".
    #[serde(default, deserialize_with = "present")]
    pub vcs_tags_regex: Option<Option<String>>,
    /// TFE's `vcs-repo` object; `Some(None)` is an explicit `null` (disconnect).
    #[serde(default, deserialize_with = "present_object")]
    pub vcs_repo: Option<Option<VcsRepoInput>>,
    /// TFE attributes this product knows but does not implement (SPEC section 10).
    #[serde(flatten)]
    pub unsupported: UnsupportedAttributes,
}

/// TFE's `vcs-repo` on writes: `identifier` and `oauth-token-id` (a `vcs-…` connection
/// id) link; `branch` and `tags-regex` as the flat fields.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct VcsRepoInput {
    pub identifier: Option<String>,
    pub oauth_token_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub branch: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub tags_regex: Option<Option<String>>,
    pub ingress_submodules: Option<bool>,
    pub github_app_installation_id: Option<serde_json::Value>,
}

/// Known TFE workspace attributes without an implementation here: accepted only with
/// their default (or `null`), refused by name otherwise — never silently ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct UnsupportedAttributes {
    allow_destroy_plan: Option<serde_json::Value>,
    queue_all_runs: Option<serde_json::Value>,
    assessments_enabled: Option<serde_json::Value>,
    global_remote_state: Option<serde_json::Value>,
    auto_apply_run_trigger: Option<serde_json::Value>,
    agent_pool_id: Option<serde_json::Value>,
    terraform_version: Option<serde_json::Value>,
    source_name: Option<serde_json::Value>,
    source_url: Option<serde_json::Value>,
    migration_environment: Option<serde_json::Value>,
    description: Option<serde_json::Value>,
    operations: Option<serde_json::Value>,
    auto_destroy_at: Option<serde_json::Value>,
}

impl UnsupportedAttributes {
    /// 422 naming every attribute sent with a value other than its default.
    fn refuse_non_defaults(&self) -> Result<(), ApiError> {
        use serde_json::Value;
        let is = |value: &Option<Value>, default: Value| {
            value.as_ref().is_none_or(|v| v.is_null() || *v == default)
        };
        let empty = || Value::String(String::new());
        let offending: Vec<&str> = [
            (
                "allow-destroy-plan",
                is(&self.allow_destroy_plan, Value::Bool(true)),
            ),
            // Linking always plans the head at once: TFE's `queue-all-runs: true`.
            (
                "queue-all-runs",
                is(&self.queue_all_runs, Value::Bool(true)),
            ),
            (
                "assessments-enabled",
                is(&self.assessments_enabled, Value::Bool(false)),
            ),
            (
                "global-remote-state",
                is(&self.global_remote_state, Value::Bool(false)),
            ),
            (
                "auto-apply-run-trigger",
                is(&self.auto_apply_run_trigger, Value::Bool(false)),
            ),
            ("agent-pool-id", is(&self.agent_pool_id, Value::Null)),
            ("terraform-version", is(&self.terraform_version, empty())),
            ("source-name", is(&self.source_name, empty())),
            ("source-url", is(&self.source_url, empty())),
            (
                "migration-environment",
                is(&self.migration_environment, empty()),
            ),
            ("description", is(&self.description, empty())),
            // The legacy switch for remote execution; `execution-mode` is what is kept.
            ("operations", is(&self.operations, Value::Bool(true))),
            ("auto-destroy-at", is(&self.auto_destroy_at, Value::Null)),
        ]
        .into_iter()
        .filter(|(_, default)| !default)
        .map(|(name, _)| name)
        .collect();
        if offending.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unprocessable(format!(
                "not supported by this server (only the default is accepted): {}",
                offending.join(", ")
            )))
        }
    }
}

/// An object that may be `null`: `Some(None)` tells an explicit `null` from absence.
fn present_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<VcsRepoInput>>, D::Error> {
    Ok(Some(Option::<VcsRepoInput>::deserialize(deserializer)?))
}

#[derive(Deserialize, Default)]
pub struct WorkspaceRelationships {
    #[serde(rename = "vcs-connection")]
    pub vcs_connection: Option<RelationshipInput>,
}

/// A present `null` means "clear it" (`""`); an absent key means "leave it".
fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Some(
        Option::<String>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

/// A boolean setting that, when present, must be `true` or `false` (not `null`).
fn present_bool<'de, D: Deserializer<'de>>(
    deserializer: D,
    name: &'static str,
) -> Result<Option<bool>, D::Error> {
    Option::<bool>::deserialize(deserializer)?
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{name} must be true or false, not null")))
}

fn file_triggers_flag<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    present_bool(deserializer, "file-triggers-enabled")
}

fn speculative_flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    present_bool(deserializer, "speculative-enabled")
}

/// A present `null` list means "no items".
fn null_as_no_items<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Some(
        Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(deserializer)?))
}

/// Trigger prefixes and patterns a request sets (`None`: left as they are).
type TriggerLists = (Option<Vec<String>>, Option<Vec<String>>);

/// The trigger lists a request sets, validated and normalised; `existing` are the
/// stored ones (an update may set one list and keep the other).
fn trigger_lists(
    attrs: &WorkspaceAttributes,
    existing: Option<&Workspace>,
) -> Result<TriggerLists, ApiError> {
    let parse_all = |items: &Option<Vec<String>>,
                     name: &str,
                     parse: fn(&str) -> Result<String, terrapod_shared::domain::ParseError>|
     -> Result<Option<Vec<String>>, ApiError> {
        let Some(items) = items else { return Ok(None) };
        if items.len() > triggers::MAX_TRIGGERS {
            return Err(ApiError::Unprocessable(format!(
                "{name}: at most {} entries",
                triggers::MAX_TRIGGERS
            )));
        }
        let mut parsed: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let item = parse(item).map_err(unprocessable)?;
            if !parsed.contains(&item) {
                parsed.push(item);
            }
        }
        Ok(Some(parsed))
    };
    let prefixes = parse_all(
        &attrs.trigger_prefixes,
        "trigger-prefixes",
        triggers::parse_prefix,
    )?;
    let patterns = parse_all(
        &attrs.trigger_patterns,
        "trigger-patterns",
        triggers::parse_pattern,
    )?;
    let has_prefixes = prefixes
        .as_ref()
        .or(existing.map(|w| &w.trigger_prefixes))
        .is_some_and(|p| !p.is_empty());
    let has_patterns = patterns
        .as_ref()
        .or(existing.map(|w| &w.trigger_patterns))
        .is_some_and(|p| !p.is_empty());
    if let Some(patterns) = &patterns {
        // The set is compiled as the poller will compile it.
        triggers::TriggerRules::new("", &[], patterns)
            .map_err(|err| ApiError::Unprocessable(format!("trigger-patterns: {err}")))?;
    }
    if has_prefixes && has_patterns {
        return Err(ApiError::Unprocessable(
            "trigger-prefixes and trigger-patterns cannot both be set: patterns replace the working-directory and prefix rule".into(),
        ));
    }
    Ok((prefixes, patterns))
}

/// The `vcs-tags-regex` a request sets: `Some(None)` unsets it (`null` or `""`).
fn tags_regex(attrs: &WorkspaceAttributes) -> Result<Option<Option<String>>, ApiError> {
    let Some(raw) = &attrs.vcs_tags_regex else {
        return Ok(None);
    };
    match raw.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(Some(None)),
        Some(regex) => {
            triggers::parse_tags_regex(regex).map_err(unprocessable)?;
            Ok(Some(Some(regex.to_owned())))
        }
    }
}

fn unprocessable(err: impl std::fmt::Display) -> ApiError {
    ApiError::Unprocessable(err.to_string())
}

fn map_conflict(err: diesel::result::Error) -> ApiError {
    use diesel::result::{DatabaseErrorKind, Error};
    if let Error::DatabaseError(DatabaseErrorKind::CheckViolation, info) = &err {
        if info.constraint_name() == Some("workspaces_prefixes_or_patterns") {
            return ApiError::Conflict(
                "trigger-prefixes and trigger-patterns were both set by concurrent requests; read the workspace again and retry".into(),
            );
        }
    }
    match unique_violation(&err) {
        Some("workspaces_name_unique") => ApiError::Unprocessable(
            "name has already been taken by another workspace in this organization".into(),
        ),
        _ => err.into(),
    }
}

/// `vcs-working-directory` and its alias `working-directory`; both may be sent if equal.
fn working_directory(attrs: &WorkspaceAttributes) -> Result<Option<WorkingDirectory>, ApiError> {
    let raw = match (&attrs.vcs_working_directory, &attrs.working_directory) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::Unprocessable(
                "vcs-working-directory and working-directory are aliases and must not differ"
                    .into(),
            ))
        }
        (Some(dir), _) | (None, Some(dir)) => dir,
        (None, None) => return Ok(None),
    };
    WorkingDirectory::parse(raw)
        .map(Some)
        .map_err(unprocessable)
}

/// The connection a request links, which must exist in the workspace's organization.
async fn linked_connection(
    conn: &mut AsyncPgConnection,
    organization: &str,
    relationship: &RelationshipInput,
) -> Result<Option<VcsConnection>, ApiError> {
    let Some(identifier) = &relationship.data else {
        return Ok(None);
    };
    if identifier.kind != "vcs-connections" {
        return Err(ApiError::Unprocessable(format!(
            "vcs-connection must reference a resource of type `vcs-connections`, got `{}`",
            identifier.kind
        )));
    }
    let missing = || {
        ApiError::Unprocessable(format!(
            "vcs-connection `{}` does not exist in organization `{organization}`",
            identifier.id
        ))
    };
    let id = VcsConnectionId::parse(&identifier.id).map_err(|_| missing())?;
    vcs_connections::table
        .find(&id)
        .filter(vcs_connections::organization_name.eq(organization))
        .select(VcsConnection::as_select())
        .first(conn)
        .await
        .optional()?
        .map(Some)
        .ok_or_else(missing)
}

async fn connection_by_id(
    conn: &mut AsyncPgConnection,
    id: &VcsConnectionId,
) -> Result<Option<VcsConnection>, ApiError> {
    Ok(vcs_connections::table
        .find(id)
        .select(VcsConnection::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// A URL and a connection go together: both set, or both cleared. The URL must parse
/// for the connection's provider; its lowercased repository path is returned (empty
/// when unlinked), which is how webhooks find the workspace.
fn check_link(url: &str, connection: Option<&VcsConnection>) -> Result<String, ApiError> {
    match (url.trim().is_empty(), connection) {
        (true, None) => Ok(String::new()),
        (false, None) => Err(ApiError::Unprocessable(
            "vcs-repo-url needs a vcs-connection relationship to poll it with".into(),
        )),
        (true, Some(_)) => Err(ApiError::Unprocessable(
            "a vcs-connection needs a vcs-repo-url to poll".into(),
        )),
        (false, Some(connection)) => RepoUrl::parse(connection.provider, url)
            .map(|repo| repo.full_path().to_ascii_lowercase())
            .map_err(unprocessable),
    }
}

/// What a request's VCS link comes to: the connection and URL to store, and the
/// repository path webhooks find the workspace by.
struct Link {
    connection: Option<VcsConnection>,
    url: String,
    repo_path: String,
}

/// The link a create or update request asks for: the request's URL and connection
/// where it sets them, the workspace's own (`existing`) where it does not.
async fn resolve_link(
    conn: &mut AsyncPgConnection,
    organization: &str,
    url: Option<&str>,
    relationship: Option<&RelationshipInput>,
    existing: Option<&Workspace>,
) -> Result<Link, ApiError> {
    let connection = match relationship {
        Some(relationship) => linked_connection(conn, organization, relationship).await?,
        None => match existing.and_then(|w| w.vcs_connection_id.as_ref()) {
            Some(current) => connection_by_id(conn, current).await?,
            None => None,
        },
    };
    let url = url
        .map(str::trim)
        .or(existing.map(|w| w.vcs_repo_url.as_str()))
        .unwrap_or_default()
        .to_owned();
    let repo_path = check_link(&url, connection.as_ref())?;
    Ok(Link {
        connection,
        url,
        repo_path,
    })
}

/// Folds TFE's `vcs-repo` into the flat fields and the `vcs-connection` relationship
/// (which it must agree with when both are sent), and refuses the TFE attributes that
/// are not implemented.
/// On an update, a `vcs-repo` without `identifier` or `oauth-token-id` keeps the
/// workspace's own.
async fn accept_tfe_attributes(
    conn: &mut AsyncPgConnection,
    organization: &str,
    attrs: &mut WorkspaceAttributes,
    relationships: &mut WorkspaceRelationships,
    existing: Option<&Workspace>,
) -> Result<(), ApiError> {
    attrs.unsupported.refuse_non_defaults()?;
    let Some(repo) = attrs.vcs_repo.take() else {
        return Ok(());
    };
    let conflict = |field: &str| {
        ApiError::Unprocessable(format!("vcs-repo and {field} disagree; send one of them"))
    };
    let relationship_id = relationships
        .vcs_connection
        .as_ref()
        .map(|r| r.data.as_ref().map(|d| d.id.clone()));
    let Some(repo) = repo else {
        // `"vcs-repo": null` disconnects.
        if attrs
            .vcs_repo_url
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty())
        {
            return Err(conflict("vcs-repo-url"));
        }
        if relationship_id.as_ref().is_some_and(Option::is_some) {
            return Err(conflict("the vcs-connection relationship"));
        }
        attrs.vcs_repo_url = Some(String::new());
        relationships.vcs_connection = Some(RelationshipInput { data: None });
        return Ok(());
    };
    if repo.ingress_submodules == Some(true) {
        return Err(ApiError::Unprocessable(
            "not supported by this server (only the default is accepted): vcs-repo.ingress-submodules".into(),
        ));
    }
    if repo
        .github_app_installation_id
        .as_ref()
        // The tfe provider sends `""` when it is unset.
        .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    {
        return Err(ApiError::Unprocessable(
            "vcs-repo.github-app-installation-id is not supported: link through a VCS connection with vcs-repo.oauth-token-id".into(),
        ));
    }
    let linked = existing.filter(|w| w.vcs_connection_id.is_some() && !w.vcs_repo_url.is_empty());
    let identifier = repo.identifier.as_deref().map(str::trim);
    if identifier.is_none_or(str::is_empty) && linked.is_none() {
        return Err(ApiError::Unprocessable(
            "vcs-repo.identifier is required".into(),
        ));
    }
    let token_id = repo
        .oauth_token_id
        .clone()
        .or_else(|| {
            linked
                .and_then(|w| w.vcs_connection_id.as_ref())
                .map(|id| id.to_string())
        })
        .ok_or_else(|| {
            ApiError::Unprocessable(
                "vcs-repo.oauth-token-id is required (the vcs-… connection id)".into(),
            )
        })?;
    let relationship = RelationshipInput {
        data: Some(crate::jsonapi::ResourceIdentifier {
            kind: "vcs-connections".into(),
            id: token_id.clone(),
        }),
    };
    let connection = linked_connection(conn, organization, &relationship)
        .await?
        .ok_or_else(|| ApiError::Unprocessable("vcs-repo.oauth-token-id is required".into()))?;
    let url = match identifier.filter(|i| !i.is_empty()) {
        Some(identifier) => format!(
            "{}/{identifier}",
            terrapod_shared::vcs::repo_url::web_base(connection.provider, &connection.server_url)
        ),
        None => linked.map(|w| w.vcs_repo_url.clone()).unwrap_or_default(),
    };
    if let Some(flat) = attrs.vcs_repo_url.as_deref().map(str::trim) {
        let path = |url: &str| {
            RepoUrl::parse(connection.provider, url).map(|r| r.full_path().to_ascii_lowercase())
        };
        let same = matches!((path(flat), path(&url)), (Ok(a), Ok(b)) if a == b);
        if !same {
            return Err(conflict("vcs-repo-url"));
        }
    }
    if relationship_id.is_some_and(|id| id.as_deref() != Some(token_id.as_str())) {
        return Err(conflict("the vcs-connection relationship"));
    }
    if let (Some(branch), Some(flat)) = (&repo.branch, &attrs.vcs_branch) {
        if branch != flat {
            return Err(conflict("vcs-branch"));
        }
    }
    if let (Some(regex), Some(flat)) = (&repo.tags_regex, &attrs.vcs_tags_regex) {
        if regex != flat {
            return Err(conflict("vcs-tags-regex"));
        }
    }
    attrs.vcs_repo_url = Some(url);
    relationships.vcs_connection = Some(relationship);
    if repo.branch.is_some() {
        attrs.vcs_branch = repo.branch;
    }
    if repo.tags_regex.is_some() {
        attrs.vcs_tags_regex = repo.tags_regex;
    }
    Ok(())
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    organization: &str,
    mut attrs: WorkspaceAttributes,
    mut relationships: WorkspaceRelationships,
) -> Result<Workspace, ApiError> {
    organizations::ensure_exists(conn, organization).await?;
    accept_tfe_attributes(conn, organization, &mut attrs, &mut relationships, None).await?;
    let name = ResourceName::parse(
        attrs
            .name
            .as_deref()
            .ok_or_else(|| ApiError::Unprocessable("name is required".into()))?,
    )
    .map_err(unprocessable)?;
    let execution_mode = match attrs.execution_mode.as_deref() {
        Some(raw) => raw
            .parse()
            .map_err(|err| ApiError::Unprocessable(format!("execution-mode: {err}")))?,
        None => ExecutionMode::Remote,
    };
    let directory = working_directory(&attrs)?.unwrap_or_default();
    let branch = BranchName::parse(attrs.vcs_branch.as_deref().unwrap_or_default())
        .map_err(unprocessable)?;
    let link = resolve_link(
        conn,
        organization,
        attrs.vcs_repo_url.as_deref(),
        relationships.vcs_connection.as_ref(),
        None,
    )
    .await?;
    let (prefixes, patterns) = trigger_lists(&attrs, None)?;
    let regex = tags_regex(&attrs)?.flatten();
    let id = WorkspaceId::generate();
    diesel::insert_into(workspaces::table)
        .values(NewWorkspace {
            id: &id,
            organization_name: organization,
            name: name.as_str(),
            execution_mode,
            auto_apply: attrs.auto_apply.unwrap_or(false),
            vcs_connection_id: link.connection.as_ref().map(|c| &c.id),
            vcs_repo_url: &link.url,
            vcs_repo_path: &link.repo_path,
            vcs_branch: branch.as_str(),
            working_directory: directory.as_str(),
            file_triggers_enabled: attrs.file_triggers_enabled.unwrap_or(true),
            trigger_prefixes: prefixes.as_deref().unwrap_or_default(),
            trigger_patterns: patterns.as_deref().unwrap_or_default(),
            speculative_enabled: attrs.speculative_enabled.unwrap_or(true),
            vcs_tags_regex: regex.as_deref(),
        })
        .returning(Workspace::as_returning())
        .get_result(conn)
        .await
        .map_err(map_conflict)
}

pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> Result<Workspace, ApiError> {
    let not_found = || ApiError::not_found("workspace", id);
    let parsed = WorkspaceId::parse(id).map_err(|_| not_found())?;
    workspaces::table
        .find(&parsed)
        .select(Workspace::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

pub async fn find_by_name(
    conn: &mut AsyncPgConnection,
    organization: &str,
    name: &str,
) -> Result<Workspace, ApiError> {
    organizations::ensure_exists(conn, organization).await?;
    let name = ResourceName::parse(name).map_err(|_| ApiError::not_found("workspace", name))?;
    workspaces::table
        .filter(workspaces::organization_name.eq(organization))
        .filter(workspaces::name.eq(name.as_str()))
        .select(Workspace::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("workspace", name.as_str()))
}

/// A workspace with its connection (for its `vcs-repo`).
pub type WithConnection = (Workspace, Option<VcsConnection>);

/// The organization's workspaces by name, those whose name contains `search` (TFE's
/// `search[name]`, case-insensitive) if given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    organization: &str,
    search: Option<&str>,
    page: Page,
) -> Result<(Vec<WithConnection>, i64), ApiError> {
    organizations::ensure_exists(conn, organization).await?;
    let pattern = search.map(|s| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let mut count = workspaces::table
        .filter(workspaces::organization_name.eq(organization))
        .into_boxed();
    let mut rows = workspaces::table
        .left_join(vcs_connections::table)
        .filter(workspaces::organization_name.eq(organization))
        .into_boxed();
    if let Some(pattern) = &pattern {
        count = count.filter(workspaces::name.ilike(pattern.clone()));
        rows = rows.filter(workspaces::name.ilike(pattern.clone()));
    }
    let total: i64 = count.count().get_result(conn).await?;
    let rows = rows
        .order(workspaces::name.asc())
        .limit(page.size)
        .offset(page.offset())
        .select((Workspace::as_select(), Option::<VcsConnection>::as_select()))
        .load(conn)
        .await?;
    Ok((rows, total))
}

/// A workspace with its connection, in one query (the hot read).
pub async fn find_with_connection(
    conn: &mut AsyncPgConnection,
    id: &str,
) -> Result<WithConnection, ApiError> {
    let not_found = || ApiError::not_found("workspace", id);
    let parsed = WorkspaceId::parse(id).map_err(|_| not_found())?;
    workspaces::table
        .find(&parsed)
        .left_join(vcs_connections::table)
        .select((Workspace::as_select(), Option::<VcsConnection>::as_select()))
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

/// The workspace's connection, if it is linked.
pub async fn connection_of(
    conn: &mut AsyncPgConnection,
    workspace: &Workspace,
) -> Result<Option<VcsConnection>, ApiError> {
    match &workspace.vcs_connection_id {
        Some(id) => connection_by_id(conn, id).await,
        None => Ok(None),
    }
}

/// What an update changed, for the caller to react to (an immediate poll).
pub struct Updated {
    pub workspace: Workspace,
    pub vcs_settings_changed: bool,
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    id: &str,
    mut attrs: WorkspaceAttributes,
    mut relationships: WorkspaceRelationships,
) -> Result<Updated, ApiError> {
    let existing = find(conn, id).await?;
    accept_tfe_attributes(
        conn,
        &existing.organization_name.clone(),
        &mut attrs,
        &mut relationships,
        Some(&existing),
    )
    .await?;
    let (trigger_prefixes, trigger_patterns) = trigger_lists(&attrs, Some(&existing))?;
    let regex = tags_regex(&attrs)?.filter(|regex| *regex != existing.vcs_tags_regex);
    let mut changes = WorkspaceChanges {
        name: attrs
            .name
            .as_deref()
            .map(|raw| ResourceName::parse(raw).map(|n| n.as_str().to_owned()))
            .transpose()
            .map_err(unprocessable)?,
        execution_mode: attrs
            .execution_mode
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err| ApiError::Unprocessable(format!("execution-mode: {err}")))?,
        auto_apply: attrs.auto_apply,
        working_directory: working_directory(&attrs)?.map(|dir| dir.as_str().to_owned()),
        updated_at: Some(Utc::now()),
        file_triggers_enabled: attrs.file_triggers_enabled,
        trigger_prefixes,
        trigger_patterns,
        speculative_enabled: attrs.speculative_enabled,
        vcs_tags_regex: regex.clone(),
        ..WorkspaceChanges::default()
    };
    let branch = attrs
        .vcs_branch
        .as_deref()
        .map(BranchName::parse)
        .transpose()
        .map_err(unprocessable)?;

    let sets_link = attrs.vcs_repo_url.is_some() || relationships.vcs_connection.is_some();
    let new_url = attrs.vcs_repo_url.as_deref().map(str::trim);
    // The repository, not the URL's spelling: `git@…` or a `vcs-repo` identifier for
    // the same repository keeps the last SHA, the tags' baseline and a poll in flight.
    let mut url_changed = false;
    let branch_changed = branch
        .as_ref()
        .is_some_and(|b| b.as_str() != existing.vcs_branch);
    let mut connection_changed = false;
    if sets_link {
        let link = resolve_link(
            conn,
            &existing.organization_name,
            new_url,
            relationships.vcs_connection.as_ref(),
            Some(&existing),
        )
        .await?;
        let existing_path = link.connection.as_ref().and_then(|c| {
            RepoUrl::parse(c.provider, &existing.vcs_repo_url)
                .ok()
                .map(|repo| repo.full_path().to_ascii_lowercase())
        });
        url_changed = match existing_path {
            Some(path) => path != link.repo_path,
            None => link.url != existing.vcs_repo_url,
        };
        let connection_id = link.connection.map(|c| c.id);
        connection_changed = connection_id != existing.vcs_connection_id;
        changes.vcs_connection_id = Some(connection_id);
        changes.vcs_repo_url = Some(link.url);
        changes.vcs_repo_path = Some(link.repo_path);
    }
    changes.vcs_branch = branch.map(|b| b.as_str().to_owned());
    if url_changed || branch_changed {
        // The next poll plans the new head instead of comparing against another repo's.
        changes.vcs_last_commit_sha = Some(None);
    }
    if url_changed
        || regex
            .as_ref()
            .is_some_and(|r| existing.vcs_tags_regex.is_none() && r.is_some())
    {
        // A workspace that starts following tags (or another repository's) records
        // the tags present first, without runs.
        changes.vcs_tags_baselined_at = Some(None);
    }
    if url_changed || connection_changed {
        // Errors about the old settings no longer apply.
        changes.vcs_last_error = Some(None);
        changes.vcs_last_error_at = Some(None);
    }
    let directory_changed = changes
        .working_directory
        .as_ref()
        .is_some_and(|dir| *dir != existing.working_directory);
    // A run decision taken under the old triggers must not be recorded either.
    let triggers_changed = changes
        .file_triggers_enabled
        .is_some_and(|on| on != existing.file_triggers_enabled)
        || changes
            .trigger_prefixes
            .as_ref()
            .is_some_and(|p| *p != existing.trigger_prefixes)
        || changes
            .trigger_patterns
            .as_ref()
            .is_some_and(|p| *p != existing.trigger_patterns)
        || changes
            .speculative_enabled
            .is_some_and(|on| on != existing.speculative_enabled)
        || regex.is_some();
    // A poll in flight for the old settings records nothing once this is bumped.
    let settings_changed = url_changed
        || branch_changed
        || connection_changed
        || directory_changed
        || triggers_changed;
    let workspace = diesel::update(workspaces::table.find(&existing.id))
        .set((
            changes,
            workspaces::vcs_settings_generation
                .eq(workspaces::vcs_settings_generation + i64::from(settings_changed)),
        ))
        .returning(Workspace::as_returning())
        .get_result(conn)
        .await
        .map_err(map_conflict)?;
    Ok(Updated {
        vcs_settings_changed: settings_changed,
        workspace,
    })
}

pub async fn delete(conn: &mut AsyncPgConnection, id: &str) -> Result<(), ApiError> {
    let existing = find(conn, id).await?;
    diesel::delete(workspaces::table.find(&existing.id))
        .execute(conn)
        .await?;
    Ok(())
}
