//! The one HTTP client of a process, shared by every provider call: timeouts on every
//! request, the shared request budget (pacing per installation or token), bounded
//! retries that honour `Retry-After` and rate-limit resets, an ETag cache so
//! unchanged resources are answered with 304 (which GitHub does not count against the
//! primary rate limit), and bodies read within a size limit.
//!
//! **Credentials stay with their server.** A request names its credential apart from
//! its URL; it is attached only while the URL is on the connection's own origin
//! (scheme, host and port of its `server-url`). Redirects are followed here, hop by
//! hop: to the same origin with the credential, to any other (another host, another
//! port, `http://` instead of `https://`) without it — which is how GitHub's archive
//! downloads reach its download host.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ETAG, IF_NONE_MATCH, LOCATION, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use tokio::time::Instant;
use tracing::Instrument;
use url::{Origin, Url};

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

/// Who a request is for: the provider and its origin (the only place credentials go),
/// and whose budget it spends at what priority.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub provider: Provider,
    pub origin: Origin,
    pub budget: Option<BudgetKey>,
    pub priority: Priority,
}

impl Endpoint {
    /// True when `url` is on this endpoint's origin.
    pub fn owns(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|url| url.origin() == self.origin)
    }
}

/// How a request proves who we are; sent only to the endpoint's own origin.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer …` (GitHub tokens and App JWTs).
    Bearer(&'a str),
    /// `PRIVATE-TOKEN: …` (GitLab).
    PrivateToken(&'a str),
}

/// One provider request, rebuilt for every attempt and every redirect hop.
pub struct ProviderRequest<'a> {
    pub method: Method,
    pub url: &'a str,
    pub credential: Option<Credential<'a>>,
    /// Headers every request of the provider carries (`Accept`, API version).
    pub headers: &'a [(&'static str, &'static str)],
    /// Longer than the client's default for archive downloads.
    pub timeout: Option<Duration>,
    /// A JSON body (check runs, commit statuses).
    pub json: Option<&'a serde_json::Value>,
    /// Whether a redirect to another origin is followed (without credentials):
    /// archive downloads only, which GitHub sends to its download host. API answers
    /// that point elsewhere are refused, so a hostile server cannot aim the poller at
    /// internal hosts and read their answers back in `vcs-last-error`.
    pub redirects_off_origin: bool,
    /// Sent again only after an answer that proves it was not acted on (a rate limit):
    /// a create whose answer was lost must not be repeated blindly (a second check
    /// run); its caller looks before it tries again.
    pub at_most_once: bool,
}

impl<'a> ProviderRequest<'a> {
    pub fn get(
        url: &'a str,
        credential: Credential<'a>,
        headers: &'a [(&'static str, &'static str)],
    ) -> Self {
        ProviderRequest {
            method: Method::GET,
            url,
            credential: Some(credential),
            headers,
            timeout: None,
            json: None,
            redirects_off_origin: false,
            at_most_once: false,
        }
    }

    /// A request with a JSON body (check runs, commit statuses).
    pub fn json(
        method: Method,
        url: &'a str,
        credential: Credential<'a>,
        headers: &'a [(&'static str, &'static str)],
        body: &'a serde_json::Value,
    ) -> Self {
        ProviderRequest {
            method,
            json: Some(body),
            ..ProviderRequest::get(url, credential, headers)
        }
    }
}

