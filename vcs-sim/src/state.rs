//! The simulator's world: repositories, pull/merge requests, GitHub Apps and their
//! installations, GitLab tokens, rate limits, injected faults and request counters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use crate::git::{FileChange, GitError, GitRepo};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Github,
    Gitlab,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Git(#[from] GitError),
}

pub struct Commit {
    pub sha: String,
    pub message: String,
    pub parent: Option<String>,
    pub at: DateTime<Utc>,
}

pub struct Pull {
    pub number: i64,
    pub id: i64,
    pub title: String,
    /// Full path of the repository holding the head branch (a fork when not this one).
    pub head_repo: String,
    pub head_branch: String,
    pub base_branch: String,
    pub state: PullState,
    pub draft: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    Open,
    Closed,
    Merged,
}

pub struct Repo {
    pub kind: Kind,
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub default_branch: String,
    pub git: GitRepo,
    pub branches: HashMap<String, String>,
    /// Tag name → the commit it points at.
    pub tags: HashMap<String, String>,
    pub commits: HashMap<String, Commit>,
    pub pulls: Vec<Pull>,
    /// Raw archives served instead of `git archive` (hostile-archive tests).
    pub archive_overrides: HashMap<String, Vec<u8>>,
    pub created_at: DateTime<Utc>,
}

impl Repo {
    pub fn full_path(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The head SHA of a pull request's head branch, wherever it lives.
    pub fn commit(&self, sha: &str) -> Option<&Commit> {
        self.commits.get(sha)
    }
}

pub struct Installation {
    pub id: i64,
    pub app_id: i64,
    pub account: String,
    /// `None`: every GitHub repository of the simulator.
    pub repos: Option<HashSet<String>>,
}

pub struct InstallationToken {
    pub installation_id: i64,
    pub expires_at: DateTime<Utc>,
}

pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub reset_at: DateTime<Utc>,
}

impl RateLimit {
    fn fresh(limit: u64) -> Self {
        RateLimit {
            limit,
            remaining: limit,
            reset_at: Utc::now() + chrono::Duration::hours(1),
        }
    }

    pub fn refresh(&mut self) {
        if Utc::now() >= self.reset_at {
            *self = RateLimit::fresh(self.limit);
        }
    }
}

/// A fault injected for the next `count` matching requests.
#[derive(Clone, Debug, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    /// Matches when the request path contains this.
    #[serde(default)]
    pub path_contains: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Answer `302 Found` (or `redirect_status`) with this `Location` instead (a
    /// redirect to wherever).
    #[serde(default)]
    pub redirect_to: Option<String>,
    /// The redirect's status: 301, 307 (GitHub's answer to a write to a renamed
    /// repository), 308, …
    #[serde(default)]
    pub redirect_status: Option<u16>,
    /// Answer normally, with `Link: <this>; rel="next"` (a page elsewhere).
    #[serde(default)]
    pub link_next: Option<String>,
    /// Carry the request out, then answer `status` anyway: an answer lost on the way
    /// back (a create that happened although the client saw an error).
    #[serde(default)]
    pub answer_lost: bool,
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

impl Fault {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }

    pub fn latency(&self) -> Option<Duration> {
        self.latency_ms.map(Duration::from_millis)
    }
}

/// Request counters, by provider.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Requests that count against the rate limit.
    pub counted: u64,
    /// Conditional requests answered 304 (free on GitHub).
    pub not_modified: u64,
    pub tokens_minted: u64,
    pub archives: u64,
    /// Comparisons and pull/merge request file lists served.
    pub change_lists: u64,
    pub errors: u64,
    /// Requests refused for GitHub's secondary rate limits (403 with `Retry-After`).
    pub secondary_limited: u64,
}

/// Answer times added to every provider request: `fixed_ms` plus up to `jitter_ms`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct Latency {
    #[serde(default)]
    pub fixed_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
}

/// GitHub's secondary rate limits, per App installation: points (a GET is one, a
/// write five, 304s included) in any `window_seconds`, and requests at once.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct SecondaryLimits {
    pub points_per_window: u64,
    pub concurrent: u64,
    #[serde(default = "sixty")]
    pub window_seconds: u64,
}

fn sixty() -> u64 {
    60
}

impl Default for SecondaryLimits {
    /// What GitHub documents: 900 points a minute, 100 concurrent requests.
    fn default() -> Self {
        SecondaryLimits {
            points_per_window: 900,
            concurrent: 100,
            window_seconds: 60,
        }
    }
}

/// One installation's traffic, as the secondary limits see it.
#[derive(Default)]
pub struct InstallationUsage {
    /// Points granted within the current window.
    pub recent: VecDeque<(Instant, u64)>,
    pub in_flight: u64,
    /// Every granted request (bounded), for reports.
    pub history: VecDeque<(Instant, u64)>,
    pub max_in_flight: u64,
}

/// What an installation's traffic looked like, worst case.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UsageReport {
    pub requests: u64,
    /// The most points granted within any window of the configured length.
    pub max_points_in_window: u64,
    pub max_concurrent: u64,
}

/// Requests kept per installation for [`UsageReport`]s.
const HISTORY: usize = 500_000;

