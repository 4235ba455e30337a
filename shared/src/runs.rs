//! Recording a VCS-triggered run: the one place that writes configuration versions and
//! runs. Everything happens in one short transaction, and the database's unique
//! indexes — not this code path — make a duplicate run impossible, so any number of
//! poller replicas and redelivered messages can call it at once.
//!
//! The poll that calls it read the workspace's settings generation; the run is only
//! recorded while that generation is current, so a poll of the old repository that is
//! still in flight when a PATCH changes it records nothing.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use diesel::sql_types::{BigInt, Nullable, Text};

use crate::archives::StoredArchive;
use crate::db::models::Run;
use crate::db::schema::{configuration_versions, runs, vcs_events, workspaces};
use crate::domain::{BranchName, CommitSha, Provider, RunStatus, TriggerReason, WorkingDirectory};
use crate::ids::{ConfigurationVersionId, RunId, WorkspaceId};
use crate::lifecycle::{self, Mover, Refusal, RunState};

/// Titles are for people; an absurdly long one is cut rather than stored whole.
const MAX_TITLE_CHARS: usize = 200;

/// Ingress attributes are kept with every configuration version and served as they
/// are: what the provider sent (a commit title, a PR title, a user name) is cut here.
const MAX_INGRESS_TEXT_CHARS: usize = 1_000;
/// User names, and (in ingress attributes) the branch and tag names no [`BranchName`]
/// checked: a PR's head, a tag. Runs keep those whole: GitLab's commit status names
/// the ref.
const MAX_NAME_CHARS: usize = 255;

/// Why the run is created.
pub enum VcsTrigger {
    /// A new head on the tracked branch. `previous_sha` is the workspace's
    /// `vcs_last_commit_sha` the caller saw: the run is only recorded if it still is.
    Push {
        branch: BranchName,
        commit_title: Option<String>,
        previous_sha: Option<String>,
    },
    /// A new head commit of an open pull/merge request targeting the tracked branch.
    PullRequest {
        number: i64,
        head_ref: String,
        title: String,
    },
    /// A tag matching the workspace's `vcs_tags_regex`, new or moved to this commit.
    Tag { name: String },
}

/// Where the commit came from, for TFE's ingress attributes (SPEC section 10).
pub struct Ingress<'a> {
    pub provider: Provider,
    /// `owner/repo`, `group/sub/project`.
    pub identifier: &'a str,
    /// Where people browse the repository (`https://github.com`).
    pub web_base: &'a str,
    /// The branch is the repository's default one.
    pub on_default_branch: bool,
    /// Who pushed the commit or opened the pull request.
    pub sender: Option<&'a str>,
    /// What the commit is compared with: a push's previous head, a PR's base branch.
    pub compare_base: Option<&'a str>,
}