/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 10;
/// The largest JSON answer read (a page of 100 pull requests is a few MB).
pub const MAX_JSON_BYTES: usize = 32 << 20;
/// The most of an error answer read (for its message).
const MAX_ERROR_BYTES: usize = 64 << 10;

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
            // Redirects are followed by `execute`, which knows where credentials may go.
            .redirect(reqwest::redirect::Policy::none())
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

    /// Sends `request`, retrying transient failures. Returns the first non-retryable
    /// response as is; the caller maps its status.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
    ) -> Result<Response, VcsError> {
        self.send_with(endpoint, request, None).await
    }

    async fn send_with(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
        etag: Option<&str>,
    ) -> Result<Response, VcsError> {
        let deadline = Instant::now() + self.retry.total_budget;
        let retry = &self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(retry.base_backoff)
            .with_max_delay(retry.max_wait)
            .with_max_times(retry.max_attempts.saturating_sub(1) as usize);
        let result = (|| self.attempt(endpoint, request, etag))
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

    /// Builds one hop of `request` to `url`: the credential (and the ETag) only on the
    /// endpoint's own origin.
    fn build(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
        url: &Url,
        etag: Option<&str>,
    ) -> Result<reqwest::Request, VcsError> {
        let mut builder = self.client.request(request.method.clone(), url.clone());
        for (name, value) in request.headers {
            builder = builder.header(*name, *value);
        }
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(json) = request.json {
            builder = builder.json(json);
        }
        if url.origin() == endpoint.origin {
            builder = match request.credential {
                Some(Credential::Bearer(token)) => builder.bearer_auth(token),
                Some(Credential::PrivateToken(token)) => builder.header("PRIVATE-TOKEN", token),
                None => builder,
            };
            if let Some(etag) = etag {
                builder = builder.header(IF_NONE_MATCH, etag);
            }
        }
        builder.build().map_err(|err| VcsError::Transport {
            provider: endpoint.provider,
            detail: err.without_url().to_string(),
        })
    }

    /// Sends one attempt of `request`, following redirects hop by hop (credentials
    /// only on the endpoint's origin). Reads follow every redirect; writes only 307 and
    /// 308, which keep the method and body (GitHub answers writes to a renamed
    /// repository so), and never off the endpoint's origin.
    async fn execute(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
        etag: Option<&str>,
    ) -> Result<Result<Response, reqwest::Error>, VcsError> {
        let provider = endpoint.provider;
        let invalid = |detail: String| VcsError::InvalidResponse { provider, detail };
        let mut url = Url::parse(request.url).map_err(|err| invalid(format!("bad URL: {err}")))?;
        let reads = is_read(&request.method);
        for _ in 0..=MAX_REDIRECTS {
            let hop = self.build(endpoint, request, &url, etag)?;
            let response = match self.client.execute(hop).await {
                Ok(response) => response,
                Err(err) => return Ok(Err(err)),
            };
            let redirect = match response.status().as_u16() {
                301..=303 => reads,
                307 | 308 => true,
                _ => false,
            };
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok());
            match (redirect, location) {
                (true, Some(location)) => {
                    let next = url
                        .join(location)
                        .map_err(|err| invalid(format!("bad redirect: {err}")))?;
                    if !matches!(next.scheme(), "http" | "https") {
                        return Err(invalid("a redirect to a scheme other than http(s)".into()));
                    }
                    if url.scheme() == "https" && next.scheme() == "http" {
                        return Err(invalid("a redirect from https to http was refused".into()));
                    }
                    if next.origin() != endpoint.origin && !(reads && request.redirects_off_origin)
                    {
                        return Err(invalid("a redirect to another origin was refused".into()));
                    }
                    if !reads {
                        // Said at every hop: a moved repository keeps costing one until
                        // the workspace's URL is updated.
                        tracing::info!(
                            provider = %provider,
                            from = url.path(),
                            to = next.path(),
                            "a write to the provider was redirected (a renamed or moved repository?)"
                        );
                    }
                    url = next;
                }
                _ => return Ok(Ok(response)),
            }
        }
        Err(invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// One attempt: budget first, then the request itself.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
        etag: Option<&str>,
    ) -> Result<Response, Failed> {
        let provider = endpoint.provider;
        let path = Url::parse(request.url)
            .map(|url| url.path().to_owned())
            .unwrap_or_default();
        let span =
            tracing::debug_span!("provider_request", %provider, method = %request.method, path);
        let lease = match (&self.budget, &endpoint.budget) {
            (Some(budget), Some(key)) => {
                let hold = request.timeout.unwrap_or(REQUEST_TIMEOUT) + Duration::from_secs(5);
                let cost = request_cost(provider, &request.method);
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
        let result = self
            .execute(endpoint, request, etag)
            .instrument(span)
            .await
            .map_err(Failed::fatal)?;
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
                let retryable = !request.at_most_once || is_rate_limited(&response);
                Err(Failed {
                    error: status_error(provider, response, wait_hint).await,
                    wait_hint,
                    retryable,
                })
            }
            Err(err) if err.is_timeout() => Err(Failed {
                error: VcsError::Timeout { provider },
                wait_hint: None,
                retryable: !request.at_most_once,
            }),
            Err(err) => Err(Failed {
                error: VcsError::Transport {
                    provider,
                    detail: err.without_url().to_string(),
                },
                wait_hint: None,
                retryable: !request.at_most_once,
            }),
        }
    }

    /// A GET of a JSON resource, conditional on the cached ETag of its URL.
    pub async fn get_json(
        &self,
        endpoint: &Endpoint,
        request: &ProviderRequest<'_>,
    ) -> Result<JsonResponse, VcsError> {
        let provider = endpoint.provider;
        // Per budget (installation or token) too: another connection's answer is not ours.
        let cache_key = match &endpoint.budget {
            Some(budget) => format!("{} {}", budget.as_str(), request.url),
            None => format!("{provider} {}", request.url),
        };
        let cache_key = cache_key.as_str();
        let cached = self.etags.get(cache_key);
        let mut response = self
            .send_with(endpoint, request, cached.as_ref().map(|c| c.etag.as_str()))
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
                None => response = self.send_with(endpoint, request, None).await?,
            }
        }
        if !response.status().is_success() {
            return Err(status_error(provider, response, None).await);
        }
        let headers = response.headers().clone();
        let body = read_bounded(provider, response, MAX_JSON_BYTES).await?;
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

/// Reads a body, refusing more than `limit` bytes (a hostile server gets no more of
/// our memory than that).
pub async fn read_bounded(
    provider: Provider,
    response: Response,
    limit: usize,
) -> Result<bytes::Bytes, VcsError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large(provider, limit));
    }
    let mut body = bytes::BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| VcsError::Transport {
            provider,
            detail: err.without_url().to_string(),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(provider, limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn too_large(provider: Provider, limit: usize) -> VcsError {
    VcsError::InvalidResponse {
        provider,
        detail: format!("an answer larger than {limit} bytes"),
    }
}

/// GET and HEAD: what may follow any redirect and costs GitHub's budget one point.
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// What a request costs of the budget: GitHub counts a write as five points.
fn request_cost(provider: Provider, method: &Method) -> u32 {
    match provider {
        Provider::GitHub if is_read(method) => 1,
        Provider::GitHub => 5,
        Provider::GitLab => 1,
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

/// How long to leave GitHub alone after a secondary rate limit that named no wait
/// (GitHub asks for at least a minute).
const SECONDARY_LIMIT_PAUSE: Duration = Duration::from_secs(60);

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
    let text = read_bounded(provider, response, MAX_ERROR_BYTES)
        .await
        .map(|body| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default();
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
        // GitHub's secondary limits sometimes come without a header that says so.
        403 if message
            .to_ascii_lowercase()
            .contains("secondary rate limit") =>
        {
            VcsError::RateLimited {
                provider,
                retry_after: Some(SECONDARY_LIMIT_PAUSE),
            }
        }
        _ => VcsError::Status {
            provider,
            status,
            message,
        },
    }
}
