//! `POST /api/v2/vcs-events/github` and `POST /api/v2/vcs-events/gitlab`.
//!
//! Nothing is trusted before it is verified: GitLab's token is checked before the body
//! is read; GitHub's signature needs the body, which is read within a size limit, a
//! time limit and a per-process budget of bytes in flight.

pub mod deliveries;
pub mod payload;
pub mod verify;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use terrapod_shared::domain::Provider;
use terrapod_shared::queue::PollReason;
use terrapod_shared::Settings;

use crate::error::ApiError;
use crate::jsonapi::read_body;
use crate::resources::vcs_events;
use crate::startup::AppState;
use payload::Delivery;

/// The largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;
/// The longest a delivery waits for room among the bytes in flight.
const BYTES_WAIT: Duration = Duration::from_secs(2);

/// How a genuine delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Polls were queued for the matching workspaces (perhaps none).
    Accepted,
    /// This delivery id was handled before: nothing queued.
    Duplicate,
    /// GitHub's ping.
    Pong,
    /// An event that cannot bring a new commit.
    Ignored,
}

impl WebhookOutcome {
    /// The `result` label of `terrapod_vcs_webhooks_received_total`.
    pub fn label(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Pong => "pong",
            WebhookOutcome::Ignored => "ignored",
        }
    }

    pub fn response(self) -> HttpResponse {
        let (status, message) = match self {
            WebhookOutcome::Accepted => (StatusCode::ACCEPTED, "accepted"),
            WebhookOutcome::Duplicate => (StatusCode::OK, "duplicate"),
            WebhookOutcome::Pong => (StatusCode::OK, "pong"),
            WebhookOutcome::Ignored => (StatusCode::OK, "ignored"),
        };
        HttpResponse::build(status).json(json!({ "message": message }))
    }
}

/// The `result` label of a refused delivery.
fn error_label(err: &ApiError) -> &'static str {
    match err {
        ApiError::Unauthorized | ApiError::BadSignature(_) => "unauthorized",
        ApiError::PayloadTooLarge(_) => "too_large",
        ApiError::BadRequest(_) | ApiError::RequestTimeout(_) => "invalid",
        ApiError::Unavailable(_) => "unavailable",
        _ => "error",
    }
}

/// What an event header asks of us.
enum Event {
    /// A push or PR/MR change: poll the repository's workspaces.
    Change,
    Ping,
    Other,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The two providers' webhook conventions.
#[derive(Clone, Copy)]
enum Hook {
    GitHub,
    GitLab,
}

impl Hook {
    fn provider(self) -> Provider {
        match self {
            Hook::GitHub => Provider::GitHub,
            Hook::GitLab => Provider::GitLab,
        }
    }

    fn secret(self, settings: &Settings) -> Option<&SecretString> {
        match self {
            Hook::GitHub => settings.vcs.github_webhook_secret.as_ref(),
            Hook::GitLab => settings.vcs.gitlab_webhook_secret.as_ref(),
        }
    }

    fn event(self, req: &HttpRequest) -> Event {
        match (self, header(req, self.event_header()).unwrap_or_default()) {
            (Hook::GitHub, "push" | "pull_request") => Event::Change,
            (Hook::GitHub, "ping") => Event::Ping,
            (Hook::GitLab, "Push Hook" | "Tag Push Hook" | "Merge Request Hook") => Event::Change,
            _ => Event::Other,
        }
    }

    fn event_header(self) -> &'static str {
        match self {
            Hook::GitHub => "x-github-event",
            Hook::GitLab => "x-gitlab-event",
        }
    }

    fn delivery_header(self) -> &'static str {
        match self {
            Hook::GitHub => "x-github-delivery",
            Hook::GitLab => "x-gitlab-event-uuid",
        }
    }

    fn parse(self, body: &[u8]) -> Result<Delivery, payload::PayloadError> {
        match self {
            Hook::GitHub => payload::parse_github(body),
            Hook::GitLab => payload::parse_gitlab(body),
        }
    }
}

pub async fn github(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(Hook::GitHub, req, payload, &state).await
}

pub async fn gitlab(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(Hook::GitLab, req, payload, &state).await
}

/// Receives one delivery and counts how it ended.
async fn handle(
    hook: Hook,
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let result = receive(hook, &req, payload, state).await;
    let label = match &result {
        Ok(outcome) => outcome.label(),
        Err(err) => error_label(err),
    };
    state
        .metrics
        .webhooks_received
        .with_label_values(&[hook.provider().as_str(), label])
        .inc();
    result.map(WebhookOutcome::response)
}

