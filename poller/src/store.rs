//! The poller's reads and writes of workspaces. Every statement is short; none is
//! held open across a provider call.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Double, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::archives::StoredArchive;
use terrapod_shared::db::models::{VcsConnection, Workspace};
use terrapod_shared::db::schema::{
    commit_archives, configuration_archives, runs, vcs_connections, vcs_events,
    workspace_seen_tags, workspaces,
};
use terrapod_shared::domain::{CommitSha, Provider, TriggerReason};
use terrapod_shared::ids::{VcsConnectionId, WorkspaceId};
use terrapod_shared::vcs::ArchiveLimits;

use crate::cache::{Freshness, RepoKey};

/// Seed of the 64-bit advisory-lock keys of workspace polls (`hashtextextended(id,
/// seed)`); the SQL fragments below spell it out (0x7470 = 29808).
const LOCK_SEED: i64 = 0x7470;
/// Unlocks unless a poll was asked for after the bound timestamp (then `false`).
const UNLOCK_UNLESS_ASKED_SINCE: [&str; 2] = [
    "CASE WHEN vcs_poll_requested_at IS NULL OR vcs_poll_requested_at <= ",
    " THEN pg_advisory_unlock(hashtextextended(workspaces.id, 29808)) ELSE false END",
];
/// The longest error kept in `vcs-last-error`.
const MAX_ERROR_CHARS: usize = 500;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// A workspace claimed by the schedule.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = Text)]
    pub id: WorkspaceId,
    #[diesel(sql_type = Nullable<Text>)]
    pub connection_id: Option<VcsConnectionId>,
    #[diesel(sql_type = Text)]
    pub repo_path: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub provider: Option<Provider>,
    /// How long after it was due the workspace was claimed.
    #[diesel(sql_type = Double)]
    pub lag_seconds: f64,
}

/// The database's clock: a cycle's start, as claims judge it.
pub async fn database_now(conn: &mut AsyncPgConnection) -> QueryResult<DateTime<Utc>> {
    diesel::sql_query("SELECT now() AS now")
        .get_result::<Now>(conn)
        .await
        .map(|row| row.now)
}

/// Takes the workspace's session-level advisory lock (a 64-bit key: 32-bit hashes
/// collide once there are tens of thousands of workspaces) if it is free.
pub async fn try_lock(conn: &mut AsyncPgConnection, workspace: &WorkspaceId) -> QueryResult<bool> {
    diesel::sql_query("SELECT pg_try_advisory_lock(hashtextextended($1, $2)) AS locked")
        .bind::<Text, _>(workspace.as_str())
        .bind::<BigInt, _>(LOCK_SEED)
        .get_result::<Locked>(conn)
        .await
        .map(|row| row.locked)
}

pub async fn unlock(conn: &mut AsyncPgConnection, workspace: &WorkspaceId) -> QueryResult<bool> {
    diesel::sql_query("SELECT pg_advisory_unlock(hashtextextended($1, $2)) AS locked")
        .bind::<Text, _>(workspace.as_str())
        .bind::<BigInt, _>(LOCK_SEED)
        .get_result::<Locked>(conn)
        .await
        .map(|row| row.locked)
}

