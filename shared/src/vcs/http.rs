//! The one HTTP client of a process, shared by every provider call: timeouts on every
//! request, the shared request budget (pacing per installation or token), bounded
//! retries that honour `Retry-After` and rate-limit resets, and an ETag cache so
//! unchanged resources are answered with 304 (which GitHub does not count against the
//! primary rate limit).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;

use crate::domain::Provider;
use crate::vcs::budget::{BudgetError, BudgetKey, Priority, RequestBudget};
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

/// Who a request is for: the provider, and whose budget it spends at what priority.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub provider: Provider,
    pub budget: Option<BudgetKey>,
    pub priority: Priority,
}

struct CachedBody {
    etag: String,
    body: bytes::Bytes,
}

/// Bytes of cached bodies kept (least recently used go first).
const ETAG_CACHE_BYTES: u64 = 64 << 20;
/// Default per-request timeout; archive downloads set their own, longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct VcsHttp {
    client: reqwest::Client,
    retry: RetryPolicy,
    etags: moka::sync::Cache<String, Arc<CachedBody>>,
    observer: Option<ResponseObserver>,
    budget: Option<Arc<RequestBudget>>,
}

pub struct JsonResponse {
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// Answered from the ETag cache after a 304.
    pub not_modified: bool,
}

/// An attempt that did not produce a usable response.
struct Failed {
    error: VcsError,
    /// What the provider asked us to wait, if anything.
    wait_hint: Option<Duration>,
    retryable: bool,
}

impl Failed {
    fn fatal(error: VcsError) -> Self {
        Failed {
            error,
            wait_hint: None,
            retryable: false,
        }
    }
}

