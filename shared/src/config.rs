//! Settings come from the environment only (`TERRAPOD_` prefix, `__` between nesting
//! levels) and are parsed once at start; a malformed value names its variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::crypto::KeyRing;

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: SecretString,
    pub amqp_url: SecretString,
    pub api_listen: SocketAddr,
    /// The longest a webhook body may take to arrive (slow senders hold bytes in flight).
    pub webhook_body_timeout: Duration,
    pub poller_listen: SocketAddr,
    pub poller_concurrency: NonZeroUsize,
    pub encryption: Option<KeyRing>,
    pub vcs: VcsSettings,
    pub bootstrap_token: Option<SecretString>,
    pub external_url: Url,
    /// `None` picks `pretty` on a terminal and `json` elsewhere.
    pub log_format: Option<LogFormat>,
    /// `RUST_LOG`, checked at start (`info` when unset or empty).
    pub log_filter: String,
}

#[derive(Clone, Debug)]
pub struct VcsSettings {
    pub enabled: bool,
    pub poll_interval: Duration,
    pub github_webhook_secret: Option<SecretString>,
    pub gitlab_webhook_secret: Option<SecretString>,
    pub max_archive_bytes: u64,
    pub max_unpacked_bytes: u64,
    /// Requests per 60 s to one GitHub App installation, shared by all replicas.
    pub github_requests_per_minute: u32,
    /// Requests per 60 s with one GitLab token on one server, shared by all replicas.
    pub gitlab_requests_per_minute: u32,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/terrapod";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply variables without touching
    /// the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup: &lookup };
        let database_url = env.url(
            "TERRAPOD_DATABASE__URL",
            DEFAULT_DATABASE_URL,
            &["postgres", "postgresql"],
        )?;
        // TLS to the broker (amqps://) is not compiled in yet: refuse it at start
        // rather than fail every connection later.
        let amqp_url = env.url("TERRAPOD_AMQP__URL", DEFAULT_AMQP_URL, &["amqp"])?;
        let poll_interval_seconds: u64 = env.parsed("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", 60)?;
        if poll_interval_seconds == 0 {
            return Err(ConfigError {
                variable: "TERRAPOD_VCS__POLL_INTERVAL_SECONDS",
                reason: "must be at least 1".into(),
            });
        }
        let encryption = match env.non_empty("TERRAPOD_ENCRYPTION__KEY") {
            None => None,
            Some(keys) => Some(KeyRing::parse(&keys).map_err(|err| ConfigError {
                variable: "TERRAPOD_ENCRYPTION__KEY",
                reason: err.to_string(),
            })?),
        };
        let log_format = match env.non_empty("TERRAPOD_LOG__FORMAT").as_deref() {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("pretty") => Some(LogFormat::Pretty),
            Some(other) => {
                return Err(ConfigError {
                    variable: "TERRAPOD_LOG__FORMAT",
                    reason: format!("expected `json` or `pretty`, got `{other}`"),
                })
            }
        };
        // A filter that does not parse would otherwise be dropped silently, leaving
        // the operator without the logs they asked for.
        let log_filter = env
            .non_empty("RUST_LOG")
            .map_or_else(|| "info".to_owned(), |raw| raw.trim().to_owned());
        check_log_filter(&log_filter).map_err(|reason| ConfigError {
            variable: "RUST_LOG",
            reason: format!("{reason}; e.g. `info` or `info,terrapod_poller=debug`"),
        })?;
        let external_url = env.non_empty("TERRAPOD_EXTERNAL_URL");
        let external_url = external_url.as_deref().unwrap_or("http://localhost:8080");
        let external_url = Url::parse(external_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ConfigError {
                variable: "TERRAPOD_EXTERNAL_URL",
                reason: "expected an http:// or https:// URL".into(),
            })?;
        let concurrency: usize = env.parsed("TERRAPOD_POLLER__CONCURRENCY", 8)?;
        let github_requests_per_minute =
            env.positive("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", 800)?;
        let gitlab_requests_per_minute =
            env.positive("TERRAPOD_VCS__GITLAB__REQUESTS_PER_MINUTE", 1500)?;
        Ok(Settings {
            database_url,
            amqp_url,
            api_listen: env.parsed(
                "TERRAPOD_API__LISTEN",
                SocketAddr::from(([0, 0, 0, 0], 8080)),
            )?,
            webhook_body_timeout: Duration::from_secs(
                env.positive("TERRAPOD_API__WEBHOOK_BODY_TIMEOUT_SECONDS", 30)?
                    .into(),
            ),
            poller_listen: env.parsed(
                "TERRAPOD_POLLER__LISTEN",
                SocketAddr::from(([0, 0, 0, 0], 9090)),
            )?,
            poller_concurrency: NonZeroUsize::new(concurrency).ok_or_else(|| ConfigError {
                variable: "TERRAPOD_POLLER__CONCURRENCY",
                reason: "must be at least 1".into(),
            })?,
            encryption,
            vcs: VcsSettings {
                enabled: env.parsed("TERRAPOD_VCS__ENABLED", true)?,
                poll_interval: Duration::from_secs(poll_interval_seconds),
                github_webhook_secret: env
                    .non_empty("TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET")
                    .map(SecretString::from),
                gitlab_webhook_secret: env
                    .non_empty("TERRAPOD_VCS__GITLAB__WEBHOOK_SECRET")
                    .map(SecretString::from),
                max_archive_bytes: env.parsed("TERRAPOD_VCS__MAX_ARCHIVE_BYTES", 104_857_600)?,
                max_unpacked_bytes: env
                    .parsed("TERRAPOD_VCS__MAX_UNPACKED_BYTES", 1_073_741_824)?,
                github_requests_per_minute,
                gitlab_requests_per_minute,
            },
            bootstrap_token: bootstrap_token(&env)?,
            external_url,
            log_format,
            log_filter,
        })
    }
}