/// Claims up to `limit` linked workspaces that were due at `as_of` (no poll attempt
/// within the interval before it), except those of `skip_connections`, marking the
/// attempt now. A cycle passes its start
/// as `as_of`, so workspaces that fall due again while it runs wait for the next one.
/// `vcs_last_attempt_at` is the same for a whole batch, so the batch stays grouped by
/// repository next interval too. `SKIP LOCKED` lets replicas claim side by side.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    as_of: DateTime<Utc>,
    interval_seconds: f64,
    limit: i64,
    skip_connections: &[VcsConnectionId],
) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(
        "WITH due AS (
             SELECT id, vcs_last_attempt_at AS previous FROM workspaces
             WHERE vcs_repo_url <> ''
               AND created_at <= $1
               AND (vcs_last_attempt_at IS NULL
                    OR vcs_last_attempt_at <= $1 - make_interval(secs => $2))
               AND (vcs_connection_id IS NULL OR vcs_connection_id <> ALL($4))
             -- Oldest first (from the index workspaces_poll_due); within equal attempt
             -- times, connections in an order of this replica's own, so replicas work
             -- on different installations at once instead of crowding one (20
             -- requests at most), and a repository's workspaces together, so one
             -- replica polls them one after another from one set of provider answers.
             ORDER BY vcs_last_attempt_at NULLS FIRST,
                      hashtextextended(coalesce(vcs_connection_id, ''), $5),
                      vcs_connection_id, vcs_repo_path
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         UPDATE workspaces w SET vcs_last_attempt_at = now()
         FROM due WHERE w.id = due.id
         RETURNING w.id, w.vcs_connection_id AS connection_id, w.vcs_repo_path AS repo_path,
             (SELECT c.provider FROM vcs_connections c WHERE c.id = w.vcs_connection_id) AS provider,
             coalesce(greatest(0, extract(epoch FROM now() - due.previous) - $2), 0)::float8
                 AS lag_seconds",
    )
    .bind::<Timestamptz, _>(as_of)
    .bind::<Double, _>(interval_seconds)
    .bind::<BigInt, _>(limit)
    .bind::<Array<Text>, _>(
        skip_connections
            .iter()
            .map(VcsConnectionId::as_str)
            .collect::<Vec<_>>(),
    )
    .bind::<BigInt, _>(*CLAIM_ORDER_SEED)
    .load(conn)
    .await
}

/// This process's order of connections when claiming (see [`claim_due`]).
static CLAIM_ORDER_SEED: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    terrapod_shared::ids::random_base58(8)
        .bytes()
        .fold(0i64, |seed, byte| {
            seed.wrapping_mul(131).wrapping_add(i64::from(byte))
        })
});

#[derive(QueryableByName)]
struct Seconds {
    #[diesel(sql_type = Double)]
    seconds: f64,
}

/// Seconds until the next linked workspace falls due (zero or less when one is due
/// now); `None` when no workspace is linked.
pub async fn seconds_until_next_due(
    conn: &mut AsyncPgConnection,
    interval_seconds: f64,
) -> QueryResult<Option<f64>> {
    // The oldest attempt (never attempted first), straight from the due index.
    diesel::sql_query(
        "SELECT coalesce(extract(epoch FROM oldest.at + make_interval(secs => $1) - now()), 0)::float8
             AS seconds
         FROM (SELECT vcs_last_attempt_at AS at FROM workspaces WHERE vcs_repo_url <> ''
               ORDER BY vcs_last_attempt_at NULLS FIRST LIMIT 1) AS oldest",
    )
    .bind::<Double, _>(interval_seconds)
    .get_result::<Seconds>(conn)
    .await
    .optional()
    .map(|row| row.map(|row| row.seconds))
}

/// Hands an interrupted poll's workspace back: due at once, for any replica.
pub async fn release_attempt(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<()> {
    diesel::update(workspaces::table.find(workspace))
        .set(workspaces::vcs_last_attempt_at.eq(None::<DateTime<Utc>>))
        .execute(conn)
        .await
        .map(drop)
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = Timestamptz)]
    taken_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    requested_at: Option<DateTime<Utc>>,
}

