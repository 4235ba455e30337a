//! Talking to version control systems: one [`VcsProvider`] interface with a GitHub
//! App and a GitLab implementation, repository URL parsing, and archive repacking.

pub mod archive;
pub mod budget;
pub mod error;
pub mod github;
pub mod gitlab;
pub mod http;
pub mod repo_url;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use secrecy::SecretString;

pub use archive::{ArchiveError, ArchiveLimits, Repacked};
pub use budget::Priority;
pub use error::{CredentialProblem, VcsError};
pub use repo_url::RepoUrl;

use crate::crypto::KeyRing;
use crate::db::models::VcsConnection;
use crate::domain::{CommitSha, Provider};
use http::VcsHttp;

/// The head of a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchHead {
    pub sha: CommitSha,
    /// The first line of the commit message.
    pub title: Option<String>,
    /// Who made the commit: the GitHub user, or GitLab's author name.
    pub author: Option<String>,
}

/// A tag and the commit it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub sha: CommitSha,
}

/// An open pull request (GitHub) or merge request (GitLab; `number` is the `iid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub number: i64,
    pub head_sha: CommitSha,
    pub head_ref: String,
    pub title: String,
    /// The head lives in another repository (a fork).
    pub from_fork: bool,
    pub draft: bool,
    /// Who opened it.
    pub author: Option<String>,
}

/// What the poller asks of a provider. Every call is bounded in time and retried
/// only within [`http::RetryPolicy`].
pub use crate::triggers::ChangedFiles;

pub trait VcsProvider {
    fn provider(&self) -> Provider;

    fn default_branch(
        &self,
        repo: &RepoUrl,
    ) -> impl Future<Output = Result<String, VcsError>> + Send;

    fn branch_head(
        &self,
        repo: &RepoUrl,
        branch: &str,
    ) -> impl Future<Output = Result<BranchHead, VcsError>> + Send;

    /// Every open PR/MR targeting `base`, across all pages.
    fn open_pull_requests(
        &self,
        repo: &RepoUrl,
        base: &str,
    ) -> impl Future<Output = Result<Vec<PullRequest>, VcsError>> + Send;

    /// The repository at `sha`, repacked (wrapper removed, hostile entries refused or
    /// dropped, limits enforced).
    fn download_archive(
        &self,
        repo: &RepoUrl,
        sha: &CommitSha,
        limits: ArchiveLimits,
    ) -> impl Future<Output = Result<Repacked, VcsError>> + Send;

    /// Proves the credentials work.
    fn check_credentials(&self) -> impl Future<Output = Result<(), VcsError>> + Send;

    /// The files changed from the merge base of `base` and `head` to `head`, renames
    /// under both names; `NotFound` when the provider no longer has `base`.
    fn changed_files(
        &self,
        repo: &RepoUrl,
        base: &CommitSha,
        head: &CommitSha,
    ) -> impl Future<Output = Result<ChangedFiles, VcsError>> + Send;

    /// The files a PR/MR changes.
    fn pull_request_files(
        &self,
        repo: &RepoUrl,
        number: i64,
    ) -> impl Future<Output = Result<ChangedFiles, VcsError>> + Send;

    /// Every tag of the repository, across all pages (conditional requests: an
    /// unchanged list costs no rate limit).
    fn tags(&self, repo: &RepoUrl) -> impl Future<Output = Result<Vec<Tag>, VcsError>> + Send;
}

/// What one process shares across all provider calls: the HTTP client with its ETag
/// cache, and GitHub installation tokens.
pub struct VcsShared {
    pub http: VcsHttp,
    pub github_tokens: github::TokenCache,
}

impl VcsShared {
    pub fn new(http: VcsHttp) -> Arc<Self> {
        Arc::new(VcsShared {
            http,
            github_tokens: github::TokenCache::default(),
        })
    }
}

/// A provider client for one connection.
pub enum ProviderClient {
    GitHub(github::GitHubClient),
    GitLab(gitlab::GitLabClient),
}

impl ProviderClient {
    /// Builds the client for a stored connection, decrypting its credential. Its
    /// requests spend the connection's budget at `priority`.
    pub fn for_connection(
        shared: &Arc<VcsShared>,
        connection: &VcsConnection,
        keys: Option<&KeyRing>,
        priority: Priority,
    ) -> Result<Self, VcsError> {
        let credential = decrypt_credential(connection, keys)?;
        match connection.provider {
            Provider::GitHub => {
                let (Some(app_id), Some(installation_id)) =
                    (connection.github_app_id, connection.github_installation_id)
                else {
                    return Err(VcsError::Credentials(CredentialProblem::GitHubIdsMissing));
                };
                Ok(ProviderClient::GitHub(github::GitHubClient::new(
                    shared.clone(),
                    &connection.server_url,
                    app_id,
                    installation_id,
                    &credential,
                    priority,
                )?))
            }
            Provider::GitLab => Ok(ProviderClient::GitLab(gitlab::GitLabClient::new(
                shared.clone(),
                &connection.server_url,
                credential,
                priority,
            ))),
        }
    }
}