impl InstallationUsage {
    /// Grants `points` now unless that breaks `limits`.
    pub fn admit(&mut self, limits: &SecondaryLimits, points: u64) -> bool {
        let now = Instant::now();
        let window = Duration::from_secs(limits.window_seconds);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= window)
        {
            self.recent.pop_front();
        }
        let used: u64 = self.recent.iter().map(|(_, p)| p).sum();
        if used + points > limits.points_per_window || self.in_flight + 1 > limits.concurrent {
            return false;
        }
        self.recent.push_back((now, points));
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((now, points));
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
        true
    }

    pub fn report(&self, window: Duration) -> UsageReport {
        let (mut max, mut sum, mut start) = (0, 0, 0);
        for (at, points) in &self.history {
            sum += points;
            while at.duration_since(self.history[start].0) >= window {
                sum -= self.history[start].1;
                start += 1;
            }
            max = max.max(sum);
        }
        UsageReport {
            requests: self.history.len() as u64,
            max_points_in_window: max,
            max_concurrent: self.max_in_flight,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct WebhookTarget {
    pub kind: Kind,
    pub url: String,
    pub secret: String,
}

pub struct Sim {
    pub root: PathBuf,
    pub repos: HashMap<(Kind, String), Repo>,
    next_id: i64,
    pub github_apps: HashMap<i64, DecodingKey>,
    pub installations: HashMap<i64, Installation>,
    pub github_tokens: HashMap<String, InstallationToken>,
    pub gitlab_tokens: HashMap<String, Option<HashSet<String>>>,
    pub github_rate: RateLimit,
    pub gitlab_rate: RateLimit,
    pub faults: Vec<Fault>,
    pub stats: HashMap<Kind, Stats>,
    pub webhooks: Vec<WebhookTarget>,
    pub latency: Latency,
    /// `None`: no secondary limits (GitHub always has them; tests may turn them off).
    pub secondary_limits: Option<SecondaryLimits>,
    pub usage: HashMap<i64, InstallationUsage>,
    pub check_runs: Vec<crate::checks::CheckRun>,
    pub commit_statuses: Vec<crate::checks::CommitStatus>,
}

pub fn key(kind: Kind, path: &str) -> (Kind, String) {
    (kind, path.to_ascii_lowercase())
}

impl Sim {
    pub fn new(root: PathBuf) -> Self {
        Sim {
            root,
            repos: HashMap::new(),
            next_id: 1000,
            github_apps: HashMap::new(),
            installations: HashMap::new(),
            github_tokens: HashMap::new(),
            gitlab_tokens: HashMap::new(),
            github_rate: RateLimit::fresh(5000),
            gitlab_rate: RateLimit::fresh(2000),
            faults: Vec::new(),
            stats: HashMap::new(),
            webhooks: Vec::new(),
            latency: Latency::default(),
            secondary_limits: Some(SecondaryLimits::default()),
            usage: HashMap::new(),
            check_runs: Vec::new(),
            commit_statuses: Vec::new(),
        }
    }

    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn repo(&self, kind: Kind, path: &str) -> Result<&Repo, SimError> {
        self.repos
            .get(&key(kind, path))
            .ok_or_else(|| SimError::NotFound(format!("no {kind:?} repository {path}")))
    }

    pub fn repo_mut(&mut self, kind: Kind, path: &str) -> Result<&mut Repo, SimError> {
        self.repos
            .get_mut(&key(kind, path))
            .ok_or_else(|| SimError::NotFound(format!("no {kind:?} repository {path}")))
    }

    pub fn stats(&mut self, kind: Kind) -> &mut Stats {
        self.stats.entry(kind).or_default()
    }

    pub fn create_repo(
        &mut self,
        kind: Kind,
        path: &str,
        default_branch: &str,
    ) -> Result<&mut Repo, SimError> {
        let (owner, name) = path
            .rsplit_once('/')
            .filter(|(owner, name)| !owner.is_empty() && !name.is_empty())
            .ok_or_else(|| SimError::Invalid(format!("`{path}` is not OWNER/NAME")))?;
        if kind == Kind::Github && owner.contains('/') {
            return Err(SimError::Invalid(
                "GitHub repositories are OWNER/NAME".into(),
            ));
        }
        let repo_key = key(kind, path);
        if self.repos.contains_key(&repo_key) {
            return Err(SimError::Invalid(format!("repository {path} exists")));
        }
        let id = self.next_id();
        let dir = self.root.join(format!("{id}.git"));
        let repo = Repo {
            kind,
            id,
            owner: owner.to_owned(),
            name: name.to_owned(),
            default_branch: default_branch.to_owned(),
            git: GitRepo::init(dir)?,
            branches: HashMap::new(),
            tags: HashMap::new(),
            commits: HashMap::new(),
            pulls: Vec::new(),
            archive_overrides: HashMap::new(),
            created_at: Utc::now(),
        };
        Ok(self.repos.entry(repo_key).or_insert(repo))
    }
}

impl Repo {
    /// Commits `changes` on `branch` (created from `from`, or empty, when missing).
    pub fn commit_on(
        &mut self,
        branch: &str,
        from: Option<&str>,
        message: &str,
        changes: &[FileChange],
    ) -> Result<(String, Option<String>), SimError> {
        let before = match self.branches.get(branch) {
            Some(head) => Some(head.clone()),
            None => match from {
                Some(from) => Some(
                    self.branches
                        .get(from)
                        .cloned()
                        .ok_or_else(|| SimError::NotFound(format!("no branch {from}")))?,
                ),
                None => None,
            },
        };
        let sha = self.git.commit(before.as_deref(), message, changes)?;
        self.git.set_branch(branch, &sha)?;
        self.branches.insert(branch.to_owned(), sha.clone());
        self.commits.insert(
            sha.clone(),
            Commit {
                sha: sha.clone(),
                message: message.to_owned(),
                parent: before.clone(),
                at: Utc::now(),
            },
        );
        for pull in self
            .pulls
            .iter_mut()
            .filter(|p| p.head_branch == branch && p.state == PullState::Open)
        {
            pull.updated_at = Utc::now();
        }
        Ok((sha, before))
    }
}