/// A poller took the workspace's queued poll message: a request arriving from now on
/// queues another one, and the attempt is marked (so the schedule does not poll it
/// again at once). Returns how fresh the poll's answers must be: no older than the
/// last request for it (which may have been folded into this message), or than this
/// moment when no request was recorded.
pub async fn take_poll_request(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<Freshness> {
    let taken: Option<Taken> = diesel::sql_query(
        "UPDATE workspaces SET vcs_poll_queued_at = NULL, vcs_last_attempt_at = now()
         WHERE id = $1
         RETURNING now() AS taken_at, vcs_poll_requested_at AS requested_at",
    )
    .bind::<Text, _>(workspace.as_str())
    .get_result(conn)
    .await
    .optional()?;
    let taken_at = match &taken {
        Some(taken) => taken.taken_at,
        None => database_now(conn).await?,
    };
    Ok(Freshness {
        not_before: taken
            .and_then(|taken| taken.requested_at)
            .unwrap_or(taken_at)
            .min(taken_at),
        stamp: taken_at,
    })
}

diesel::define_sql_function! {
    /// PostgreSQL's `hashtextextended(text, seed)`: a 64-bit hash.
    fn hashtextextended(text: Text, seed: BigInt) -> BigInt;
}

diesel::define_sql_function! {
    fn pg_try_advisory_lock(key: BigInt) -> Bool;
}

/// Takes the workspace's session advisory lock if it is free and, in the same
/// statement (a prepared one: the hottest of the poller), reads the workspace and its
/// connection (if it still has one). `None` when the workspace is gone;
/// `Some((false, …))` when another poll holds the lock.
pub async fn lock_and_load(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<Option<(bool, Workspace, Option<VcsConnection>)>> {
    workspaces::table
        .find(workspace)
        .left_join(vcs_connections::table)
        .select((
            pg_try_advisory_lock(hashtextextended(workspaces::id, LOCK_SEED)),
            Workspace::as_select(),
            Option::<VcsConnection>::as_select(),
        ))
        .first(conn)
        .await
        .optional()
}

/// What became of a poll's result.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded, and the workspace's lock released.
    Unlocked,
    /// Recorded, but a poll was asked for after the answers this one used: the lock
    /// is kept for another round, with answers asked for after `requested_at`
    /// (stamped `now`).
    AskedAgain {
        requested_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// Nothing written: the settings changed since the poll read them (the lock is
    /// still held).
    Superseded,
}

/// Records a poll's result (`error` is `None` for a successful one) and releases the
/// workspace's lock in one statement, unless the settings changed since `generation`
/// or a poll was asked for after `answers_from` (see [`Recorded`]).
pub async fn record_and_unlock(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    generation: i64,
    error: Option<&str>,
    answers_from: DateTime<Utc>,
) -> QueryResult<Recorded> {
    let target = workspaces::table
        .find(workspace)
        .filter(workspaces::vcs_settings_generation.eq(generation));
    let returned = (
        diesel::dsl::sql::<Bool>(UNLOCK_UNLESS_ASKED_SINCE[0])
            .bind::<Timestamptz, _>(answers_from)
            .sql(UNLOCK_UNLESS_ASKED_SINCE[1]),
        workspaces::vcs_poll_requested_at,
        diesel::dsl::sql::<Timestamptz>("now()"),
    );
    type Row = (bool, Option<DateTime<Utc>>, DateTime<Utc>);
    let row: Option<Row> = match error {
        None => {
            diesel::update(target)
                .set((
                    workspaces::vcs_last_polled_at.eq(diesel::dsl::now),
                    workspaces::vcs_last_error.eq(None::<String>),
                    workspaces::vcs_last_error_at.eq(None::<DateTime<Utc>>),
                ))
                .returning(returned)
                .get_result(conn)
                .await
        }
        Some(error) => {
            diesel::update(target)
                .set((
                    workspaces::vcs_last_error.eq(short_error(error)),
                    workspaces::vcs_last_error_at.eq(diesel::dsl::now),
                ))
                .returning(returned)
                .get_result(conn)
                .await
        }
    }
    .optional()?;
    Ok(match row {
        None => Recorded::Superseded,
        Some((true, _, _)) => Recorded::Unlocked,
        Some((false, requested_at, now)) => Recorded::AskedAgain {
            requested_at: requested_at.unwrap_or(now),
            now,
        },
    })
}

/// The workspace and its connection (if it still has one), read under the lock.
pub async fn load(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<Option<(Workspace, Option<VcsConnection>)>> {
    workspaces::table
        .find(workspace)
        .left_join(vcs_connections::table)
        .select((Workspace::as_select(), Option::<VcsConnection>::as_select()))
        .first(conn)
        .await
        .optional()
}

/// At most [`MAX_ERROR_CHARS`] characters, marked when cut.
pub fn short_error(error: &str) -> String {
    if error.chars().count() <= MAX_ERROR_CHARS {
        return error.to_owned();
    }
    let mut short: String = error.chars().take(MAX_ERROR_CHARS - 1).collect();
    short.push('…');
    short
}

/// True when this PR head already has its speculative run, so nothing is downloaded.
pub async fn pull_request_run_exists(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    number: i64,
    sha: &str,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        runs::table
            .filter(runs::workspace_id.eq(workspace))
            .filter(runs::trigger_reason.eq(TriggerReason::PullRequest))
            .filter(runs::vcs_pull_request_number.eq(number))
            .filter(runs::vcs_commit_sha.eq(sha)),
    ))
    .get_result(conn)
    .await
}

/// What is known of a commit's archive.
#[derive(Debug, PartialEq, Eq)]
pub enum Remembered {
    Stored(StoredArchive),
    /// Refused under the limits it was tried with.
    Refused {
        reason: String,
        limits: ArchiveLimits,
    },
}

pub async fn remembered_archive(
    conn: &mut AsyncPgConnection,
    repo: &RepoKey,
    sha: &CommitSha,
) -> QueryResult<Option<Remembered>> {
    type Row = (
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = commit_archives::table
        .left_join(configuration_archives::table)
        .filter(commit_archives::connection_id.eq(&repo.connection))
        .filter(commit_archives::repo_path.eq(&repo.repo_path))
        .filter(commit_archives::commit_sha.eq(sha.as_str()))
        .select((
            commit_archives::archive_sha256,
            configuration_archives::size.nullable(),
            commit_archives::refusal,
            commit_archives::refused_max_archive_bytes,
            commit_archives::refused_max_unpacked_bytes,
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(
        row.and_then(|(sha256, size, refusal, max_archive, max_unpacked)| {
            match (sha256, size, refusal) {
                (Some(sha256), Some(size), _) => {
                    Some(Remembered::Stored(StoredArchive { sha256, size }))
                }
                (_, _, Some(reason)) => Some(Remembered::Refused {
                    reason,
                    limits: ArchiveLimits {
                        max_archive_bytes: max_archive.unwrap_or(0).max(0) as u64,
                        max_unpacked_bytes: max_unpacked.unwrap_or(0).max(0) as u64,
                    },
                }),
                _ => None,
            }
        }),
    )
}

/// Forgets what is known of commits' archives after `days` (a later poll of such a
/// commit downloads it again). Returns how many went.
pub async fn purge_commit_archives(conn: &mut AsyncPgConnection, days: i32) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM commit_archives WHERE created_at < now() - make_interval(days => $1)",
    )
    .bind::<diesel::sql_types::Integer, _>(days)
    .execute(conn)
    .await
}

/// Remembers where a commit's archive is stored (any replica reuses it).
pub async fn remember_archive(
    conn: &mut AsyncPgConnection,
    repo: &RepoKey,
    sha: &CommitSha,
    archive: &StoredArchive,
) -> QueryResult<()> {
    diesel::insert_into(commit_archives::table)
        .values((
            commit_archives::connection_id.eq(&repo.connection),
            commit_archives::repo_path.eq(&repo.repo_path),
            commit_archives::commit_sha.eq(sha.as_str()),
            commit_archives::archive_sha256.eq(&archive.sha256),
        ))
        .on_conflict((
            commit_archives::connection_id,
            commit_archives::repo_path,
            commit_archives::commit_sha,
        ))
        .do_update()
        .set((
            commit_archives::archive_sha256.eq(&archive.sha256),
            commit_archives::refusal.eq(None::<String>),
            commit_archives::refused_max_archive_bytes.eq(None::<i64>),
            commit_archives::refused_max_unpacked_bytes.eq(None::<i64>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Remembers that a commit's archive was refused under `limits`.
pub async fn remember_refusal(
    conn: &mut AsyncPgConnection,
    repo: &RepoKey,
    sha: &CommitSha,
    reason: &str,
    limits: ArchiveLimits,
) -> QueryResult<()> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let values = (
        commit_archives::refusal.eq(short_error(reason)),
        commit_archives::refused_max_archive_bytes.eq(as_i64(limits.max_archive_bytes)),
        commit_archives::refused_max_unpacked_bytes.eq(as_i64(limits.max_unpacked_bytes)),
    );
    diesel::insert_into(commit_archives::table)
        .values((
            commit_archives::connection_id.eq(&repo.connection),
            commit_archives::repo_path.eq(&repo.repo_path),
            commit_archives::commit_sha.eq(sha.as_str()),
            values.clone(),
        ))
        .on_conflict((
            commit_archives::connection_id,
            commit_archives::repo_path,
            commit_archives::commit_sha,
        ))
        .do_update()
        .set((values, commit_archives::archive_sha256.eq(None::<String>)))
        .execute(conn)
        .await
        .map(drop)
}

/// What a decision not to run was about: the key that records it once per head and
/// per VCS settings generation (a PATCH of the triggers makes the head judged again).
pub struct Decision<'a> {
    pub commit_sha: &'a str,
    pub pull_request: Option<i64>,
    /// `files`, `fork` or `speculative`.
    pub reason: &'static str,
    pub generation: i64,
}

impl Decision<'_> {
    fn key(&self) -> String {
        let subject = match self.pull_request {
            Some(number) => format!("pr-{number}"),
            None => "push".to_owned(),
        };
        format!(
            "{}:g{}:{subject}:{}",
            self.reason, self.generation, self.commit_sha
        )
    }
}

/// Records, once, that a change got no run and why (the event log) — only while the
/// workspace's settings are still those the decision was taken under.
pub async fn record_skip(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    decision: &Decision<'_>,
    message: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO vcs_events (workspace_id, kind, commit_sha, pull_request_number, message, dedup_key)
         SELECT id, 'skipped', $2, $3, $4, $5 FROM workspaces
         WHERE id = $1 AND vcs_settings_generation = $6
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(workspace.as_str())
    .bind::<Text, _>(decision.commit_sha)
    .bind::<Nullable<BigInt>, _>(decision.pull_request)
    .bind::<Text, _>(message)
    .bind::<Text, _>(decision.key())
    .bind::<BigInt, _>(decision.generation)
    .execute(conn)
    .await
    .map(drop)
}

/// Whether this decision was recorded already.
pub async fn skip_recorded(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
    decision: &Decision<'_>,
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        vcs_events::table
            .filter(vcs_events::workspace_id.eq(workspace))
            .filter(vcs_events::dedup_key.eq(decision.key())),
    ))
    .get_result(conn)
    .await
}

/// The first poll of a tag-driven workspace: every tag present is recorded as seen
/// (no runs), under the settings the poll read. False when they changed meanwhile.
pub async fn baseline_tags(
    conn: &mut AsyncPgConnection,
    workspace: &Workspace,
    tags: &[terrapod_shared::vcs::Tag],
) -> QueryResult<bool> {
    use diesel::upsert::excluded;
    use diesel_async::AsyncConnection;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let marked = diesel::update(workspaces::table.find(&workspace.id))
            .filter(workspaces::vcs_settings_generation.eq(workspace.vcs_settings_generation))
            .filter(workspaces::vcs_tags_baselined_at.is_null())
            .set(workspaces::vcs_tags_baselined_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
        if marked == 0 {
            return Ok(false);
        }
        // What was seen before (another repository, deleted tags) no longer applies.
        diesel::delete(
            workspace_seen_tags::table.filter(workspace_seen_tags::workspace_id.eq(&workspace.id)),
        )
        .execute(conn)
        .await?;
        for chunk in tags.chunks(1000) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|tag| {
                    (
                        workspace_seen_tags::workspace_id.eq(&workspace.id),
                        workspace_seen_tags::name.eq(&tag.name),
                        workspace_seen_tags::commit_sha.eq(tag.sha.as_str()),
                    )
                })
                .collect();
            diesel::insert_into(workspace_seen_tags::table)
                .values(rows)
                .on_conflict((workspace_seen_tags::workspace_id, workspace_seen_tags::name))
                .do_update()
                .set(workspace_seen_tags::commit_sha.eq(excluded(workspace_seen_tags::commit_sha)))
                .execute(conn)
                .await?;
        }
        Ok(true)
    })
    .await
}

