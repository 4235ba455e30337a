//! Repository URLs as users paste them, parsed for one provider. Only the path is
//! used (`owner/repo`, `group/subgroup/project`); the connection's `server-url`, not
//! the URL's host, decides which API is called.

use std::fmt;

use crate::domain::Provider;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{url}` is not a {provider} repository URL: {why}. Accepted forms: {accepted}")]
pub struct RepoUrlError {
    url: String,
    provider: Provider,
    why: &'static str,
    accepted: &'static str,
}

const GITHUB_FORMS: &str = "https://github.com/OWNER/REPO, https://github.com/OWNER/REPO.git, git@github.com:OWNER/REPO.git (or the same on a GitHub Enterprise host)";
const GITLAB_FORMS: &str = "https://gitlab.com/GROUP/PROJECT, https://gitlab.com/GROUP/SUBGROUP/PROJECT, https://gitlab.example.com/GROUP/PROJECT.git, git@gitlab.com:GROUP/PROJECT.git";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoUrl {
    provider: Provider,
    host: String,
    /// Path segments: `[owner, repo]` on GitHub, `[group, ..., project]` on GitLab.
    segments: Vec<String>,
}

impl RepoUrl {
    pub fn parse(provider: Provider, raw: &str) -> Result<Self, RepoUrlError> {
        let fail = |why| RepoUrlError {
            url: raw.chars().take(200).collect(),
            provider,
            why,
            accepted: match provider {
                Provider::GitHub => GITHUB_FORMS,
                Provider::GitLab => GITLAB_FORMS,
            },
        };
        let trimmed = raw.trim();
        let (host, path) = split_host_and_path(trimmed).ok_or_else(|| fail("unrecognised form"))?;
        if !valid_host(host) {
            return Err(fail("the host is not a valid host name"));
        }
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(fail("the path has an empty segment"));
        }
        match provider {
            Provider::GitHub if segments.len() != 2 => {
                return Err(fail("GitHub repository paths are exactly OWNER/REPO"))
            }
            Provider::GitLab if segments.len() < 2 => {
                return Err(fail("GitLab project paths are GROUP[/SUBGROUP...]/PROJECT"))
            }
            _ => {}
        }
        if segments.len() > 20 {
            return Err(fail("the path is too deep"));
        }
        if !segments.iter().all(|segment| valid_segment(segment)) {
            return Err(fail(
                "path segments may only hold letters, digits, `.`, `_` and `-`, may not start with `-` and may not be `.` or `..`",
            ));
        }
        Ok(RepoUrl {
            provider,
            host: host.to_ascii_lowercase(),
            segments: segments.into_iter().map(str::to_owned).collect(),
        })
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `owner/repo` or `group/subgroup/project`, as the provider's API names it.
    pub fn full_path(&self) -> String {
        self.segments.join("/")
    }

    /// The repository's own name (the last segment).
    pub fn name(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// The owner or group path (everything but the last segment).
    pub fn namespace(&self) -> String {
        self.segments[..self.segments.len() - 1].join("/")
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/{}", self.host, self.full_path())
    }
}

/// Splits `https://host[:port]/path` and `git@host:path` / `ssh://git@host/path`.
fn split_host_and_path(raw: &str) -> Option<(&str, &str)> {
    if let Some(rest) = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
    {
        if rest.contains(['?', '#', '@', ' ']) {
            return None;
        }
        let (authority, path) = rest.split_once('/')?;
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                host
            }
            Some(_) => return None,
            None => authority,
        };
        return Some((host, path));
    }
    if let Some(rest) = raw.strip_prefix("ssh://") {
        let rest = rest.strip_prefix("git@").unwrap_or(rest);
        let (authority, path) = rest.split_once('/')?;
        let host = authority
            .split_once(':')
            .map_or(authority, |(host, _port)| host);
        return Some((host, path));
    }
    let rest = raw.strip_prefix("git@")?;
    let (host, path) = rest.split_once(':')?;
    Some((host, path))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn valid_segment(segment: &str) -> bool {
    segment.len() <= 255
        && segment != "."
        && segment != ".."
        && !segment.starts_with('-')
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_github_form_in_the_spec_parses() {
        for raw in [
            "https://github.com/org/repo",
            "https://github.com/org/repo.git",
            "git@github.com:org/repo.git",
            "https://github.com/org/repo/",
            "https://ghe.example.com/org/repo",
            "git@ghe.example.com:org/repo.git",
            "https://ghe.example.com:8443/org/repo.git",
            "ssh://git@github.com/org/repo.git",
        ] {
            let url = RepoUrl::parse(Provider::GitHub, raw).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(url.full_path(), "org/repo", "{raw}");
            assert_eq!(url.name(), "repo");
            assert_eq!(url.namespace(), "org");
        }
    }

    #[test]
    fn every_gitlab_form_in_the_spec_parses() {
        for (raw, path) in [
            ("https://gitlab.com/group/project", "group/project"),
            (
                "https://gitlab.com/group/subgroup/project",
                "group/subgroup/project",
            ),
            (
                "https://gitlab.example.com/group/project.git",
                "group/project",
            ),
            ("git@gitlab.com:group/project.git", "group/project"),
            ("https://gitlab.com/group/project/", "group/project"),
            ("git@gitlab.com:a/b/c/d.git", "a/b/c/d"),
        ] {
            let url = RepoUrl::parse(Provider::GitLab, raw).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(url.full_path(), path, "{raw}");
        }
    }

    #[test]
    fn bad_urls_are_refused_with_the_accepted_forms() {
        for (provider, raw) in [
            (Provider::GitHub, ""),
            (Provider::GitHub, "github.com/org/repo"),
            (Provider::GitHub, "https://github.com/org"),
            (Provider::GitHub, "https://github.com/org/repo/tree/main"),
            (Provider::GitHub, "https://github.com/group/sub/project"),
            (Provider::GitHub, "https://github.com/org/repo?x=1"),
            (Provider::GitHub, "https://user:pw@github.com/org/repo"),
            (Provider::GitHub, "https://github.com//repo"),
            (Provider::GitHub, "https://github.com/org/.."),
            (Provider::GitHub, "ftp://github.com/org/repo"),
            (Provider::GitLab, "https://gitlab.com/project"),
            (
                Provider::GitLab,
                "https://gitlab.com/group/project/-/tree/main",
            ),
            (Provider::GitLab, "git@gitlab.com/group/project.git"),
            (Provider::GitLab, "https://bad_host!/a/b"),
        ] {
            let err = RepoUrl::parse(provider, raw).unwrap_err().to_string();
            assert!(err.contains("Accepted forms"), "{raw}: {err}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}".prop_filter("not . or ..", |s| s != "." && s != "..")
        }

        fn host() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9]{0,10}(\\.[a-z][a-z0-9]{0,10}){0,3}"
        }

        proptest! {
            #[test]
            fn every_accepted_form_yields_the_same_path(
                host in host(),
                groups in prop::collection::vec(segment(), 1..4),
                name in segment(),
                form in 0usize..5,
            ) {
                let name = name.trim_end_matches(".git").to_owned();
                prop_assume!(!name.is_empty() && name != "." && name != "..");
                let path = format!("{}/{}", groups.join("/"), name);
                let raw = match form {
                    0 => format!("https://{host}/{path}"),
                    1 => format!("https://{host}/{path}.git"),
                    2 => format!("git@{host}:{path}.git"),
                    3 => format!("https://{host}/{path}/"),
                    _ => format!("ssh://git@{host}/{path}.git"),
                };
                let gitlab = RepoUrl::parse(Provider::GitLab, &raw).unwrap();
                prop_assert_eq!(gitlab.full_path(), path.clone());
                prop_assert_eq!(gitlab.name(), name.as_str());
                let github = RepoUrl::parse(Provider::GitHub, &raw);
                prop_assert_eq!(github.is_ok(), groups.len() == 1);
            }

            #[test]
            fn arbitrary_input_never_panics_and_accepted_paths_are_safe(raw in "\\PC{0,80}") {
                for provider in [Provider::GitHub, Provider::GitLab] {
                    if let Ok(url) = RepoUrl::parse(provider, &raw) {
                        for segment in url.full_path().split('/') {
                            prop_assert!(valid_segment(segment), "{}", segment);
                        }
                    }
                }
            }
        }
    }
}

