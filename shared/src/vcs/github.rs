//! GitHub (and GitHub Enterprise Server) through a GitHub App installation.
//!
//! The App's JWT (RS256, `iss` = app id, `iat` a minute in the past, `exp` nine minutes
//! ahead) buys an installation token, which is cached per (server, installation) and
//! shared by every workspace of the process; a 401 drops it and the call is retried
//! once with a fresh one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderMap, LINK};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::budget::{BudgetKey, Priority};
use super::http::{
    read_bounded, status_error, Credential, Endpoint, JsonResponse, ProviderRequest, MAX_JSON_BYTES,
};
use super::{
    archive_download, encode_ref_path, first_line, origin_of, parse_body, parse_sha,
    repack_blocking, sha256_hex, ArchiveLimits, BranchHead, PullRequest, Repacked, RepoUrl, Tag,
    VcsError, VcsProvider, VcsShared,
};
use crate::domain::{CommitSha, Provider};
use crate::triggers::ChangedFiles;
use crate::vcs::CredentialProblem;

const PROVIDER: Provider = Provider::GitHub;
/// What every request to GitHub carries.
const HEADERS: &[(&str, &str)] = &[
    ("Accept", "application/vnd.github+json"),
    ("X-GitHub-Api-Version", "2022-11-28"),
];
/// Installation tokens live an hour; reuse one for at most this long.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);
/// Never follow more pages than this (100 per page).
const MAX_PAGES: usize = 100;
/// GitHub lists at most this many files of a comparison, and of a pull request:
/// a list this long may be cut short.
const COMPARE_MAX_FILES: usize = 300;
const PULL_MAX_FILES: usize = 3000;

#[derive(Deserialize)]
struct TagEntry {
    name: String,
    commit: TagCommit,
}

#[derive(Deserialize)]
struct TagCommit {
    sha: String,
}

#[derive(Deserialize)]
struct Comparison {
    /// `ahead`, `behind`, `diverged` or `identical`.
    status: String,
    #[serde(default)]
    files: Vec<DiffEntry>,
}

#[derive(Deserialize)]
struct DiffEntry {
    filename: String,
    previous_filename: Option<String>,
}

/// A file list's paths, a rename under both names.
fn paths_of(entries: Vec<DiffEntry>, into: &mut Vec<String>) {
    for entry in entries {
        into.extend(entry.previous_filename);
        into.push(entry.filename);
    }
}

/// The claims of a GitHub App JWT.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppClaims {
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

