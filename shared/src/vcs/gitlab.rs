//! GitLab (gitlab.com or self-managed) through an access token in `PRIVATE-TOKEN`.
//! Projects are addressed by their URL-encoded path (`group%2Fsub%2Fproject`).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::budget::{BudgetKey, Priority};
use super::http::{status_error, Credential, Endpoint, JsonResponse, ProviderRequest};
use super::{
    archive_download, encode, first_line, origin_of, parse_body, parse_sha, repack_blocking,
    sha256_hex, ArchiveLimits, BranchHead, PullRequest, Repacked, RepoUrl, Tag, VcsError,
    VcsProvider, VcsShared,
};
use crate::domain::{CommitSha, Provider};
use crate::triggers::ChangedFiles;

const PROVIDER: Provider = Provider::GitLab;
const MAX_PAGES: usize = 100;
/// GitLab's default limit of files in one diff: a comparison this long may be cut.
const COMPARE_MAX_FILES: usize = 1000;

#[derive(Deserialize)]
struct TagEntry {
    name: String,
    commit: TagCommit,
}

#[derive(Deserialize)]
struct TagCommit {
    id: String,
}

#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    diffs: Vec<Diff>,
    #[serde(default)]
    compare_timeout: bool,
}

#[derive(Deserialize)]
struct Diff {
    old_path: String,
    new_path: String,
}

/// The page after `page` that GitLab's `X-Next-Page` names, if any (a header that
/// does not move forward ends the listing).
fn next_page(response: &JsonResponse, page: u32) -> Option<u32> {
    response
        .headers
        .get("x-next-page")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|next| *next > page)
}

/// A diff list's paths, a rename under both names.
fn paths_of(diffs: Vec<Diff>, into: &mut Vec<String>) {
    for diff in diffs {
        if diff.old_path != diff.new_path {
            into.push(diff.old_path);
        }
        into.push(diff.new_path);
    }
}

pub struct GitLabClient {
    shared: Arc<VcsShared>,
    api: String,
    token: SecretString,
    endpoint: Endpoint,
}

#[derive(Deserialize)]
struct Project {
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct Branch {
    commit: Commit,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    title: Option<String>,
    message: Option<String>,
    author_name: Option<String>,
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: i64,
    title: String,
    sha: String,
    source_branch: String,
    source_project_id: i64,
    target_project_id: i64,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    work_in_progress: bool,
    author: Option<Author>,
}

#[derive(Deserialize)]
struct Author {
    username: String,
}

impl GitLabClient {
    pub fn new(
        shared: Arc<VcsShared>,
        server_url: &str,
        token: SecretString,
        priority: Priority,
    ) -> Self {
        // The budget is named by a digest prefix: the token itself never leaves here.
        let digest = sha256_hex(token.expose_secret());
        let origin = origin_of(server_url);
        GitLabClient {
            shared,
            api: format!("{}/api/v4", server_url.trim_end_matches('/')),
            token,
            endpoint: Endpoint {
                provider: PROVIDER,
                budget: Some(BudgetKey::gitlab_token(
                    &origin.ascii_serialization(),
                    &digest[..16],
                )),
                origin,
                priority,
            },
        }
    }

    fn request<'a>(&'a self, url: &'a str) -> ProviderRequest<'a> {
        ProviderRequest::get(
            url,
            Credential::PrivateToken(self.token.expose_secret()),
            &[],
        )
    }

    fn project_url(&self, repo: &RepoUrl) -> String {
        format!("{}/projects/{}", self.api, encode(&repo.full_path()))
    }

    async fn get(&self, url: &str, what: &str) -> Result<JsonResponse, VcsError> {
        let http = &self.shared.http;
        match http.get_json(&self.endpoint, &self.request(url)).await {
            Err(VcsError::Status { status: 404, .. }) => Err(VcsError::NotFound {
                provider: PROVIDER,
                what: what.to_owned(),
            }),
            other => other,
        }
    }
}

impl GitLabClient {
    /// Sets the commit status named in `body` on `sha` (SPEC section 9). GitLab
    /// refuses to set a status to the state it already has; that (and only that
    /// refusal) is success here.
    pub async fn set_commit_status(
        &self,
        repo: &RepoUrl,
        sha: &CommitSha,
        body: &serde_json::Value,
    ) -> Result<(), VcsError> {
        let url = format!("{}/statuses/{sha}", self.project_url(repo));
        let request = ProviderRequest::json(
            reqwest::Method::POST,
            &url,
            Credential::PrivateToken(self.token.expose_secret()),
            &[],
            body,
        );
        let response = self.shared.http.send(&self.endpoint, &request).await?;
        if response.status().is_success() {
            return Ok(());
        }
        let state = body["state"].as_str().unwrap_or_default();
        match status_error(PROVIDER, response, None).await {
            // "Cannot transition status via :run from :running": already in that state.
            VcsError::Status {
                status: 400,
                message,
                ..
            } if message.starts_with("Cannot transition status")
                && message.contains(&format!("from :{state} ")) =>
            {
                Ok(())
            }
            VcsError::Status { status: 404, .. } => Err(VcsError::NotFound {
                provider: PROVIDER,
                what: format!("commit {} of {}", sha.short(), repo.full_path()),
            }),
            other => Err(other),
        }
    }
}

impl VcsProvider for GitLabClient {
    fn provider(&self) -> Provider {
        PROVIDER
    }