/// Where people browse a connection's repositories: github.com for GitHub's public
/// API, the server itself otherwise (GitHub Enterprise without its `/api/v3`).
pub fn web_base(provider: Provider, server_url: &str) -> String {
    let server = server_url.trim_end_matches('/');
    match provider {
        Provider::GitHub if server == Provider::GitHub.default_server_url() => {
            "https://github.com".to_owned()
        }
        Provider::GitHub => server.strip_suffix("/api/v3").unwrap_or(server).to_owned(),
        Provider::GitLab => server.to_owned(),
    }
}

/// TFE's `service-provider` name for a connection.
pub fn service_provider(provider: Provider, server_url: &str) -> &'static str {
    let public = server_url.trim_end_matches('/') == provider.default_server_url();
    match (provider, public) {
        (Provider::GitHub, true) => "github",
        (Provider::GitHub, false) => "github_enterprise",
        (Provider::GitLab, true) => "gitlab_hosted",
        (Provider::GitLab, false) => "gitlab_enterprise_edition",
    }
}

#[cfg(test)]
mod web_tests {
    use super::*;

    #[test]
    fn web_hosts_and_service_providers_follow_the_server() {
        assert_eq!(
            web_base(Provider::GitHub, "https://api.github.com"),
            "https://github.com"
        );
        assert_eq!(
            web_base(Provider::GitHub, "https://ghe.example.com/api/v3/"),
            "https://ghe.example.com"
        );
        assert_eq!(
            web_base(Provider::GitLab, "https://gitlab.com"),
            "https://gitlab.com"
        );
        assert_eq!(
            service_provider(Provider::GitHub, "https://api.github.com"),
            "github"
        );
        assert_eq!(
            service_provider(Provider::GitLab, "https://gitlab.example.com"),
            "gitlab_enterprise_edition"
        );
    }
}