impl AppClaims {
    pub fn new(app_id: i64, now: u64) -> Self {
        AppClaims {
            iat: now.saturating_sub(60),
            exp: now + 9 * 60,
            iss: app_id.to_string(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

struct InstallationToken {
    token: SecretString,
    reuse_until: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<InstallationToken>>>;

/// A cached installation token belongs to the server, installation, App id and private
/// key that minted it: a PATCH of the App id or key makes a new slot, so the next poll
/// on any replica mints with the new credentials instead of reusing the old token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    server: String,
    installation_id: i64,
    app_id: i64,
    key_digest: String,
}

/// Installation tokens, one slot per [`TokenKey`] so concurrent callers wait for a
/// single mint instead of each minting their own. Bounded; idle slots expire.
pub struct TokenCache {
    slots: moka::sync::Cache<TokenKey, TokenSlot>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            slots: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(2 * 3600))
                .build(),
        }
    }
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> TokenSlot {
        self.slots.get_with_by_ref(key, TokenSlot::default)
    }
}

pub struct GitHubClient {
    shared: Arc<VcsShared>,
    server: String,
    app_id: i64,
    installation_id: i64,
    key: EncodingKey,
    token_key: TokenKey,
    endpoint: Endpoint,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
}

#[derive(Deserialize)]
struct Repository {
    default_branch: String,
}

#[derive(Deserialize)]
struct Branch {
    commit: BranchCommit,
}

#[derive(Deserialize)]
struct BranchCommit {
    sha: String,
    commit: Option<CommitDetail>,
    /// The GitHub user behind the commit (null when GitHub cannot tell).
    author: Option<User>,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct CommitDetail {
    message: Option<String>,
}

#[derive(Deserialize)]
struct Pull {
    number: i64,
    title: String,
    #[serde(default)]
    draft: bool,
    user: Option<User>,
    head: PullRef,
    base: BaseRef,
}

#[derive(Deserialize)]
struct PullRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
    repo: Option<PullRepo>,
}

#[derive(Deserialize)]
struct BaseRef {
    repo: Option<PullRepo>,
}

#[derive(Deserialize)]
struct PullRepo {
    full_name: String,
}

impl GitHubClient {
    pub fn new(
        shared: Arc<VcsShared>,
        server_url: &str,
        app_id: i64,
        installation_id: i64,
        private_key: &SecretString,
        priority: Priority,
    ) -> Result<Self, VcsError> {
        let key = EncodingKey::from_rsa_pem(private_key.expose_secret().as_bytes())
            .map_err(|_| VcsError::Credentials(CredentialProblem::NotAnRsaPemKey))?;
        let server = server_url.trim_end_matches('/').to_owned();
        let origin = origin_of(&server);
        Ok(GitHubClient {
            shared,
            token_key: TokenKey {
                server: server.clone(),
                installation_id,
                app_id,
                key_digest: sha256_hex(private_key.expose_secret()),
            },
            endpoint: Endpoint {
                provider: PROVIDER,
                budget: Some(BudgetKey::github_installation(
                    &origin.ascii_serialization(),
                    installation_id,
                )),
                origin,
                priority,
            },
            server,
            app_id,
            installation_id,
            key,
        })
    }

    /// The App's JWT, signed now.
    pub fn app_jwt(&self) -> Result<String, VcsError> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &AppClaims::new(self.app_id, unix_now()),
            &self.key,
        )
        .map_err(|_| VcsError::Credentials(CredentialProblem::CannotSign))
    }

    async fn mint_token(&self) -> Result<SecretString, VcsError> {
        let jwt = self.app_jwt()?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.server, self.installation_id
        );
        let http = &self.shared.http;
        let request = ProviderRequest {
            method: Method::POST,
            url: &url,
            credential: Some(Credential::Bearer(&jwt)),
            headers: HEADERS,
            timeout: None,
            json: None,
            redirects_off_origin: false,
            at_most_once: false,
        };
        let response = http.send(&self.endpoint, &request).await?;
        if !response.status().is_success() {
            return Err(status_error(PROVIDER, response, None).await);
        }
        let body = response.bytes().await.map_err(|err| VcsError::Transport {
            provider: PROVIDER,
            detail: err.without_url().to_string(),
        })?;
        let token: AccessToken = parse_body(PROVIDER, &body)?;
        tracing::debug!(
            installation_id = self.installation_id,
            "minted a GitHub installation token"
        );
        Ok(SecretString::from(token.token))
    }

    /// The cached installation token, minted when missing or old.
    async fn installation_token(&self) -> Result<SecretString, VcsError> {
        let slot = self.shared.github_tokens.slot(&self.token_key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.reuse_until > Instant::now()) {
            return Ok(token.token.clone());
        }
        let token = self.mint_token().await?;
        *cached = Some(InstallationToken {
            token: token.clone(),
            reuse_until: Instant::now() + TOKEN_REUSE,
        });
        Ok(token)
    }

    /// Forgets `rejected` (unless another caller already replaced it).
    async fn drop_token(&self, rejected: &SecretString) {
        let slot = self.shared.github_tokens.slot(&self.token_key);
        let mut cached = slot.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.token.expose_secret() == rejected.expose_secret())
        {
            *cached = None;
        }
    }

    /// Calls the API with the installation token: a 401 drops the token and tries once
    /// more with a new one (a 401 was not acted on); a 404 is `NotFound { what }`.
    async fn with_token<T, F, Fut>(&self, what: &str, call: F) -> Result<T, VcsError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, VcsError>>,
    {
        let mut retried = false;
        loop {
            let token = self.installation_token().await?;
            match call(token.clone()).await {
                Err(VcsError::Unauthorized { .. }) if !retried => {
                    self.drop_token(&token).await;
                    retried = true;
                }
                Err(VcsError::Status { status: 404, .. }) => {
                    return Err(VcsError::NotFound {
                        provider: PROVIDER,
                        what: what.to_owned(),
                    })
                }
                other => return other,
            }
        }
    }

    /// A conditional GET of `url`.
    async fn get(&self, url: &str, what: &str) -> Result<JsonResponse, VcsError> {
        let http = &self.shared.http;
        self.with_token(what, |token| async move {
            let request =
                ProviderRequest::get(url, Credential::Bearer(token.expose_secret()), HEADERS);
            http.get_json(&self.endpoint, &request).await
        })
        .await
    }

    fn repo_url(&self, repo: &RepoUrl) -> String {
        format!("{}/repos/{}", self.server, repo.full_path())
    }

    /// A pagination link, if it stays on the connection's origin: the installation
    /// token goes nowhere else, and a page from elsewhere is not GitHub's answer.
    fn next_page(&self, next: String) -> Result<String, VcsError> {
        if self.endpoint.owns(&next) {
            Ok(next)
        } else {
            Err(VcsError::InvalidResponse {
                provider: PROVIDER,
                detail: "a pagination link to another origin was refused".into(),
            })
        }
    }
}