/// TFE's ingress attributes of a VCS-triggered configuration version.
pub fn ingress_attributes(
    ingress: &Ingress<'_>,
    commit_sha: &CommitSha,
    trigger: &VcsTrigger,
) -> serde_json::Value {
    let repo = format!(
        "{}/{}",
        ingress.web_base.trim_end_matches('/'),
        ingress.identifier
    );
    // GitLab's pages live under `/-/`.
    let section = match ingress.provider {
        Provider::GitHub => "",
        Provider::GitLab => "-/",
    };
    let sha = commit_sha.as_str();
    let (branch, message, pull_request, tag) = match trigger {
        VcsTrigger::Push {
            branch,
            commit_title,
            ..
        } => (Some(branch.as_str()), commit_title.as_deref(), None, None),
        VcsTrigger::PullRequest {
            number,
            head_ref,
            title,
        } => (
            Some(head_ref.as_str()),
            None,
            Some((*number, title.as_str())),
            None,
        ),
        VcsTrigger::Tag { name } => (None, None, None, Some(name.as_str())),
    };
    serde_json::json!({
        "branch": branch.map(|name| truncate_to(name, MAX_NAME_CHARS)),
        "clone-url": format!("{repo}.git"),
        "commit-message": message.map(|text| truncate_to(text, MAX_INGRESS_TEXT_CHARS)),
        "commit-sha": sha,
        "commit-url": format!("{repo}/{section}commit/{sha}"),
        "compare-url": ingress.compare_base.map(|base| format!("{repo}/{section}compare/{base}...{sha}")),
        "identifier": ingress.identifier,
        "is-pull-request": pull_request.is_some(),
        "on-default-branch": ingress.on_default_branch && pull_request.is_none() && tag.is_none(),
        "pull-request-number": pull_request.map(|(number, _)| number),
        "pull-request-title": pull_request.map(|(_, title)| truncate_to(title, MAX_INGRESS_TEXT_CHARS)),
        // Built, like every link here: the provider's own link is not trusted to point
        // at the repository (a client may render it).
        "pull-request-url": pull_request.map(|(number, _)| match ingress.provider {
            Provider::GitHub => format!("{repo}/pull/{number}"),
            Provider::GitLab => format!("{repo}/-/merge_requests/{number}"),
        }),
        "sender-username": ingress.sender.map(|sender| truncate_to(sender, MAX_NAME_CHARS)),
        "tag": tag.map(|name| truncate_to(name, MAX_NAME_CHARS)),
    })
}

pub struct NewVcsRun<'a> {
    pub workspace_id: &'a WorkspaceId,
    /// The workspace's `vcs_settings_generation` the poll read.
    pub settings_generation: i64,
    pub commit_sha: &'a CommitSha,
    pub trigger: VcsTrigger,
    pub working_directory: &'a WorkingDirectory,
    /// The repository at `commit_sha`, already stored.
    pub archive: &'a StoredArchive,
    pub ingress: Ingress<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCreation {
    Created {
        run_id: RunId,
        configuration_version_id: ConfigurationVersionId,
    },
    /// A run for this commit (and pull request) exists already; nothing was added. For a
    /// push, the workspace's last SHA was still advanced to it.
    AlreadyExists,
    /// The workspace's last SHA is no longer `previous_sha` (another replica recorded
    /// a newer head), or its VCS settings changed since the poll read them; nothing
    /// was written.
    Superseded,
}

enum Abort {
    Duplicate,
    Superseded,
    Database(DieselError),
}

impl From<DieselError> for Abort {
    fn from(err: DieselError) -> Self {
        match &err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
                if matches!(
                    info.constraint_name(),
                    Some(
                        "runs_one_push_run_per_commit"
                            | "runs_one_pull_request_run_per_head"
                            | "runs_one_tag_run_per_commit"
                    )
                ) =>
            {
                Abort::Duplicate
            }
            _ => Abort::Database(err),
        }
    }
}

