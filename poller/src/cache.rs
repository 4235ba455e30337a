//! What one poll cycle learns from providers, shared by every workspace polled in it:
//! 50 workspaces on one repository and branch cost one set of provider calls.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use terrapod_shared::vcs::{BranchHead, ProviderClient, PullRequest, Repacked, VcsError};
use tokio::sync::OnceCell;

pub type Shared<T> = Result<T, Arc<VcsError>>;

/// One computation per key; concurrent askers wait for the first.
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
    pub async fn get_or_init<F, Fut>(&self, key: K, init: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .cells
            .lock()
            .expect("cache lock")
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_init(init).await.clone()
    }
}

/// (connection id, repository path, branch or SHA)
type Key = (String, String, String);

#[derive(Default)]
pub struct CycleCache {
    pub clients: OnceMap<String, Shared<Arc<ProviderClient>>>,
    pub default_branches: OnceMap<Key, Shared<String>>,
    pub heads: OnceMap<Key, Shared<BranchHead>>,
    pub pulls: OnceMap<Key, Shared<Arc<Vec<PullRequest>>>>,
    pub archives: OnceMap<Key, Shared<Arc<Repacked>>>,
}