/// Long enough that it cannot be guessed: an admin token anyone can reach the API with.
const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

fn bootstrap_token(env: &Env) -> Result<Option<SecretString>, ConfigError> {
    let Some(token) = env.non_empty("TERRAPOD_AUTH__BOOTSTRAP_TOKEN") else {
        return Ok(None);
    };
    let token = token.trim();
    if token.chars().count() < MIN_BOOTSTRAP_TOKEN_CHARS
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        // The value itself is never echoed.
        return Err(ConfigError {
            variable: "TERRAPOD_AUTH__BOOTSTRAP_TOKEN",
            reason: format!(
                "must be at least {MIN_BOOTSTRAP_TOKEN_CHARS} characters without spaces (for example `openssl rand -hex 32`)"
            ),
        });
    }
    Ok(Some(SecretString::from(token.to_owned())))
}

/// A `RUST_LOG` that `tracing` parses, with one more rule: a directive without `=` must
/// be a level. `tracing` reads any other bare word (`debgu`, `warning`) as a target to
/// trace, which silently turns every other log off.
fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|err| format!("not a valid log filter ({err})"))?;
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); write a target as `{directive}=LEVEL`"
            ));
        }
    }
    Ok(())
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn non_empty(&self, variable: &str) -> Option<String> {
        (self.lookup)(variable).filter(|value| !value.trim().is_empty())
    }

    fn parsed<T>(&self, variable: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.non_empty(variable) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|err| ConfigError {
                variable,
                reason: format!("cannot parse `{}`: {err}", raw.trim()),
            }),
        }
    }

    /// A whole number of at least 1.
    fn positive(&self, variable: &'static str, default: u32) -> Result<u32, ConfigError> {
        let value: u32 = self.parsed(variable, default)?;
        if value == 0 {
            return Err(ConfigError {
                variable,
                reason: "must be at least 1".into(),
            });
        }
        Ok(value)
    }

    /// URLs may carry passwords, so the value itself is never echoed in an error.
    fn url(
        &self,
        variable: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<SecretString, ConfigError> {
        let raw = self
            .non_empty(variable)
            .unwrap_or_else(|| default.to_owned());
        let parsed = Url::parse(raw.trim()).map_err(|err| ConfigError {
            variable,
            reason: format!("not a valid URL ({err})"),
        })?;
        if !schemes.contains(&parsed.scheme()) {
            return Err(ConfigError {
                variable,
                reason: format!(
                    "expected a {} URL, got scheme `{}`",
                    schemes.join(":// or ") + "://",
                    parsed.scheme()
                ),
            });
        }
        Ok(SecretString::from(raw.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn empty_or_blank_values_are_unset_and_a_bad_log_filter_is_refused() {
        let blank = settings(&[
            ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", ""),
            ("TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET", "  "),
            ("TERRAPOD_ENCRYPTION__KEY", ""),
            ("RUST_LOG", ""),
        ])
        .unwrap();
        assert_eq!(blank.vcs.poll_interval, Duration::from_secs(60));
        assert!(blank.vcs.github_webhook_secret.is_none());
        assert!(blank.encryption.is_none());
        assert_eq!(blank.log_filter, "info");
        let chosen = settings(&[("RUST_LOG", " warn,terrapod_poller=debug ")]).unwrap();
        assert_eq!(chosen.log_filter, "warn,terrapod_poller=debug");
        for bad in ["info,terrapod_poller=loud", "debgu", "info,warning"] {
            let err = settings(&[("RUST_LOG", bad)]).unwrap_err();
            assert_eq!(err.variable, "RUST_LOG", "{bad}");
        }
        for good in ["DEBUG", "warn,terrapod_api::http=off", "info,[poll]=debug"] {
            assert!(settings(&[("RUST_LOG", good)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let settings = settings(&[]).unwrap();
        assert_eq!(settings.api_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.poller_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(settings.poller_concurrency.get(), 8);
        assert_eq!(settings.vcs.poll_interval, Duration::from_secs(60));
        assert!(settings.vcs.enabled);
        assert_eq!(settings.vcs.max_archive_bytes, 104_857_600);
        assert_eq!(settings.vcs.max_unpacked_bytes, 1_073_741_824);
        assert_eq!(settings.vcs.github_requests_per_minute, 800);
        assert_eq!(settings.vcs.gitlab_requests_per_minute, 1500);
        assert!(settings.encryption.is_none());
        assert_eq!(settings.external_url.as_str(), "http://localhost:8080/");
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (variable, value) in [
            ("TERRAPOD_DATABASE__URL", "not a url"),
            ("TERRAPOD_DATABASE__URL", "mysql://localhost/x"),
            ("TERRAPOD_AMQP__URL", "http://localhost"),
            ("TERRAPOD_AMQP__URL", "amqps://broker:5671/%2f"),
            ("TERRAPOD_API__LISTEN", "8080"),
            ("TERRAPOD_POLLER__CONCURRENCY", "0"),
            ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "soon"),
            ("TERRAPOD_VCS__POLL_INTERVAL_SECONDS", "0"),
            ("TERRAPOD_VCS__ENABLED", "maybe"),
            ("TERRAPOD_ENCRYPTION__KEY", "not-a-key"),
            ("TERRAPOD_LOG__FORMAT", "xml"),
            ("TERRAPOD_EXTERNAL_URL", "ftp://x"),
            ("TERRAPOD_VCS__MAX_ARCHIVE_BYTES", "-1"),
            ("TERRAPOD_VCS__GITHUB__REQUESTS_PER_MINUTE", "0"),
            ("TERRAPOD_VCS__GITLAB__REQUESTS_PER_MINUTE", "lots"),
            ("TERRAPOD_AUTH__BOOTSTRAP_TOKEN", "too-short-to-be-safe"),
        ] {
            let err = settings(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{value}");
            assert!(err.to_string().starts_with(variable));
        }
    }

    #[test]
    fn a_short_bootstrap_token_is_refused_without_echoing_it() {
        let err = settings(&[("TERRAPOD_AUTH__BOOTSTRAP_TOKEN", "hunter2hunter2")]).unwrap_err();
        assert_eq!(err.variable, "TERRAPOD_AUTH__BOOTSTRAP_TOKEN");
        assert!(!err.to_string().contains("hunter2"));
        let long = "x".repeat(32);
        let ok = settings(&[("TERRAPOD_AUTH__BOOTSTRAP_TOKEN", long.as_str())]).unwrap();
        assert!(ok.bootstrap_token.is_some());
    }

    #[test]
    fn a_bad_database_url_is_not_echoed() {
        let err = settings(&[("TERRAPOD_DATABASE__URL", "mysql://u:hunter2@db/x")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