/// The tags a workspace has seen, by name, with their commits.
pub async fn seen_tags(
    conn: &mut AsyncPgConnection,
    workspace: &WorkspaceId,
) -> QueryResult<std::collections::HashMap<String, String>> {
    workspace_seen_tags::table
        .filter(workspace_seen_tags::workspace_id.eq(workspace))
        .select((workspace_seen_tags::name, workspace_seen_tags::commit_sha))
        .load::<(String, String)>(conn)
        .await
        .map(|rows| rows.into_iter().collect())
}

/// Records that a tag was seen at a commit (after its run, if it got one), only under
/// the settings the poll read: false when they changed (a new regex judges it again).
pub async fn mark_tag_seen(
    conn: &mut AsyncPgConnection,
    workspace: &Workspace,
    name: &str,
    commit_sha: &str,
) -> QueryResult<bool> {
    diesel::sql_query(
        "INSERT INTO workspace_seen_tags (workspace_id, name, commit_sha)
         SELECT id, $2, $3 FROM workspaces WHERE id = $1 AND vcs_settings_generation = $4
         ON CONFLICT (workspace_id, name) DO UPDATE SET commit_sha = EXCLUDED.commit_sha",
    )
    .bind::<Text, _>(workspace.id.as_str())
    .bind::<Text, _>(name)
    .bind::<Text, _>(commit_sha)
    .bind::<BigInt, _>(workspace.vcs_settings_generation)
    .execute(conn)
    .await
    .map(|rows| rows == 1)
}