#[derive(Deserialize)]
struct CheckRunList {
    check_runs: Vec<CheckRunSummary>,
}

#[derive(Deserialize)]
struct CheckRunSummary {
    id: i64,
    external_id: Option<String>,
}

/// Check runs (SPEC section 9): the App's `checks: write` permission.
impl GitHubClient {
    /// A JSON write, with the installation token (see [`GitHubClient::with_token`]).
    async fn write(
        &self,
        method: Method,
        url: &str,
        body: &serde_json::Value,
        at_most_once: bool,
        what: &str,
    ) -> Result<bytes::Bytes, VcsError> {
        let http = &self.shared.http;
        self.with_token(what, |token| {
            let method = method.clone();
            async move {
                let request = ProviderRequest {
                    at_most_once,
                    ..ProviderRequest::json(
                        method,
                        url,
                        Credential::Bearer(token.expose_secret()),
                        HEADERS,
                        body,
                    )
                };
                let response = http.send(&self.endpoint, &request).await?;
                if response.status().is_success() {
                    read_bounded(PROVIDER, response, MAX_JSON_BYTES).await
                } else {
                    Err(status_error(PROVIDER, response, None).await)
                }
            }
        })
        .await
    }

    /// The check run named `name` on `sha` whose `external_id` is `external_id`, if
    /// one exists (a create whose answer was lost may have made it).
    pub async fn find_check_run(
        &self,
        repo: &RepoUrl,
        sha: &CommitSha,
        name: &str,
        external_id: &str,
    ) -> Result<Option<i64>, VcsError> {
        let url = format!(
            "{}/commits/{}/check-runs?check_name={}&filter=all&per_page=100",
            self.repo_url(repo),
            sha,
            super::encode(name)
        );
        let what = format!("commit {} of {}", sha.short(), repo.full_path());
        let response = self.get(&url, &what).await?;
        let list: CheckRunList = parse_body(PROVIDER, &response.body)?;
        Ok(list
            .check_runs
            .into_iter()
            .find(|run| run.external_id.as_deref() == Some(external_id))
            .map(|run| run.id))
    }

    /// Creates a check run; sent at most once (see [`ProviderRequest::at_most_once`]).
    pub async fn create_check_run(
        &self,
        repo: &RepoUrl,
        body: &serde_json::Value,
    ) -> Result<i64, VcsError> {
        let url = format!("{}/check-runs", self.repo_url(repo));
        let what = format!("repository {}", repo.full_path());
        let answer = self.write(Method::POST, &url, body, true, &what).await?;
        Ok(parse_body::<CheckRunSummary>(PROVIDER, &answer)?.id)
    }