/// The message TFE shows for the run.
pub fn run_message(commit_sha: &CommitSha, trigger: &VcsTrigger) -> String {
    match trigger {
        VcsTrigger::Push {
            branch,
            commit_title,
            ..
        } => {
            let mut message = format!(
                "Triggered by commit {} on {}",
                commit_sha.short(),
                branch.as_str()
            );
            if let Some(title) = commit_title
                .as_deref()
                .map(first_line)
                .filter(|t| !t.is_empty())
            {
                message.push_str(": ");
                message.push_str(&truncate(title));
            }
            message
        }
        VcsTrigger::PullRequest { number, title, .. } => {
            format!(
                "Speculative plan for PR #{number}: {}",
                truncate(first_line(title))
            )
        }
        VcsTrigger::Tag { name } => {
            format!(
                "Triggered by tag {} at {}",
                truncate(name),
                commit_sha.short()
            )
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

fn truncate(text: &str) -> String {
    truncate_to(text, MAX_TITLE_CHARS)
}

/// At most `max_chars` characters, the last an ellipsis when cut; reads no further
/// than it keeps (a provider's answer may hold megabytes).
fn truncate_to(text: &str, max_chars: usize) -> String {
    debug_assert!(max_chars > 0);
    match text.char_indices().nth(max_chars - 1) {
        // More than `max_chars` when at least two characters follow the first kept ones.
        Some((end, _)) if text[end..].chars().nth(1).is_some() => format!("{}…", &text[..end]),
        _ => text.to_owned(),
    }
}

/// Stores the configuration version and the run, and (for a push) advances the
/// workspace's last SHA with a compare-and-set — all or nothing.
pub async fn create_vcs_run(
    conn: &mut AsyncPgConnection,
    new: NewVcsRun<'_>,
) -> Result<RunCreation, DieselError> {
    let outcome = conn
        .transaction::<_, Abort, _>(async |conn| record(conn, &new).await)
        .await;
    match outcome {
        Ok(created) => Ok(created),
        Err(Abort::Duplicate) => Ok(RunCreation::AlreadyExists),
        Err(Abort::Superseded) => Ok(RunCreation::Superseded),
        Err(Abort::Database(err)) => Err(err),
    }
}

async fn record(conn: &mut AsyncPgConnection, new: &NewVcsRun<'_>) -> Result<RunCreation, Abort> {
    let sha = new.commit_sha.as_str();
    let mut tag = None;
    let (branch, pull_request_number, plan_only, reason, auto_apply) = match &new.trigger {
        VcsTrigger::Push {
            branch,
            previous_sha,
            ..
        } => {
            // The row lock taken here serialises every recorder of this workspace, so
            // the existence check below sees any run committed before us.
            // `auto-apply` is read here, not from the poll's earlier snapshot: a user who
            // turns it off while a poll runs gets a run that waits for confirmation.
            let auto_apply: bool = diesel::update(workspaces::table)
                .filter(workspaces::id.eq(new.workspace_id))
                .filter(workspaces::vcs_settings_generation.eq(new.settings_generation))
                .filter(
                    workspaces::vcs_last_commit_sha.is_not_distinct_from(previous_sha.as_deref()),
                )
                .set(workspaces::vcs_last_commit_sha.eq(sha))
                .returning(workspaces::auto_apply)
                .get_result(conn)
                .await
                .optional()?
                .ok_or(Abort::Superseded)?;
            let exists: bool = diesel::select(diesel::dsl::exists(
                runs::table
                    .filter(runs::workspace_id.eq(new.workspace_id))
                    .filter(runs::trigger_reason.eq(TriggerReason::Push))
                    .filter(runs::vcs_commit_sha.eq(sha)),
            ))
            .get_result(conn)
            .await?;
            if exists {
                // Keep the advanced SHA: this commit is done, it must not be retried.
                return Ok(RunCreation::AlreadyExists);
            }
            (
                branch.as_str().to_owned(),
                None,
                false,
                TriggerReason::Push,
                auto_apply,
            )
        }
        VcsTrigger::Tag { name } => {
            // Read under the row lock, with the settings the poll read (a PATCH of the
            // regex or the repository since then supersedes the poll).
            let auto_apply: bool = workspaces::table
                .find(new.workspace_id)
                .filter(workspaces::vcs_settings_generation.eq(new.settings_generation))
                .select(workspaces::auto_apply)
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or(Abort::Superseded)?;
            tag = Some(name.clone());
            (String::new(), None, false, TriggerReason::Tag, auto_apply)
        }
        // Speculative plans never apply.
        VcsTrigger::PullRequest {
            number, head_ref, ..
        } => (
            head_ref.clone(),
            Some(*number),
            true,
            TriggerReason::PullRequest,
            false,
        ),
    };

    let configuration_version_id = ConfigurationVersionId::generate();
    diesel::insert_into(configuration_versions::table)
        .values((
            configuration_versions::id.eq(&configuration_version_id),
            configuration_versions::workspace_id.eq(new.workspace_id),
            configuration_versions::speculative.eq(plan_only),
            configuration_versions::vcs_commit_sha.eq(sha),
            configuration_versions::vcs_branch.eq(&branch),
            configuration_versions::vcs_pull_request_number.eq(pull_request_number),
            configuration_versions::working_directory.eq(new.working_directory.as_str()),
            configuration_versions::archive_sha256.eq(&new.archive.sha256),
            configuration_versions::size.eq(new.archive.size),
            configuration_versions::ingress.eq(ingress_attributes(
                &new.ingress,
                new.commit_sha,
                &new.trigger,
            )),
        ))
        .execute(conn)
        .await?;

    let run_id = RunId::generate();
    let message = run_message(new.commit_sha, &new.trigger);
    diesel::insert_into(runs::table)
        .values((
            runs::id.eq(&run_id),
            runs::workspace_id.eq(new.workspace_id),
            runs::configuration_version_id.eq(&configuration_version_id),
            runs::status.eq(RunStatus::Pending),
            runs::plan_only.eq(plan_only),
            runs::auto_apply.eq(auto_apply),
            runs::message.eq(&message),
            runs::trigger_reason.eq(reason),
            runs::vcs_commit_sha.eq(sha),
            runs::vcs_branch.eq(&branch),
            runs::vcs_pull_request_number.eq(pull_request_number),
            runs::vcs_tag.eq(&tag),
        ))
        .execute(conn)
        .await?;
    // The event log says why the run exists, in the same transaction.
    diesel::insert_into(vcs_events::table)
        .values((
            vcs_events::workspace_id.eq(new.workspace_id),
            vcs_events::kind.eq("run-created"),
            vcs_events::commit_sha.eq(sha),
            vcs_events::pull_request_number.eq(pull_request_number),
            vcs_events::message.eq(&message),
            vcs_events::run_id.eq(run_id.as_str()),
        ))
        .execute(conn)
        .await?;

    // For a pull request this is also the settings check (a push made it above).
    let counted = diesel::update(workspaces::table.filter(workspaces::id.eq(new.workspace_id)))
        .filter(workspaces::vcs_settings_generation.eq(new.settings_generation))
        .set(workspaces::run_count.eq(workspaces::run_count + 1))
        .execute(conn)
        .await?;
    if counted == 0 {
        return Err(Abort::Superseded);
    }

    // Creation is the run's first event, sent by the relay like every status change.
    diesel::sql_query(RECORD_CREATION)
        .bind::<Text, _>(run_id.as_str())
        .bind::<Text, _>(new.workspace_id.as_str())
        .execute(conn)
        .await?;

    if let Some(number) = pull_request_number {
        // A new head supersedes the PR's older plans that have not started.
        diesel::sql_query(CANCEL_SUPERSEDED_PLANS)
            .bind::<Text, _>(new.workspace_id.as_str())
            .bind::<BigInt, _>(number)
            .bind::<Text, _>(sha)
            .execute(conn)
            .await?;
    }

    Ok(RunCreation::Created {
        run_id,
        configuration_version_id,
    })
}

/// A status change, in the shape every statement below writes it: the status, its
/// timestamp, the sequence, and the executor's message (or none).
macro_rules! status_change {
    ($status:expr, $key:expr, $message:expr) => {
        concat!(
            "status = ",
            $status,
            ", status_sequence = runs.status_sequence + 1, ",
            "status_timestamps = runs.status_timestamps || jsonb_build_object(",
            $key,
            ", to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')), ",
            "status_message = ",
            $message,
            ", updated_at = now()"
        )
    };
}

/// The run's creation event ($1 run, $2 workspace), and its first state to report on
/// the commit — with the check's name and repository as the run was recorded under,
/// so a PATCH of the workspace before the first report cannot send it elsewhere.
const RECORD_CREATION: &str = "WITH event AS (INSERT INTO run_events_outbox \
      (run_id, workspace_id, organization_name, status, previous_status, sequence) \
      SELECT $1, id, organization_name, 'pending', NULL, 1 FROM workspaces WHERE id = $2) \
    INSERT INTO commit_status_reports (run_id, wanted_sequence, check_name, repo_url) \
    SELECT $1, 1, 'terrapod/' || organization_name || '/' || name, vcs_repo_url \
      FROM workspaces WHERE id = $2";

/// Raises a moved run's wanted report (appended to the statements that move runs).
macro_rules! wanted_report {
    () => {
        "INSERT INTO commit_status_reports (run_id, wanted_sequence) \
         SELECT id, status_sequence FROM moved \
         ON CONFLICT (run_id) DO UPDATE SET \
           wanted_sequence = GREATEST(commit_status_reports.wanted_sequence, EXCLUDED.wanted_sequence), \
           next_attempt_at = now(), failures = 0, first_failure_at = NULL"
    };
}

/// Cancels a PR's pending plans of other commits ($1 workspace, $2 number, $3 new head),
/// with their events.
const CANCEL_SUPERSEDED_PLANS: &str = concat!(
    "WITH moved AS (UPDATE runs SET ",
    status_change!(
        "'canceled'",
        "'canceled-at'",
        "'superseded by a newer commit'"
    ),
    " WHERE workspace_id = $1 AND trigger_reason = 'pull_request' \
      AND vcs_pull_request_number = $2 AND vcs_commit_sha <> $3 AND status = 'pending' \
      RETURNING id, workspace_id, status_sequence), \
    event AS (INSERT INTO run_events_outbox \
      (run_id, workspace_id, organization_name, status, previous_status, sequence) \
      SELECT moved.id, moved.workspace_id, workspaces.organization_name, 'canceled', 'pending', \
        moved.status_sequence FROM moved JOIN workspaces ON workspaces.id = moved.workspace_id) ",
    wanted_report!()
);

/// Moves one run ($1) from $2 to $3 (timestamp key $4, message $5) if it is still in
/// $2, writing its event in the same statement; returns the moved run.
const MOVE_RUN: &str = concat!(
    "WITH moved AS (UPDATE runs SET ",
    status_change!("$3", "$4::text", "$5"),
    " WHERE id = $1 AND status = $2 RETURNING runs.*), \
    event AS (INSERT INTO run_events_outbox \
      (run_id, workspace_id, organization_name, status, previous_status, sequence) \
      SELECT moved.id, moved.workspace_id, workspaces.organization_name, moved.status, $2, \
        moved.status_sequence FROM moved JOIN workspaces ON workspaces.id = moved.workspace_id), \
    wanted AS (",
    wanted_report!(),
    ") SELECT * FROM moved"
);

/// The longest executor message kept (it is shown on the commit).
pub const MAX_STATUS_MESSAGE_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("run not found")]
    NotFound,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Database(#[from] DieselError),
}

fn state_of(run: &Run) -> RunState {
    RunState {
        status: run.status,
        plan_only: run.plan_only,
        auto_apply: run.auto_apply,
    }
}

/// Moves a run to `to` if the lifecycle allows it from its current status. The write
/// is a compare-and-set on the status the decision was made from: a mover that lost a
/// race decides again on the status that won (the lifecycle has no cycles, so this
/// ends), and the run never holds two states. The run event is written in the same
/// statement.
pub async fn move_run(
    conn: &mut AsyncPgConnection,
    id: &RunId,
    to: RunStatus,
    mover: Mover,
    message: Option<&str>,
) -> Result<Run, MoveError> {
    let message = message.map(|m| truncate_to(m.trim(), MAX_STATUS_MESSAGE_CHARS));
    loop {
        let run: Run = runs::table
            .find(id)
            .select(Run::as_select())
            .first(conn)
            .await
            .optional()?
            .ok_or(MoveError::NotFound)?;
        lifecycle::check(state_of(&run), to, mover)?;
        let moved: Option<Run> = diesel::sql_query(MOVE_RUN)
            .bind::<Text, _>(id.as_str())
            .bind::<Text, _>(run.status.as_str())
            .bind::<Text, _>(to.as_str())
            .bind::<Text, _>(lifecycle::timestamp_key(to))
            .bind::<Nullable<Text>, _>(message.as_deref())
            .get_result(conn)
            .await
            .optional()?;
        if let Some(moved) = moved {
            return Ok(moved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha() -> CommitSha {
        CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap()
    }

    #[test]
    fn push_messages_name_the_short_sha_branch_and_title() {
        let trigger = VcsTrigger::Push {
            branch: BranchName::parse("main").unwrap(),
            commit_title: Some("Add VPC\n\nlong body".into()),
            previous_sha: None,
        };
        assert_eq!(
            run_message(&sha(), &trigger),
            "Triggered by commit 01234567 on main: Add VPC"
        );
        let untitled = VcsTrigger::Push {
            branch: BranchName::parse("main").unwrap(),
            commit_title: None,
            previous_sha: None,
        };
        assert_eq!(
            run_message(&sha(), &untitled),
            "Triggered by commit 01234567 on main"
        );
    }

    #[test]
    fn pull_request_messages_name_the_number_and_title() {
        let trigger = VcsTrigger::PullRequest {
            number: 42,
            head_ref: "feature".into(),
            title: "x".repeat(500),
        };
        let message = run_message(&sha(), &trigger);
        assert!(message.starts_with("Speculative plan for PR #42: xxx"));
        assert!(message.chars().count() < 240);
    }

    #[test]
    fn texts_are_cut_to_their_bound_with_an_ellipsis() {
        assert_eq!(truncate_to("abc", 3), "abc");
        assert_eq!(truncate_to("abcd", 3), "ab…");
        assert_eq!(truncate_to("ééé", 3), "ééé");
        assert_eq!(truncate_to("éééé", 3), "éé…");
        assert_eq!(truncate_to("", 3), "");
    }

    #[test]
    fn ingress_attributes_are_bounded_and_links_are_built() {
        let sender = "s".repeat(10_000);
        let ingress = |provider| Ingress {
            provider,
            identifier: "acme/infra",
            web_base: "https://git.example.com/",
            on_default_branch: false,
            sender: Some(sender.as_str()),
            compare_base: None,
        };
        let trigger = VcsTrigger::PullRequest {
            number: 7,
            head_ref: "h".repeat(10_000),
            title: "t".repeat(100_000),
        };
        for (provider, expected) in [
            (
                Provider::GitHub,
                "https://git.example.com/acme/infra/pull/7",
            ),
            (
                Provider::GitLab,
                "https://git.example.com/acme/infra/-/merge_requests/7",
            ),
        ] {
            let attributes = ingress_attributes(&ingress(provider), &sha(), &trigger);
            assert_eq!(attributes["pull-request-url"], expected);
            let chars = |key: &str| attributes[key].as_str().unwrap().chars().count();
            assert_eq!(chars("pull-request-title"), MAX_INGRESS_TEXT_CHARS);
            assert_eq!(chars("sender-username"), MAX_NAME_CHARS);
            assert_eq!(chars("branch"), MAX_NAME_CHARS);
        }
        let push = VcsTrigger::Push {
            branch: BranchName::parse("main").unwrap(),
            commit_title: Some("m".repeat(100_000)),
            previous_sha: None,
        };
        let attributes = ingress_attributes(&ingress(Provider::GitHub), &sha(), &push);
        assert_eq!(
            attributes["commit-message"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            MAX_INGRESS_TEXT_CHARS
        );
        assert_eq!(attributes["pull-request-url"], serde_json::Value::Null);
        let tag = VcsTrigger::Tag {
            name: "v".repeat(10_000),
        };
        let attributes = ingress_attributes(&ingress(Provider::GitHub), &sha(), &tag);
        assert_eq!(
            attributes["tag"].as_str().unwrap().chars().count(),
            MAX_NAME_CHARS
        );
    }
}
