//! Every kind of error a poll can store in `vcs-last-error` has its row in the
//! README's troubleshooting table: the fixed parts of each message (what is left once
//! the names, numbers and details that vary are taken out) appear there.

use std::sync::Arc;
use std::time::Duration;

use terrapod_poller::poll::PollProblem;
use terrapod_shared::domain::Provider;
use terrapod_shared::vcs::archive::ArchiveError;
use terrapod_shared::vcs::budget::BudgetError;
use terrapod_shared::vcs::{CredentialProblem, VcsError};

const README: &str = include_str!("../../../README.md");

/// The README's troubleshooting section.
fn troubleshooting() -> &'static str {
    let start = README
        .find("### Troubleshooting")
        .expect("README has a troubleshooting section");
    let rest = &README[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// A name for each kind, by an exhaustive match: a new kind does not compile until it
/// is listed here, with an example below.
fn kind(error: &VcsError) -> &'static str {
    match error {
        VcsError::Unauthorized { .. } => "unauthorized",
        VcsError::NotFound { .. } => "not-found",
        VcsError::RateLimited { .. } => "rate-limited",
        VcsError::Status { .. } => "status",
        VcsError::Timeout { .. } => "timeout",
        VcsError::Transport { .. } => "transport",
        VcsError::InvalidResponse { .. } => "invalid-response",
        VcsError::Archive(archive) => match archive {
            ArchiveError::TooLarge { .. } => "archive-too-large",
            ArchiveError::UnpackedTooLarge { .. } => "unpacked-too-large",
            ArchiveError::UnsafePath(_) => "unsafe-path",
            ArchiveError::Corrupt(_) => "corrupt",
            ArchiveError::RefusedBefore(_) => "refused-before",
        },
        VcsError::Credentials(problem) => match problem {
            CredentialProblem::Missing => "no-credentials",
            CredentialProblem::NoEncryptionKey => "no-encryption-key",
            CredentialProblem::Undecryptable => "undecryptable",
            CredentialProblem::GitHubIdsMissing => "github-ids-missing",
            CredentialProblem::NotAnRsaPemKey => "not-rsa-pem",
            CredentialProblem::CannotSign => "cannot-sign",
        },
        VcsError::Budget(_) => "budget",
        // Never stored: the poll records nothing when the process stops.
        VcsError::Interrupted => "interrupted",
    }
}

const KINDS_STORED: usize = 19;

/// One example of each stored kind (several where the code words a kind several
/// ways), with the parts of its message that vary.
fn provider_examples() -> Vec<(VcsError, Vec<&'static str>)> {
    let gh = Provider::GitHub;
    let gl = Provider::GitLab;
    let not_found = |provider, what: &str| VcsError::NotFound {
        provider,
        what: what.to_owned(),
    };
    let credentials = [
        CredentialProblem::Missing,
        CredentialProblem::NoEncryptionKey,
        CredentialProblem::Undecryptable,
        CredentialProblem::GitHubIdsMissing,
        CredentialProblem::NotAnRsaPemKey,
        CredentialProblem::CannotSign,
    ]
    .map(|problem| (VcsError::Credentials(problem), vec![]));
    let mut examples = vec![
        (
            VcsError::Unauthorized {
                provider: gh,
                status: 401,
            },
            vec!["github", "401"],
        ),
        (
            not_found(gh, "repository acme/infra"),
            vec!["github", "acme/infra"],
        ),
        (
            not_found(gh, "branch main of acme/infra"),
            vec!["github", "main", "acme/infra"],
        ),
        (
            not_found(gl, "project group/app"),
            vec!["gitlab", "group/app"],
        ),
        (
            not_found(gh, "commit 0a1b2c3 of acme/infra"),
            vec!["github", "0a1b2c3", "acme/infra"],
        ),
        (
            not_found(gl, "default branch of group/app (the project is empty)"),
            vec!["gitlab", "group/app"],
        ),
        (
            VcsError::RateLimited {
                provider: gh,
                retry_after: Some(Duration::from_secs(120)),
            },
            vec!["github", "120"],
        ),
        (
            VcsError::Status {
                provider: gh,
                status: 404,
                message: "Not Found".into(),
            },
            vec!["github", "404", "Not Found"],
        ),
        (VcsError::Timeout { provider: gl }, vec!["gitlab"]),
        (
            VcsError::Transport {
                provider: gl,
                detail: "connection refused".into(),
            },
            vec!["gitlab", "connection refused"],
        ),
        (
            VcsError::InvalidResponse {
                provider: gh,
                detail: "not JSON".into(),
            },
            vec!["github", "not JSON"],
        ),
        (
            VcsError::Archive(ArchiveError::TooLarge { limit: 100 }),
            vec!["100"],
        ),
        (
            VcsError::Archive(ArchiveError::UnpackedTooLarge { limit: 100 }),
            vec!["100"],
        ),
        (
            VcsError::Archive(ArchiveError::UnsafePath("../x".into())),
            vec!["../x"],
        ),
        (
            VcsError::Archive(ArchiveError::Corrupt("bad header".into())),
            vec!["bad header"],
        ),
        (
            VcsError::Archive(ArchiveError::RefusedBefore(
                ArchiveError::TooLarge { limit: 100 }.to_string(),
            )),
            vec!["100"],
        ),
        (
            VcsError::Budget(BudgetError::Unavailable("connection refused".into()).to_string()),
            vec!["connection refused"],
        ),
        (
            VcsError::Budget(
                BudgetError::Exhausted {
                    provider: gh,
                    waited: 30,
                    blocked_for: Some(45),
                }
                .to_string(),
            ),
            vec!["github", "30", "45"],
        ),
    ];
    examples.extend(credentials);
    examples
}