    pub async fn update_check_run(
        &self,
        repo: &RepoUrl,
        id: i64,
        body: &serde_json::Value,
    ) -> Result<(), VcsError> {
        let url = format!("{}/check-runs/{id}", self.repo_url(repo));
        let what = format!("check run {id} of {}", repo.full_path());
        self.write(Method::PATCH, &url, body, false, &what)
            .await
            .map(drop)
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

impl VcsProvider for GitHubClient {
    fn provider(&self) -> Provider {
        PROVIDER
    }

    async fn default_branch(&self, repo: &RepoUrl) -> Result<String, VcsError> {
        let what = format!("repository {}", repo.full_path());
        let response = self.get(&self.repo_url(repo), &what).await?;
        Ok(parse_body::<Repository>(PROVIDER, &response.body)?.default_branch)
    }

    async fn branch_head(&self, repo: &RepoUrl, branch: &str) -> Result<BranchHead, VcsError> {
        let url = format!(
            "{}/branches/{}",
            self.repo_url(repo),
            encode_ref_path(branch)
        );
        let what = format!("branch {branch} of {}", repo.full_path());
        let response = self.get(&url, &what).await?;
        let branch: Branch = parse_body(PROVIDER, &response.body)?;
        Ok(BranchHead {
            sha: parse_sha(PROVIDER, &branch.commit.sha)?,
            author: branch.commit.author.map(|user| user.login),
            title: branch
                .commit
                .commit
                .and_then(|c| c.message)
                .as_deref()
                .and_then(first_line),
        })
    }

    async fn open_pull_requests(
        &self,
        repo: &RepoUrl,
        base: &str,
    ) -> Result<Vec<PullRequest>, VcsError> {
        let what = format!("pull requests of {}", repo.full_path());
        let mut url = format!(
            "{}/pulls?state=open&base={}&per_page=100",
            self.repo_url(repo),
            super::encode(base)
        );
        let mut pulls = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self.get(&url, &what).await?;
            let page: Vec<Pull> = parse_body(PROVIDER, &response.body)?;
            for pull in page {
                let base_repo = pull
                    .base
                    .repo
                    .as_ref()
                    .map(|r| r.full_name.to_ascii_lowercase());
                let head_repo = pull
                    .head
                    .repo
                    .as_ref()
                    .map(|r| r.full_name.to_ascii_lowercase());
                pulls.push(PullRequest {
                    number: pull.number,
                    head_sha: parse_sha(PROVIDER, &pull.head.sha)?,
                    head_ref: pull.head.name,
                    title: pull.title,
                    from_fork: head_repo.is_none() || head_repo != base_repo,
                    draft: pull.draft,
                    author: pull.user.map(|user| user.login),
                });
            }
            match next_link(&response.headers) {
                Some(next) => url = self.next_page(next)?,
                None => return Ok(pulls),
            }
        }
        Err(VcsError::InvalidResponse {
            provider: PROVIDER,
            detail: format!("more than {MAX_PAGES} pages of pull requests"),
        })
    }

    async fn tags(&self, repo: &RepoUrl) -> Result<Vec<Tag>, VcsError> {
        let what = format!("tags of {}", repo.full_path());
        let mut url = format!("{}/tags?per_page=100", self.repo_url(repo));
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = self.get(&url, &what).await?;
            let page: Vec<TagEntry> = parse_body(PROVIDER, &response.body)?;
            for tag in page {
                tags.push(Tag {
                    sha: parse_sha(PROVIDER, &tag.commit.sha)?,
                    name: tag.name,
                });
            }
            match next_link(&response.headers) {
                Some(next) => url = self.next_page(next)?,
                None => return Ok(tags),
            }
        }
        Err(VcsError::InvalidResponse {
            provider: PROVIDER,
            detail: format!("more than {MAX_PAGES} pages of tags"),
        })
    }

