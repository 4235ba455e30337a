//! The one HTTP client of a process, shared by every provider call: timeouts on every
//! request, bounded retries that honour `Retry-After` and rate-limit resets, and an
//! ETag cache so unchanged resources are answered with 304 (which GitHub does not
//! count against the rate limit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::time::Instant;

use crate::domain::Provider;
use crate::vcs::VcsError;

/// How hard to try before giving up until the next poll cycle.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// The first backoff when the provider gives no hint; doubled each attempt.
    pub base_backoff: Duration,
    /// The longest single wait. A provider asking for longer is not waited for.
    pub max_wait: Duration,
    /// All attempts of one call, waits included, end within this.
    pub total_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(10),
            total_budget: Duration::from_secs(30),
        }
    }
}

/// Called once per provider response with (provider, HTTP status), for metrics.
pub type ResponseObserver = Arc<dyn Fn(Provider, u16) + Send + Sync>;

struct CachedBody {
    etag: String,
    body: bytes::Bytes,
}

/// Cached bodies are small JSON documents; past this many entries the cache starts
/// over rather than growing without bound.
const MAX_CACHED_BODIES: usize = 50_000;

pub struct VcsHttp {
    client: reqwest::Client,
    retry: RetryPolicy,
    cache: Mutex<HashMap<String, CachedBody>>,
    observer: Option<ResponseObserver>,
}

pub struct JsonResponse {
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// Answered from the ETag cache after a 304.
    pub not_modified: bool,
}

impl VcsHttp {
    pub fn new(retry: RetryPolicy, observer: Option<ResponseObserver>) -> Self {
        Self::with_timeout(retry, observer, Duration::from_secs(30))
    }

    /// `request_timeout` bounds each request (archive downloads set their own, longer).
    pub fn with_timeout(
        retry: RetryPolicy,
        observer: Option<ResponseObserver>,
        request_timeout: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("terrapod-vcs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("the HTTP client configuration is valid");
        VcsHttp {
            client,
            retry,
            cache: Mutex::new(HashMap::new()),
            observer,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request built by `build` (rebuilt for each attempt), retrying
    /// transient failures. Returns the first non-retryable response as is; the caller
    /// maps its status.
    pub async fn send(
        &self,
        provider: Provider,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, VcsError> {
        self.send_with(provider, build, None).await
    }

    async fn send_with(
        &self,
        provider: Provider,
        build: impl Fn() -> RequestBuilder,
        etag: Option<&str>,
    ) -> Result<Response, VcsError> {
        let deadline = Instant::now() + self.retry.total_budget;
        let mut backoff = self.retry.base_backoff;
        let mut attempt = 1;
        loop {
            let mut request = build();
            if let Some(etag) = etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            let (error, hinted_wait) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if let Some(observer) = &self.observer {
                        observer(provider, status.as_u16());
                    }
                    if !is_retryable(&response) {
                        return Ok(response);
                    }
                    let wait = wait_hint(response.headers());
                    let error = status_error(provider, response, wait).await;
                    (error, wait)
                }
                Err(err) if err.is_timeout() => (VcsError::Timeout { provider }, None),
                Err(err) => (
                    VcsError::Transport {
                        provider,
                        detail: err.without_url().to_string(),
                    },
                    None,
                ),
            };
            let wait = hinted_wait.unwrap_or(backoff);
            if attempt >= self.retry.max_attempts
                || wait > self.retry.max_wait
                || Instant::now() + wait > deadline
            {
                return Err(error);
            }
            tracing::debug!(%provider, attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying provider request");
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    /// A GET of a JSON resource, conditional on the cached ETag for `cache_key`.
    pub async fn get_json(
        &self,
        provider: Provider,
        cache_key: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<JsonResponse, VcsError> {
        let cached_etag = self
            .cache
            .lock()
            .expect("cache lock")
            .get(cache_key)
            .map(|cached| cached.etag.clone());
        let response = self
            .send_with(provider, build, cached_etag.as_deref())
            .await?;
        let headers = response.headers().clone();
        if response.status() == StatusCode::NOT_MODIFIED {
            if let Some(cached) = self.cache.lock().expect("cache lock").get(cache_key) {
                return Ok(JsonResponse {
                    headers,
                    body: cached.body.clone(),
                    not_modified: true,
                });
            }
            return Err(VcsError::InvalidResponse {
                provider,
                detail: "304 Not Modified for a resource that is not cached".into(),
            });
        }
        if !response.status().is_success() {
            return Err(status_error(provider, response, None).await);
        }
        let body = response.bytes().await.map_err(|err| VcsError::Transport {
            provider,
            detail: err.without_url().to_string(),
        })?;
        if let Some(etag) = headers.get(ETAG).and_then(|v| v.to_str().ok()) {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= MAX_CACHED_BODIES {
                cache.clear();
            }
            cache.insert(
                cache_key.to_owned(),
                CachedBody {
                    etag: etag.to_owned(),
                    body: body.clone(),
                },
            );
        }
        Ok(JsonResponse {
            headers,
            body,
            not_modified: false,
        })
    }

    /// Drops every cached body whose key starts with `prefix` (after a 401, say).
    pub fn forget(&self, prefix: &str) {
        self.cache
            .lock()
            .expect("cache lock")
            .retain(|key, _| !key.starts_with(prefix));
    }
}

fn is_rate_limited(response: &Response) -> bool {
    let headers = response.headers();
    let exhausted = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    response.status() == StatusCode::TOO_MANY_REQUESTS
        || (response.status() == StatusCode::FORBIDDEN
            && (exhausted || headers.contains_key(RETRY_AFTER)))
}

fn is_retryable(response: &Response) -> bool {
    response.status().is_server_error() || is_rate_limited(response)
}

/// How long the provider asks us to wait: `Retry-After` (seconds), else the rate-limit
/// reset time (`X-RateLimit-Reset` on GitHub, `RateLimit-Reset` on GitLab; epoch seconds).
fn wait_hint(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    let reset = number("x-ratelimit-reset").or_else(|| number("ratelimit-reset"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

/// Maps a non-success response to an error, with a short excerpt of the provider's
/// own message (which never holds our credentials).
pub async fn status_error(
    provider: Provider,
    response: Response,
    retry_after: Option<Duration>,
) -> VcsError {
    let status = response.status().as_u16();
    if is_rate_limited(&response) {
        return VcsError::RateLimited {
            provider,
            retry_after: retry_after.or_else(|| wait_hint(response.headers())),
        };
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|body| {
            body.get("message")
                .or_else(|| body.get("error"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
        })
        .unwrap_or(text);
    let message: String = message.chars().take(200).collect();
    match status {
        401 => VcsError::Unauthorized { provider, status },
        _ => VcsError::Status {
            provider,
            status,
            message,
        },
    }
}
