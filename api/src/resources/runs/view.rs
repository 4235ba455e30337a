//! Runs are the hottest list, so their view is typed: it serialises straight to the
//! response body.

use serde::Serialize;
use terrapod_shared::db::models::Run;
use terrapod_shared::domain::{RunStatus, TriggerReason};
use terrapod_shared::lifecycle::{self, RunActions, RunState};

use crate::jsonapi::{timestamp, Related};

#[derive(Serialize)]
pub struct RunResource<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: RunAttributes<'a>,
    relationships: RunRelationships<'a>,
    links: Links,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct RunAttributes<'a> {
    status: RunStatus,
    source: &'a str,
    plan_only: bool,
    auto_apply: bool,
    message: &'a str,
    trigger_reason: TriggerReason,
    vcs_commit_sha: &'a str,
    vcs_branch: &'a str,
    vcs_pull_request_number: Option<i64>,
    vcs_tag: Option<&'a str>,
    created_at: String,
    status_timestamps: &'a terrapod_shared::db::models::RawJson,
    /// What the executor said with the last transition.
    status_message: Option<&'a str>,
    actions: RunActions,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct RunRelationships<'a> {
    workspace: Related<'a>,
    configuration_version: Related<'a>,
}

#[derive(Serialize)]
struct Links {
    #[serde(rename = "self")]
    own: String,
}

pub fn render(run: &Run) -> RunResource<'_> {
    RunResource {
        id: run.id.as_str(),
        kind: "runs",
        attributes: RunAttributes {
            status: run.status,
            source: &run.source,
            plan_only: run.plan_only,
            auto_apply: run.auto_apply,
            message: &run.message,
            trigger_reason: run.trigger_reason,
            vcs_commit_sha: &run.vcs_commit_sha,
            vcs_branch: &run.vcs_branch,
            vcs_pull_request_number: run.vcs_pull_request_number,
            vcs_tag: run.vcs_tag.as_deref(),
            created_at: timestamp(run.created_at),
            status_timestamps: &run.status_timestamps,
            status_message: run.status_message.as_deref(),
            actions: lifecycle::actions(RunState {
                status: run.status,
                plan_only: run.plan_only,
                auto_apply: run.auto_apply,
            }),
        },
        relationships: RunRelationships {
            workspace: Related::to("workspaces", run.workspace_id.as_str()),
            configuration_version: Related::to(
                "configuration-versions",
                run.configuration_version_id.as_str(),
            ),
        },
        links: Links {
            own: format!("/api/v2/runs/{}", run.id),
        },
    }
}