fn decrypt_credential(
    connection: &VcsConnection,
    keys: Option<&KeyRing>,
) -> Result<SecretString, VcsError> {
    let ciphertext = connection
        .encrypted_credential
        .as_deref()
        .ok_or(VcsError::Credentials(CredentialProblem::Missing))?;
    let keys = keys.ok_or(VcsError::Credentials(CredentialProblem::NoEncryptionKey))?;
    keys.decrypt(ciphertext)
        .map_err(|_| VcsError::Credentials(CredentialProblem::Undecryptable))
}

macro_rules! dispatch {
    ($self:ident, $client:ident => $call:expr) => {
        match $self {
            ProviderClient::GitHub($client) => $call,
            ProviderClient::GitLab($client) => $call,
        }
    };
}

impl VcsProvider for ProviderClient {
    fn provider(&self) -> Provider {
        dispatch!(self, client => client.provider())
    }

    async fn default_branch(&self, repo: &RepoUrl) -> Result<String, VcsError> {
        dispatch!(self, client => client.default_branch(repo).await)
    }

    async fn branch_head(&self, repo: &RepoUrl, branch: &str) -> Result<BranchHead, VcsError> {
        dispatch!(self, client => client.branch_head(repo, branch).await)
    }

    async fn open_pull_requests(
        &self,
        repo: &RepoUrl,
        base: &str,
    ) -> Result<Vec<PullRequest>, VcsError> {
        dispatch!(self, client => client.open_pull_requests(repo, base).await)
    }

    async fn download_archive(
        &self,
        repo: &RepoUrl,
        sha: &CommitSha,
        limits: ArchiveLimits,
    ) -> Result<Repacked, VcsError> {
        dispatch!(self, client => client.download_archive(repo, sha, limits).await)
    }

    async fn check_credentials(&self) -> Result<(), VcsError> {
        dispatch!(self, client => client.check_credentials().await)
    }

    async fn changed_files(
        &self,
        repo: &RepoUrl,
        base: &CommitSha,
        head: &CommitSha,
    ) -> Result<ChangedFiles, VcsError> {
        dispatch!(self, client => client.changed_files(repo, base, head).await)
    }

    async fn pull_request_files(
        &self,
        repo: &RepoUrl,
        number: i64,
    ) -> Result<ChangedFiles, VcsError> {
        dispatch!(self, client => client.pull_request_files(repo, number).await)
    }

    async fn tags(&self, repo: &RepoUrl) -> Result<Vec<Tag>, VcsError> {
        dispatch!(self, client => client.tags(repo).await)
    }
}

/// Percent-encodes a value for one URL path segment or query value.
pub(crate) fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Percent-encodes a branch name for a URL path, keeping its `/` separators.
pub(crate) fn encode_ref_path(value: &str) -> String {
    value.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// The scheme, host and port of a server URL (`https://api.github.com`); an opaque
/// origin (equal to nothing, so no credential goes anywhere) when it does not parse
/// (the API only stores URLs that do).
pub(crate) fn origin_of(server_url: &str) -> url::Origin {
    url::Url::parse(server_url)
        .map(|url| url.origin())
        .unwrap_or_else(|_| url::Origin::new_opaque())
}

pub(crate) fn sha256_hex(value: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref())
}

/// The compressed archive of a download response, streamed to a temporary file within
/// the size limit; 404 means the commit is unknown to the provider.
pub(crate) async fn archive_download(
    provider: Provider,
    response: reqwest::Response,
    repo: &RepoUrl,
    sha: &CommitSha,
    limits: ArchiveLimits,
) -> Result<std::fs::File, VcsError> {
    match response.status().as_u16() {
        200 => archive::download_limited(provider, response, limits.max_archive_bytes).await,
        404 => Err(VcsError::NotFound {
            provider,
            what: format!("commit {sha} of {}", repo.full_path()),
        }),
        _ => Err(http::status_error(provider, response, None).await),
    }
}

/// Repacks off the async workers: decompression is CPU-bound. The download's file is
/// freed when done.
pub(crate) async fn repack_blocking(
    compressed: std::fs::File,
    limits: ArchiveLimits,
) -> Result<Repacked, VcsError> {
    tokio::task::spawn_blocking(move || archive::repack_file(compressed, limits))
        .await
        .map_err(|err| {
            VcsError::Archive(ArchiveError::Corrupt(format!("repacking stopped: {err}")))
        })?
        .map_err(VcsError::from)
}

pub(crate) fn first_line(message: &str) -> Option<String> {
    message
        .lines()
        .next()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

pub(crate) fn parse_sha(provider: Provider, raw: &str) -> Result<CommitSha, VcsError> {
    CommitSha::parse(raw).map_err(|err| VcsError::InvalidResponse {
        provider,
        detail: err.to_string(),
    })
}

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    provider: Provider,
    body: &[u8],
) -> Result<T, VcsError> {
    serde_json::from_slice(body).map_err(|err| VcsError::InvalidResponse {
        provider,
        detail: err.to_string(),
    })
}