    async fn changed_files(
        &self,
        repo: &RepoUrl,
        base: &CommitSha,
        head: &CommitSha,
    ) -> Result<ChangedFiles, VcsError> {
        let what = format!(
            "comparison {}...{} of {}",
            base.short(),
            head.short(),
            repo.full_path()
        );
        // One request: pages split the commits, and the files (300 at most) come with
        // the first page only.
        let url = format!("{}/compare/{base}...{head}", self.repo_url(repo));
        let response = self.get(&url, &what).await?;
        let comparison: Comparison = parse_body(PROVIDER, &response.body)?;
        // `base...head` lists the changes since the merge base: they are the changes
        // from `base` only when `head` is ahead of it. A head that went back (a
        // force-push to an older commit) or elsewhere undoes changes the list omits.
        if comparison.status == "identical" {
            return Ok(ChangedFiles::Known(Vec::new()));
        }
        if comparison.status != "ahead" || comparison.files.len() >= COMPARE_MAX_FILES {
            return Ok(ChangedFiles::Truncated);
        }
        let mut files = Vec::new();
        paths_of(comparison.files, &mut files);
        Ok(ChangedFiles::Known(files))
    }

    async fn pull_request_files(
        &self,
        repo: &RepoUrl,
        number: i64,
    ) -> Result<ChangedFiles, VcsError> {
        let what = format!("files of pull request #{number} of {}", repo.full_path());
        let mut url = format!("{}/pulls/{number}/files?per_page=100", self.repo_url(repo));
        let mut files = Vec::new();
        let mut listed = 0;
        for _ in 0..MAX_PAGES {
            let response = self.get(&url, &what).await?;
            let page: Vec<DiffEntry> = parse_body(PROVIDER, &response.body)?;
            listed += page.len();
            paths_of(page, &mut files);
            match next_link(&response.headers) {
                Some(next) if listed < PULL_MAX_FILES => url = self.next_page(next)?,
                _ if listed >= PULL_MAX_FILES => return Ok(ChangedFiles::Truncated),
                _ => return Ok(ChangedFiles::Known(files)),
            }
        }
        Ok(ChangedFiles::Truncated)
    }

    async fn download_archive(
        &self,
        repo: &RepoUrl,
        sha: &CommitSha,
        limits: ArchiveLimits,
    ) -> Result<Repacked, VcsError> {
        let url = format!("{}/tarball/{}", self.repo_url(repo), sha);
        let http = &self.shared.http;
        let mut retried = false;
        let compressed = loop {
            let token = self.installation_token().await?;
            // The API redirects to a download host, which gets no credential of ours.
            let request = ProviderRequest {
                timeout: Some(Duration::from_secs(300)),
                redirects_off_origin: true,
                at_most_once: false,
                ..ProviderRequest::get(&url, Credential::Bearer(token.expose_secret()), HEADERS)
            };
            let response = http.send(&self.endpoint, &request).await?;
            if response.status().as_u16() == 401 && !retried {
                self.drop_token(&token).await;
                retried = true;
                continue;
            }
            break archive_download(PROVIDER, response, repo, sha, limits).await?;
        };
        repack_blocking(compressed, limits).await
    }

    async fn check_credentials(&self) -> Result<(), VcsError> {
        let url = format!("{}/installation/repositories?per_page=1", self.server);
        self.get(&url, "installation repositories").await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_jwt_claims_follow_githubs_rules() {
        let claims = AppClaims::new(42, 1_000_000);
        assert_eq!(claims.iss, "42");
        assert_eq!(claims.iat, 1_000_000 - 60);
        assert!(claims.exp - 1_000_000 <= 600);
        assert!(claims.exp > 1_000_000);
    }

    #[test]
    fn next_links_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            r#"<https://api.github.com/x?page=1>; rel="prev", <https://api.github.com/x?page=3>; rel="next", <https://api.github.com/x?page=9>; rel="last""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        headers.insert(
            LINK,
            r#"<https://api.github.com/x?page=1>; rel="prev""#.parse().unwrap(),
        );
        assert_eq!(next_link(&headers), None);
    }
}