/// The fixed parts of `message`: what remains between the varying parts.
fn fixed_parts(message: &str, varying: &[String]) -> Vec<String> {
    let mut parts = vec![message.to_owned()];
    for value in varying {
        parts = parts
            .iter()
            .flat_map(|part| {
                part.split(value.as_str())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    parts
        .into_iter()
        .map(|part| {
            part.trim_matches(|c: char| c.is_whitespace() || c == ':' || c == ';')
                .to_owned()
        })
        .filter(|part| part.len() >= 3)
        .collect()
}

#[test]
fn every_stored_error_kind_has_its_row_in_the_troubleshooting_table() {
    let table = troubleshooting();
    let examples = provider_examples();
    let mut kinds: Vec<&str> = examples.iter().map(|(error, _)| kind(error)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(
        kinds.len(),
        KINDS_STORED,
        "an example for every stored kind: {kinds:?}"
    );

    let owned = |parts: &[&str]| -> Vec<String> { parts.iter().map(ToString::to_string).collect() };
    let mut messages: Vec<(String, Vec<String>)> = Vec::new();
    for (error, varying) in examples {
        let error = Arc::new(error);
        messages.push((
            PollProblem::Provider(error.clone()).to_string(),
            owned(&varying),
        ));
        let mut in_pr = owned(&varying);
        in_pr.push("17".to_owned());
        messages.push((
            PollProblem::PullRequest { number: 17, error }.to_string(),
            in_pr,
        ));
    }
    // Written by the poller (poll.rs, usable_connection) and the API (connection delete).
    for (message, varying) in [
        ("the workspace has no VCS connection; link one to resume VCS runs", vec![]),
        ("VCS connection vcs-abc is disabled; VCS runs are paused", vec!["vcs-abc"]),
        (
            "VCS connection vcs-abc was deleted; link the workspace to another connection to resume VCS runs",
            vec!["vcs-abc"],
        ),
    ] {
        messages.push((message.to_owned(), owned(&varying)));
    }
    // Stored settings that no longer parse (written before a check existed): their
    // messages quote the setting and explain at length; the table names the phrase.
    let settings = [
        (
            terrapod_shared::vcs::RepoUrl::parse(Provider::GitHub, "ftp://example.com/a/b")
                .unwrap_err()
                .to_string(),
            "repository URL: unrecognised form",
        ),
        (
            terrapod_shared::domain::BranchName::parse("bad..branch")
                .unwrap_err()
                .to_string(),
            "must not contain",
        ),
        (
            terrapod_shared::triggers::parse_tags_regex("(")
                .unwrap_err()
                .to_string(),
            "vcs-tags-regex: regex parse error",
        ),
    ];
    for (message, phrase) in settings {
        let message = PollProblem::Settings(message).to_string();
        assert!(message.contains(phrase), "{message}");
        let varying = owned(&message.split(phrase).collect::<Vec<_>>());
        messages.push((message.clone(), varying));
    }

    let mut missing = Vec::new();
    for (message, varying) in &messages {
        for part in fixed_parts(message, varying) {
            if !table.contains(&part) {
                missing.push(format!("`{part}` (from `{message}`)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in README.md's troubleshooting table:\n{}",
        missing.join("\n")
    );
}
