use std::time::Duration;

use crate::domain::Provider;
use crate::vcs::archive::ArchiveError;

/// What went wrong talking to a provider. Display strings end up in
/// `vcs-last-error`: short, and never holding a credential.
#[derive(Debug, thiserror::Error)]
pub enum VcsError {
    #[error("{provider} rejected the connection's credentials (HTTP {status})")]
    Unauthorized { provider: Provider, status: u16 },
    #[error("{provider}: {what} not found (or the credentials cannot see it)")]
    NotFound { provider: Provider, what: String },
    #[error("{provider} rate limit exhausted{}", retry_hint(*.retry_after))]
    RateLimited {
        provider: Provider,
        retry_after: Option<Duration>,
    },
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        provider: Provider,
        status: u16,
        message: String,
    },
    #[error("request to {provider} timed out")]
    Timeout { provider: Provider },
    #[error("cannot reach {provider}: {detail}")]
    Transport { provider: Provider, detail: String },
    #[error("unexpected {provider} response: {detail}")]
    InvalidResponse { provider: Provider, detail: String },
    #[error("repository archive refused: {0}")]
    Archive(#[from] ArchiveError),
    #[error("the connection's credentials are unusable: {0}")]
    Credentials(CredentialProblem),
    /// The shared request budget had no room in time, or could not be consulted.
    #[error("{0}")]
    Budget(String),
    /// The process is shutting down: the request was not sent (nothing to record).
    #[error("the poller is shutting down")]
    Interrupted,
}

/// Why a connection's stored credentials cannot be used (each has its row in the
/// README's troubleshooting table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialProblem {
    #[error("the connection has no credentials")]
    Missing,
    #[error("TERRAPOD_ENCRYPTION__KEY is not set")]
    NoEncryptionKey,
    #[error("the credential cannot be decrypted with TERRAPOD_ENCRYPTION__KEY")]
    Undecryptable,
    #[error("the GitHub App id or installation id is missing")]
    GitHubIdsMissing,
    #[error("the GitHub App private key is not an RSA PEM key")]
    NotAnRsaPemKey,
    #[error("the GitHub App private key cannot sign a JWT")]
    CannotSign,
}

fn retry_hint(after: Option<Duration>) -> String {
    after.map_or_else(String::new, |after| {
        format!("; resets in {}s", after.as_secs())
    })
}

impl VcsError {
    /// Errors worth another attempt soon (the next cycle), as opposed to a setting a
    /// person must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VcsError::RateLimited { .. }
                | VcsError::Budget(_)
                | VcsError::Timeout { .. }
                | VcsError::Transport { .. }
                | VcsError::Status {
                    status: 500..=599,
                    ..
                }
        )
    }
}