/// Whether two error messages say the same thing, countdowns aside ("resets in 42s"
/// and "resets in 17s" are one rate limit, not two events).
pub fn same_error(a: &str, b: &str) -> bool {
    let without_digits = |text: &str| {
        text.chars()
            .filter(|c| !c.is_ascii_digit())
            .collect::<String>()
    };
    without_digits(a) == without_digits(b)
}

/// Records a poll error in the event log (the caller records only new ones).
pub async fn record_poll_error(
    conn: &mut AsyncPgConnection,
    workspace: &Workspace,
    message: &str,
) -> QueryResult<()> {
    diesel::insert_into(vcs_events::table)
        .values((
            vcs_events::workspace_id.eq(&workspace.id),
            vcs_events::kind.eq("poll-error"),
            vcs_events::message.eq(message),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Drops events older than `days`.
pub async fn purge_vcs_events(conn: &mut AsyncPgConnection, days: i32) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM vcs_events WHERE created_at < now() - make_interval(days => $1)")
        .bind::<diesel::sql_types::Integer, _>(days)
        .execute(conn)
        .await
}

/// Advances the last SHA to `head` without a run (its changes concern other files),
/// if it is still `previous` under the settings the poll read, recording why in the
/// same transaction. False when another poll or a PATCH got there first.
pub async fn advance_without_run(
    conn: &mut AsyncPgConnection,
    workspace: &Workspace,
    previous: &str,
    head: &CommitSha,
    message: &str,
) -> QueryResult<bool> {
    use diesel_async::AsyncConnection;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let advanced = diesel::update(workspaces::table.find(&workspace.id))
            .filter(workspaces::vcs_settings_generation.eq(workspace.vcs_settings_generation))
            .filter(workspaces::vcs_last_commit_sha.eq(previous))
            .set(workspaces::vcs_last_commit_sha.eq(head.as_str()))
            .execute(conn)
            .await?;
        if advanced == 1 {
            let decision = Decision {
                commit_sha: head.as_str(),
                pull_request: None,
                reason: "files",
                generation: workspace.vcs_settings_generation,
            };
            record_skip(conn, &workspace.id, &decision, message).await?;
        }
        Ok(advanced == 1)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_differ_only_in_a_countdown_are_the_same() {
        assert!(same_error(
            "github: rate limit exhausted; resets in 42s",
            "github: rate limit exhausted; resets in 7s"
        ));
        assert!(!same_error("branch main not found", "HTTP 502 from github"));
    }

    #[test]
    fn every_lock_statement_uses_the_same_key() {
        let unlock = UNLOCK_UNLESS_ASKED_SINCE[1];
        assert!(
            unlock.contains(&format!("hashtextextended(workspaces.id, {LOCK_SEED})")),
            "{unlock}"
        );
    }
}
