//! What one poll cycle learns from providers, shared by the workspaces polled in it:
//! 50 workspaces on one repository and branch cost one set of provider calls.
//!
//! A cycle's cache dies with the cycle, and a failed answer is never kept: the next
//! workspace that needs it asks the provider again, so an error is seen only by the
//! poll that met it. Archives are not held here, only the id of the stored archive.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use terrapod_shared::archives::StoredArchive;
use terrapod_shared::domain::CommitSha;
use terrapod_shared::ids::VcsConnectionId;
use terrapod_shared::vcs::{BranchHead, ProviderClient, PullRequest};
use tokio::sync::OnceCell;

/// One computation per key at a time; concurrent askers wait for the first. A
/// failure is returned to the asker whose computation failed and not remembered.
pub struct OnceMap<K, V> {
    cells: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for OnceMap<K, V> {
    fn default() -> Self {
        OnceMap {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> OnceMap<K, V> {
    pub async fn get_or_try_init<E, F, Fut>(&self, key: K, init: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = self
            .cells
            .lock()
            .expect("cache lock")
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_try_init(init).await.cloned()
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
    pub clients: OnceMap<VcsConnectionId, Arc<ProviderClient>>,
    pub default_branches: OnceMap<RepoKey, String>,
    /// By branch name.
    pub heads: OnceMap<(RepoKey, String), BranchHead>,
    /// Open pull/merge requests by target branch.
    pub pulls: OnceMap<(RepoKey, String), Arc<Vec<PullRequest>>>,
    pub archives: OnceMap<(RepoKey, CommitSha), StoredArchive>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_not_remembered_but_answers_are() {
        let map: OnceMap<&str, u32> = OnceMap::default();
        let failed: Result<u32, &str> = map.get_or_try_init("k", || async { Err("boom") }).await;
        assert_eq!(failed, Err("boom"));
        let answered: Result<u32, &str> = map.get_or_try_init("k", || async { Ok(7) }).await;
        assert_eq!(answered, Ok(7));
        let cached: Result<u32, &str> = map
            .get_or_try_init("k", || async { panic!("asked again") })
            .await;
        assert_eq!(cached, Ok(7));
    }
}