    async fn default_branch(&self, repo: &RepoUrl) -> Result<String, VcsError> {
        let what = format!("project {}", repo.full_path());
        let response = self.get(&self.project_url(repo), &what).await?;
        parse_body::<Project>(PROVIDER, &response.body)?
            .default_branch
            .ok_or_else(|| VcsError::NotFound {
                provider: PROVIDER,
                what: format!(
                    "default branch of {} (the project is empty)",
                    repo.full_path()
                ),
            })
    }

    async fn branch_head(&self, repo: &RepoUrl, branch: &str) -> Result<BranchHead, VcsError> {
        let url = format!(
            "{}/repository/branches/{}",
            self.project_url(repo),
            encode(branch)
        );
        let what = format!("branch {branch} of {}", repo.full_path());
        let response = self.get(&url, &what).await?;
        let branch: Branch = parse_body(PROVIDER, &response.body)?;
        let title = branch
            .commit
            .title
            .or(branch.commit.message)
            .as_deref()
            .and_then(first_line);
        Ok(BranchHead {
            sha: parse_sha(PROVIDER, &branch.commit.id)?,
            title,
            author: branch.commit.author_name,
        })
    }

    async fn open_pull_requests(
        &self,
        repo: &RepoUrl,
        base: &str,
    ) -> Result<Vec<PullRequest>, VcsError> {
        let what = format!("merge requests of {}", repo.full_path());
        let mut requests = Vec::new();
        let mut page = 1;
        for _ in 0..MAX_PAGES {
            let url = format!(
                "{}/merge_requests?state=opened&target_branch={}&per_page=100&page={page}",
                self.project_url(repo),
                encode(base)
            );
            let response = self.get(&url, &what).await?;
            let batch: Vec<MergeRequest> = parse_body(PROVIDER, &response.body)?;
            for mr in batch {
                requests.push(PullRequest {
                    number: mr.iid,
                    head_sha: parse_sha(PROVIDER, &mr.sha)?,
                    head_ref: mr.source_branch,
                    title: mr.title,
                    from_fork: mr.source_project_id != mr.target_project_id,
                    draft: mr.draft || mr.work_in_progress,
                    author: mr.author.map(|author| author.username),
                });
            }
            match next_page(&response, page) {
                Some(next) => page = next,
                None => return Ok(requests),
            }
        }
        Err(VcsError::InvalidResponse {
            provider: PROVIDER,
            detail: format!("more than {MAX_PAGES} pages of merge requests"),
        })
    }

    async fn tags(&self, repo: &RepoUrl) -> Result<Vec<Tag>, VcsError> {
        let what = format!("tags of {}", repo.full_path());
        let mut tags = Vec::new();
        let mut page = 1;
        for _ in 0..MAX_PAGES {
            let url = format!(
                "{}/repository/tags?per_page=100&page={page}",
                self.project_url(repo)
            );
            let response = self.get(&url, &what).await?;
            let batch: Vec<TagEntry> = parse_body(PROVIDER, &response.body)?;
            for tag in batch {
                tags.push(Tag {
                    sha: parse_sha(PROVIDER, &tag.commit.id)?,
                    name: tag.name,
                });
            }
            match next_page(&response, page) {
                Some(next) => page = next,
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
        // `straight`: the trees of the two commits compared directly, so a head that
        // went back (a force-push to an older commit) lists what it undid.
        let url = format!(
            "{}/repository/compare?from={base}&to={head}&straight=true",
            self.project_url(repo)
        );
        let response = self.get(&url, &what).await?;
        let comparison: Comparison = parse_body(PROVIDER, &response.body)?;
        if comparison.compare_timeout || comparison.diffs.len() >= COMPARE_MAX_FILES {
            return Ok(ChangedFiles::Truncated);
        }
        let mut files = Vec::new();
        paths_of(comparison.diffs, &mut files);
        Ok(ChangedFiles::Known(files))
    }

    async fn pull_request_files(
        &self,
        repo: &RepoUrl,
        number: i64,
    ) -> Result<ChangedFiles, VcsError> {
        let what = format!("diffs of merge request !{number} of {}", repo.full_path());
        let mut files = Vec::new();
        let mut page = 1;
        for _ in 0..MAX_PAGES {
            let url = format!(
                "{}/merge_requests/{number}/diffs?per_page=100&page={page}",
                self.project_url(repo)
            );
            let response = self.get(&url, &what).await?;
            let batch: Vec<Diff> = parse_body(PROVIDER, &response.body)?;
            paths_of(batch, &mut files);
            // GitLab keeps at most about 1,000 files of an MR's diff without saying so.
            if files.len() >= COMPARE_MAX_FILES {
                return Ok(ChangedFiles::Truncated);
            }
            match next_page(&response, page) {
                Some(next) => page = next,
                None => return Ok(ChangedFiles::Known(files)),
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
        let url = format!(
            "{}/repository/archive.tar.gz?sha={sha}",
            self.project_url(repo)
        );
        let http = &self.shared.http;
        let request = ProviderRequest {
            timeout: Some(Duration::from_secs(300)),
            redirects_off_origin: true,
            at_most_once: false,
            ..self.request(&url)
        };
        let response = http.send(&self.endpoint, &request).await?;
        let compressed = archive_download(PROVIDER, response, repo, sha, limits).await?;
        repack_blocking(compressed, limits).await
    }

    async fn check_credentials(&self) -> Result<(), VcsError> {
        self.get(&format!("{}/user", self.api), "the token's user")
            .await
            .map(drop)
    }
}
