//! What polls learn from providers, shared by the polls of one cycle (or of one
//! webhook delivery): 50 workspaces on one repository and branch cost one set of
//! provider calls.
//!
//! Every answer is stamped with when its poll was claimed (or took its message), a
//! time before the request was sent; a poll uses only answers stamped no earlier than
//! its own [`Freshness::not_before`], so it never reports a state older than what it
//! was asked to look at. A cache dies with its cycle (or delivery), and a failed
//! answer is never kept: the next poll that needs it asks the provider again, so an
//! error is seen only by the poll that met it. Archives are not held here, only the
//! id of the stored archive.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use terrapod_shared::archives::StoredArchive;
use terrapod_shared::domain::CommitSha;
use terrapod_shared::ids::VcsConnectionId;
use terrapod_shared::triggers::ChangedFiles;
use terrapod_shared::vcs::Tag;
use terrapod_shared::vcs::{BranchHead, ProviderClient, PullRequest};
use tokio::sync::OnceCell;

/// How fresh a poll's answers must be, on the database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// Answers asked for before this are too old for the poll.
    pub not_before: DateTime<Utc>,
    /// What the answers this poll asks for are stamped with (the poll's claim or
    /// take time: a bound below the moment the request is sent).
    pub stamp: DateTime<Utc>,
}

impl Freshness {
    /// For answers that never change (a commit's archive): any will do.
    pub const TIMELESS: Freshness = Freshness {
        not_before: DateTime::<Utc>::MIN_UTC,
        stamp: DateTime::<Utc>::MAX_UTC,
    };

    /// A poll that asks for everything itself from `at` on.
    pub fn from(at: DateTime<Utc>) -> Freshness {
        Freshness {
            not_before: at,
            stamp: at,
        }
    }
}

struct Entry<V> {
    stamp: DateTime<Utc>,
    cell: OnceCell<V>,
}

/// One computation per key at a time; concurrent askers wait for the first. A
/// failure is returned to the asker whose computation failed and not remembered; an
/// answer stamped before an asker's `not_before` is replaced by a fresh one.
pub struct OnceMap<K, V> {
    cells: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

impl<K, V> Default for OnceMap<K, V> {
    fn default() -> Self {
        OnceMap {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> OnceMap<K, V> {
    pub async fn get_or_try_init<E, F, Fut>(
        &self,
        key: K,
        freshness: Freshness,
        init: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let entry = {
            let mut cells = self.cells.lock().expect("cache lock");
            match cells.get(&key) {
                Some(entry) if entry.stamp >= freshness.not_before => entry.clone(),
                _ => {
                    let entry = Arc::new(Entry {
                        stamp: freshness.stamp,
                        cell: OnceCell::new(),
                    });
                    cells.insert(key, entry.clone());
                    entry
                }
            }
        };
        entry.cell.get_or_try_init(init).await.cloned()
    }
}

/// A repository as one connection sees it (the path lowercased).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoKey {
    pub connection: VcsConnectionId,
    pub repo_path: String,
}

#[derive(Default)]
pub struct CycleCache {
    /// By connection and its last change (a PATCH of its credentials makes a new client).
    pub clients: OnceMap<(VcsConnectionId, DateTime<Utc>), Arc<ProviderClient>>,
    pub default_branches: OnceMap<RepoKey, String>,
    /// By branch name.
    pub heads: OnceMap<(RepoKey, String), BranchHead>,
    /// Open pull/merge requests by target branch.
    pub pulls: OnceMap<(RepoKey, String), Arc<Vec<PullRequest>>>,
    pub archives: OnceMap<(RepoKey, CommitSha), StoredArchive>,
    /// A repository's tags.
    pub tags: OnceMap<RepoKey, Arc<Vec<Tag>>>,
    /// Changed files being fetched in this cycle (then kept in [`ChangeCache`]).
    pub changes: OnceMap<ChangeKey, Arc<ChangedFiles>>,
}

/// Which changed files: of a comparison, or of a pull request at one head. Neither
/// ever changes, so answers are kept for the whole process (bounded).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKey {
    Compare {
        repo: RepoKey,
        base: CommitSha,
        head: CommitSha,
    },
    PullRequest {
        repo: RepoKey,
        number: i64,
        head: CommitSha,
    },
}

/// Changed-file lists this process has fetched, at most [`CHANGE_CACHE_BYTES`] of
/// paths, least recently used first out.
pub type ChangeCache = moka::sync::Cache<ChangeKey, Arc<ChangedFiles>>;

pub const CHANGE_CACHE_BYTES: u64 = 64 << 20;

pub fn change_cache() -> ChangeCache {
    moka::sync::Cache::builder()
        .weigher(|_, files: &Arc<ChangedFiles>| {
            let bytes = match files.as_ref() {
                ChangedFiles::Known(paths) => paths.iter().map(|p| p.len() + 24).sum(),
                ChangedFiles::Truncated => 0,
            };
            u32::try_from(bytes + 64).unwrap_or(u32::MAX)
        })
        .max_capacity(CHANGE_CACHE_BYTES)
        .time_to_idle(std::time::Duration::from_secs(6 * 3600))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn fresh(not_before: i64, stamp: i64) -> Freshness {
        Freshness {
            not_before: at(not_before),
            stamp: at(stamp),
        }
    }

    #[tokio::test]
    async fn failures_are_not_remembered_but_answers_are() {
        let map: OnceMap<&str, u32> = OnceMap::default();
        let now = fresh(0, 0);
        let failed: Result<u32, &str> = map
            .get_or_try_init("k", now, || async { Err("boom") })
            .await;
        assert_eq!(failed, Err("boom"));
        let answered: Result<u32, &str> = map.get_or_try_init("k", now, || async { Ok(7) }).await;
        assert_eq!(answered, Ok(7));
        let cached: Result<u32, &str> = map
            .get_or_try_init("k", now, || async { panic!("asked again") })
            .await;
        assert_eq!(cached, Ok(7));
    }

    #[tokio::test]
    async fn an_answer_older_than_what_a_poll_was_asked_for_is_asked_again() {
        let map: OnceMap<&str, u32> = OnceMap::default();
        let first: Result<u32, ()> = map
            .get_or_try_init("k", fresh(0, 10), || async { Ok(1) })
            .await;
        assert_eq!(first, Ok(1));
        // Asked for at 5: the answer stamped 10 will do.
        let shared: Result<u32, ()> = map
            .get_or_try_init("k", fresh(5, 12), || async { panic!("asked again") })
            .await;
        assert_eq!(shared, Ok(1));
        // Asked for at 11: the answer stamped 10 is too old.
        let renewed: Result<u32, ()> = map
            .get_or_try_init("k", fresh(11, 12), || async { Ok(2) })
            .await;
        assert_eq!(renewed, Ok(2));
    }
}