impl VcsHttp {
    pub fn new(retry: RetryPolicy, observer: Option<ResponseObserver>) -> Self {
        Self::with_timeout(retry, observer, REQUEST_TIMEOUT)
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
            etags: moka::sync::Cache::builder()
                .weigher(|key: &String, value: &Arc<CachedBody>| {
                    u32::try_from(key.len() + value.body.len() + value.etag.len())
                        .unwrap_or(u32::MAX)
                })
                .max_capacity(ETAG_CACHE_BYTES)
                .build(),
            observer,
            budget: None,
        }
    }

    /// Paces every request through `budget` (the poller's; tests and one-off tools
    /// run without one).
    pub fn with_budget(mut self, budget: Arc<RequestBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The request budget, if requests are paced.
    pub fn budget(&self) -> Option<&RequestBudget> {
        self.budget.as_deref()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request built by `build` (rebuilt for each attempt), retrying
    /// transient failures. Returns the first non-retryable response as is; the caller
    /// maps its status.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, VcsError> {
        self.send_with(endpoint, &build, None).await
    }

    async fn send_with(
        &self,
        endpoint: &Endpoint,
        build: &impl Fn() -> RequestBuilder,
        etag: Option<&str>,
    ) -> Result<Response, VcsError> {
        let deadline = Instant::now() + self.retry.total_budget;
        let retry = &self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(retry.base_backoff)
            .with_max_delay(retry.max_wait)
            .with_max_times(retry.max_attempts.saturating_sub(1) as usize);
        let result = (|| self.attempt(endpoint, build, etag))
            .retry(backoff)
            .when(|failed: &Failed| failed.retryable)
            .adjust(|failed, next| {
                // `next` is None once the attempts are used up.
                let wait = failed.wait_hint.unwrap_or(next?);
                (wait <= retry.max_wait && Instant::now() + wait <= deadline).then_some(wait)
            })
            .notify(|failed, wait| {
                tracing::debug!(provider = %endpoint.provider, wait_ms = wait.as_millis() as u64, error = %failed.error, "retrying provider request");
            })
            .await;
        match result {
            Ok(response) => Ok(response),
            Err(failed) => {
                if let VcsError::RateLimited {
                    retry_after: Some(wait),
                    ..
                } = &failed.error
                {
                    // Every replica stops asking until the provider's limit resets.
                    if let (Some(budget), Some(key)) = (&self.budget, &endpoint.budget) {
                        if let Err(err) = budget.block(key, *wait).await {
                            tracing::warn!(error = %err, "cannot record the provider's rate limit");
                        }
                    }
                }
                Err(failed.error)
            }
        }
    }

    /// One request: budget first, then the request itself.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        build: &impl Fn() -> RequestBuilder,
        etag: Option<&str>,
    ) -> Result<Response, Failed> {
        let provider = endpoint.provider;
        let mut builder = build();
        if let Some(etag) = etag {
            builder = builder.header(IF_NONE_MATCH, etag);
        }
        let request = builder.build().map_err(|err| {
            Failed::fatal(VcsError::Transport {
                provider,
                detail: err.without_url().to_string(),
            })
        })?;
        let span = tracing::debug_span!("provider_request", %provider, method = %request.method(), path = request.url().path());
        let lease = match (&self.budget, &endpoint.budget) {
            (Some(budget), Some(key)) => {
                let hold =
                    request.timeout().copied().unwrap_or(REQUEST_TIMEOUT) + Duration::from_secs(5);
                let cost = request_cost(provider, request.method());
                let lease = budget
                    .acquire(key, endpoint.priority, cost, hold)
                    .instrument(span.clone())
                    .await
                    .map_err(|err| {
                        Failed::fatal(match err {
                            BudgetError::Stopped => VcsError::Interrupted,
                            other => VcsError::Budget(other.to_string()),
                        })
                    })?;
                Some(lease)
            }
            _ => None,
        };
        let result = self.client.execute(request).instrument(span).await;
        if let Some(lease) = lease {
            lease.release();
        }
        match result {
            Ok(response) => {
                let status = response.status();
                if let Some(observer) = &self.observer {
                    observer(provider, status.as_u16());
                }
                if !is_retryable(&response) {
                    return Ok(response);
                }
                let wait_hint = wait_hint(response.headers());
                Err(Failed {
                    error: status_error(provider, response, wait_hint).await,
                    wait_hint,
                    retryable: true,
                })
            }
            Err(err) if err.is_timeout() => Err(Failed {
                error: VcsError::Timeout { provider },
                wait_hint: None,
                retryable: true,
            }),
            Err(err) => Err(Failed {
                error: VcsError::Transport {
                    provider,
                    detail: err.without_url().to_string(),
                },
                wait_hint: None,
                retryable: true,
            }),
        }
    }

    /// A GET of a JSON resource, conditional on the cached ETag for `cache_key`.
    pub async fn get_json(
        &self,
        endpoint: &Endpoint,
        cache_key: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<JsonResponse, VcsError> {
        let provider = endpoint.provider;
        // Per budget (installation or token) too: another connection's answer is not ours.
        let cache_key = match &endpoint.budget {
            Some(budget) => format!("{} {cache_key}", budget.as_str()),
            None => format!("{provider} {cache_key}"),
        };
        let cache_key = cache_key.as_str();
        let cached = self.etags.get(cache_key);
        let mut response = self
            .send_with(endpoint, &build, cached.as_ref().map(|c| c.etag.as_str()))
            .await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            match &cached {
                Some(cached) => {
                    return Ok(JsonResponse {
                        headers: response.headers().clone(),
                        body: cached.body.clone(),
                        not_modified: true,
                    })
                }
                // We sent no ETag, yet the provider says "not modified": ask plainly.
                None => response = self.send_with(endpoint, &build, None).await?,
            }
        }
        if !response.status().is_success() {
            return Err(status_error(provider, response, None).await);
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|err| VcsError::Transport {
            provider,
            detail: err.without_url().to_string(),
        })?;
        match headers.get(ETAG).and_then(|v| v.to_str().ok()) {
            Some(etag) => self.etags.insert(
                cache_key.to_owned(),
                Arc::new(CachedBody {
                    etag: etag.to_owned(),
                    body: body.clone(),
                }),
            ),
            None => self.etags.invalidate(cache_key),
        }
        Ok(JsonResponse {
            headers,
            body,
            not_modified: false,
        })
    }
}

/// What a request costs of the budget: GitHub counts a write as five points.
fn request_cost(provider: Provider, method: &Method) -> u32 {
    match (provider, method) {
        (Provider::GitHub, &Method::GET | &Method::HEAD) => 1,
        (Provider::GitHub, _) => 5,
        (Provider::GitLab, _) => 1,
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
