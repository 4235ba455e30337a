//! Runs: listing, and moving them through the lifecycle (executors' transitions and
//! people's cancel, apply and discard). Runs are created only by the poller
//! (`terrapod_shared::runs::create_vcs_run`).

use diesel::expression::AsExpression;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Deserialize;
use terrapod_shared::db::models::Run;
use terrapod_shared::db::schema::{runs, workspaces};
use terrapod_shared::domain::RunStatus;
use terrapod_shared::ids::{RunId, WorkspaceId};
use terrapod_shared::lifecycle::{Mover, Refusal};
use terrapod_shared::runs::{move_run, MoveError};

use crate::error::ApiError;
use crate::jsonapi::Page;
use crate::resources::FixedCondition;

pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    let not_found = || ApiError::not_found("run", id);
    let parsed = RunId::parse(id).map_err(|_| not_found())?;
    runs::table
        .find(&parsed)
        .select(Run::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)
}

diesel::infix_operator!(PatternGe, " ~>=~ ");
diesel::infix_operator!(PatternLt, " ~<~ ");

/// Byte-order comparisons, the operators of a `text_pattern_ops` index.
trait PatternOrder: Expression<SqlType = diesel::sql_types::Text> + Sized {
    fn sorts_from<T: AsExpression<diesel::sql_types::Text>>(
        self,
        low: T,
    ) -> PatternGe<Self, T::Expression> {
        PatternGe::new(self, low.as_expression())
    }
    fn sorts_before<T: AsExpression<diesel::sql_types::Text>>(
        self,
        high: T,
    ) -> PatternLt<Self, T::Expression> {
        PatternLt::new(self, high.as_expression())
    }
}

impl<E: Expression<SqlType = diesel::sql_types::Text>> PatternOrder for E {}

/// TFE run statuses that runs here never take.
const OTHER_TFE_STATUSES: &[&str] = &[
    "fetching",
    "fetching_completed",
    "pre_plan_running",
    "pre_plan_completed",
    "queuing",
    "cost_estimating",
    "cost_estimated",
    "policy_checking",
    "policy_override",
    "policy_soft_failed",
    "policy_checked",
    "post_plan_running",
    "post_plan_completed",
    "post_plan_awaiting_decision",
    "pre_apply_running",
    "pre_apply_completed",
    "force_canceled",
];

/// `filter[operation]`, reduced to what runs here can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationFilter {
    PlanOnly,
    PlanAndApply,
    /// Only operations no run here has (`destroy`, …).
    Nothing,
}

/// What a run list may be narrowed to (TFE's `filter[status]`, `filter[operation]`,
/// `search[commit]`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub statuses: Option<Vec<RunStatus>>,
    pub operation: Option<OperationFilter>,
    /// A commit SHA or its prefix (lower-case hex).
    pub commit: Option<String>,
}

impl RunFilter {
    /// Parses the list's query; an unknown status or operation is a 422.
    pub fn from_query(req: &actix_web::HttpRequest) -> Result<RunFilter, ApiError> {
        if req.query_string().is_empty() {
            return Ok(RunFilter::default());
        }
        crate::jsonapi::refuse_unknown_filters(
            req,
            &["filter[status]", "filter[operation]", "search[commit]"],
        )?;
        let list = |raw: String| -> Vec<String> {
            raw.split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        };
        // TFE's statuses that runs here never take (`policy_checked`, …) match nothing;
        // a name TFE does not have either is a mistake worth a 422.
        let statuses = crate::jsonapi::query_param(req, "filter[status]")?
            .map(list)
            .filter(|items| !items.is_empty())
            .map(|items| {
                let mut statuses = Vec::new();
                for item in items {
                    match item.parse::<RunStatus>() {
                        Ok(status) => statuses.push(status),
                        Err(_) if OTHER_TFE_STATUSES.contains(&item.as_str()) => {}
                        Err(err) => {
                            return Err(ApiError::Unprocessable(format!("filter[status]: {err}")))
                        }
                    }
                }
                Ok(statuses)
            })
            .transpose()?;
        let plan_only = match crate::jsonapi::query_param(req, "filter[operation]")? {
            None => None,
            Some(raw) => {
                let operations = list(raw);
                let mut plan_only = false;
                let mut applies = false;
                for operation in &operations {
                    match operation.as_str() {
                        "plan_only" => plan_only = true,
                        "plan_and_apply" => applies = true,
                        // TFE's other operations; no run here is one of them.
                        "destroy" | "refresh_only" | "empty_apply" | "save_plan" => {}
                        other => {
                            return Err(ApiError::Unprocessable(format!(
                            "filter[operation]: `{other}` is not one of: plan_only, plan_and_apply"
                        )))
                        }
                    }
                }
                match (plan_only, applies) {
                    (true, true) | (false, false) if operations.is_empty() => None,
                    (true, true) => None,
                    (true, false) => Some(OperationFilter::PlanOnly),
                    (false, true) => Some(OperationFilter::PlanAndApply),
                    (false, false) => Some(OperationFilter::Nothing),
                }
            }
        };
        let commit = crate::jsonapi::query_param(req, "search[commit]")?
            .map(|raw| raw.trim().to_ascii_lowercase())
            .filter(|raw| !raw.is_empty());
        Ok(RunFilter {
            statuses,
            operation: plan_only,
            commit,
        })
    }