async fn receive(
    hook: Hook,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<WebhookOutcome, ApiError> {
    let provider = hook.provider();
    let secret = hook
        .secret(&state.settings)
        .filter(|_| state.settings.vcs.enabled)
        .ok_or_else(|| ApiError::NotFound(format!("{provider} webhooks are not enabled")))?;
    // GitLab proves itself in a header: nothing is read from a stranger.
    if let Hook::GitLab = hook {
        if !verify::gitlab_token_is_valid(secret.expose_secret(), header(req, "x-gitlab-token")) {
            return Err(ApiError::BadSignature(
                "missing or invalid X-Gitlab-Token".into(),
            ));
        }
    }
    // GitLab's delivery is authenticated already; only strangers' bodies share the
    // bounded bytes in flight, so they cannot hold GitLab's deliveries back.
    let body = read_webhook_body(state, req, payload, matches!(hook, Hook::GitHub)).await?;
    if let Hook::GitHub = hook {
        let signature = header(req, "x-hub-signature-256");
        if !verify::github_signature_is_valid(secret.expose_secret(), &body, signature) {
            return Err(ApiError::BadSignature(
                "missing or invalid X-Hub-Signature-256".into(),
            ));
        }
    }
    match hook.event(req) {
        Event::Ping => Ok(WebhookOutcome::Pong),
        Event::Other => Ok(WebhookOutcome::Ignored),
        Event::Change => {
            let delivery = hook
                .parse(&body)
                .map_err(|err| ApiError::BadRequest(err.to_string()))?;
            accept(
                state,
                provider,
                header(req, hook.delivery_header()),
                &delivery,
            )
            .await
        }
    }
}

/// Reads the body within [`MAX_WEBHOOK_BYTES`] and the body timeout, holding its size
/// among the process's webhook bytes in flight (503 when they are all taken).
async fn read_webhook_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    bounded: bool,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_WEBHOOK_BYTES) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the request body is larger than {MAX_WEBHOOK_BYTES} bytes"
        )));
    }
    let reserve = u32::try_from(declared.unwrap_or(MAX_WEBHOOK_BYTES).max(1)).unwrap_or(u32::MAX);
    let _permit = if bounded {
        Some(reserve_bytes(&state.webhook_bytes, reserve).await?)
    } else {
        None
    };
    let mut payload = payload.into_inner();
    let timeout = state.settings.webhook_body_timeout;
    tokio::time::timeout(timeout, read_body(req, &mut payload, MAX_WEBHOOK_BYTES))
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ))
        })?
}

/// Takes `bytes` of the webhook bytes in flight, waiting at most [`BYTES_WAIT`]. Not
/// a queue: a large request waiting for room does not hold smaller ones back.
async fn reserve_bytes(
    bytes_in_flight: &tokio::sync::Semaphore,
    bytes: u32,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let deadline = tokio::time::Instant::now() + BYTES_WAIT;
    loop {
        match bytes_in_flight.try_acquire_many(bytes) {
            Ok(permit) => return Ok(permit),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                return Err(ApiError::Unavailable(
                    "too many webhook deliveries are being read; retry shortly".into(),
                ))
            }
        }
    }
}

/// Queues one poll per matching workspace, once per delivery id. No database
/// connection is held while publishing.
async fn accept(
    state: &AppState,
    provider: Provider,
    delivery_id: Option<&str>,
    delivery: &Delivery,
) -> Result<WebhookOutcome, ApiError> {
    let delivery_id = delivery_id
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 200);
    let workspaces = {
        let mut conn = state.pool.get().await?;
        if let Some(id) = delivery_id {
            if !deliveries::claim(&mut conn, provider, id).await? {
                return Ok(WebhookOutcome::Duplicate);
            }
        }
        if delivery.may_have_new_commit {
            payload::matching_workspaces(&mut conn, provider, delivery).await?
        } else {
            Vec::new()
        }
    };
    if let Err(err) =
        crate::polls::queue(state, &workspaces, PollReason::Webhook, delivery_id).await
    {
        if let Some(id) = delivery_id {
            // Let a redelivery try again.
            let mut conn = state.pool.get().await?;
            let _ = deliveries::release(&mut conn, provider, id).await;
        }
        return Err(err);
    }
    if !workspaces.is_empty() {
        let repository: String = delivery.repository.chars().take(200).collect();
        let message = match delivery_id {
            Some(id) => format!("{provider} webhook for {repository} (delivery {id}): poll queued"),
            None => format!("{provider} webhook for {repository}: poll queued"),
        };
        // The poll is queued; an event log that cannot be written only loses the note.
        let recorded = match state.pool.get().await {
            Ok(mut conn) => vcs_events::service::record_webhook(&mut conn, &workspaces, &message)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = recorded {
            tracing::warn!(error = %err, "cannot record the webhook in the event log");
        }
    }
    tracing::info!(%provider, repository = %delivery.repository, workspaces = workspaces.len(), delivery.id = delivery_id, "webhook accepted");
    Ok(WebhookOutcome::Accepted)
}