    fn is_empty(&self) -> bool {
        *self == RunFilter::default()
    }
}

/// A workspace's runs, newest first, with how many match. Unfiltered, that is one
/// round trip on the hot path (the count is kept on the workspace, not counted); the
/// workspace is looked up on its own only when the page is empty.
pub async fn list_for_workspace(
    conn: &mut AsyncPgConnection,
    workspace_id: &str,
    filter: &RunFilter,
    page: Page,
) -> Result<(Vec<Run>, i64), ApiError> {
    let id = WorkspaceId::parse(workspace_id)
        .map_err(|_| ApiError::not_found("workspace", workspace_id))?;
    if !filter.is_empty() {
        return list_filtered(conn, &id, filter, page).await;
    }
    let rows: Vec<(Run, i64)> = runs::table
        .inner_join(workspaces::table)
        .filter(runs::workspace_id.eq(&id))
        .order((runs::created_at.desc(), runs::id.desc()))
        .limit(page.size)
        .offset(page.offset())
        .select((Run::as_select(), workspaces::run_count))
        .load(conn)
        .await?;
    match rows.as_slice().first() {
        Some(&(_, total)) => Ok((rows.into_iter().map(|(run, _)| run).collect(), total)),
        None => {
            let total = workspaces::table
                .find(&id)
                .select(workspaces::run_count)
                .first(conn)
                .await
                .optional()?
                .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
            Ok((Vec::new(), total))
        }
    }
}

async fn list_filtered(
    conn: &mut AsyncPgConnection,
    id: &WorkspaceId,
    filter: &RunFilter,
    page: Page,
) -> Result<(Vec<Run>, i64), ApiError> {
    let query = || {
        let mut query = runs::table.filter(runs::workspace_id.eq(id)).into_boxed();
        match filter.statuses.as_deref() {
            Some([status]) => query = query.filter(status_is(*status)),
            Some(statuses) => query = query.filter(runs::status.eq_any(statuses.to_vec())),
            None => {}
        }
        match filter.operation {
            Some(OperationFilter::PlanOnly) => query = query.filter(runs::plan_only.eq(true)),
            Some(OperationFilter::PlanAndApply) => query = query.filter(runs::plan_only.eq(false)),
            Some(OperationFilter::Nothing) => query = query.filter(runs::id.eq("")),
            None => {}
        }
        if let Some(commit) = &filter.commit {
            // A prefix as a range of the index's byte order (`text_pattern_ops`), which
            // a generic plan can look up, unlike `LIKE $1`: every SHA starting with
            // `prefix` sorts from `prefix` to just before `prefix` + "g", the byte after
            // the hex digits. Only hex can match.
            if commit.chars().all(|c| c.is_ascii_hexdigit()) {
                query = query.filter(
                    runs::vcs_commit_sha
                        .sorts_from(commit.clone())
                        .and(runs::vcs_commit_sha.sorts_before(format!("{commit}g"))),
                );
            } else {
                query = query.filter(runs::id.eq(""));
            }
        }
        query
    };
    let total: i64 = query().count().get_result(conn).await?;
    if total == 0 {
        // Nothing matched: tell an empty workspace from a missing one.
        let exists: bool = diesel::select(diesel::dsl::exists(workspaces::table.find(id)))
            .get_result(conn)
            .await?;
        if !exists {
            return Err(ApiError::not_found("workspace", id.as_str()));
        }
        return Ok((Vec::new(), 0));
    }
    let rows = query()
        .order((runs::created_at.desc(), runs::id.desc()))
        .limit(page.size)
        .offset(page.offset())
        .select(Run::as_select())
        .load(conn)
        .await?;
    Ok((rows, total))
}

/// `runs.status = 'errored'` with the status written into the statement: only a plan
/// that knows the status can tell a rare one (read through the status index) from a
/// common one. The name comes from [`RunStatus`], so there are at most 12 such
/// statements per connection; several statuses are bound (`= ANY($1)`).
fn status_is(status: RunStatus) -> FixedCondition {
    FixedCondition(format!("runs.status = '{}'", status.as_str()).into())
}

/// Moves the run through the lifecycle (`terrapod_shared::runs::move_run`).
pub async fn move_to(
    conn: &mut AsyncPgConnection,
    id: &str,
    to: RunStatus,
    mover: Mover,
    message: Option<&str>,
) -> Result<Run, ApiError> {
    let parsed = RunId::parse(id).map_err(|_| ApiError::not_found("run", id))?;
    move_run(conn, &parsed, to, mover, message)
        .await
        .map_err(|err| match err {
            MoveError::NotFound => ApiError::not_found("run", id),
            MoveError::Refused(refusal) => ApiError::Conflict(refusal.to_string()),
            MoveError::Database(err) => err.into(),
        })
}

/// Confirms a run that is waiting for it (`planned` → `confirmed`). Plan-only runs
/// never apply, whatever their status.
pub async fn apply(conn: &mut AsyncPgConnection, id: &str) -> Result<Run, ApiError> {
    if find(conn, id).await?.plan_only {
        return Err(ApiError::Conflict(Refusal::PlanOnly.to_string()));
    }
    move_to(conn, id, RunStatus::Confirmed, Mover::Person, None).await
}

/// What an executor sends to move a run: `{"status":"planning","message":"…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub status: RunStatus,
    #[serde(default)]
    pub message: Option<String>,
}
