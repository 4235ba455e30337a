//! `POST /api/v2/vcs-events/github` and `POST /api/v2/vcs-events/gitlab`.

pub mod service;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use terrapod_shared::domain::Provider;
use terrapod_shared::queue::PollReason;
use terrapod_shared::Settings;

use crate::error::ApiError;
use crate::jsonapi::read_body;
use crate::startup::AppState;
use service::Delivery;

/// The largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

fn message(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "message": text }))
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Counts the outcome, then passes it on.
fn counted(
    state: &AppState,
    provider: Provider,
    result: &Result<HttpResponse, ApiError>,
    label: &str,
) {
    let label = match result {
        Ok(_) => label,
        Err(ApiError::Unauthorized | ApiError::BadSignature(_)) => "unauthorized",
        Err(ApiError::PayloadTooLarge(_)) => "too_large",
        Err(ApiError::BadRequest(_)) => "invalid",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    };
    state
        .metrics
        .webhooks_received
        .with_label_values(&[provider.as_str(), label])
        .inc();
}

/// What differs between the providers' webhooks.
struct Hook {
    provider: Provider,
    secret: fn(&Settings) -> Option<&SecretString>,
    /// Whether the request proves it knows the secret.
    authentic: fn(&str, &[u8], &HttpRequest) -> bool,
    authenticity_error: &'static str,
    event_header: &'static str,
    delivery_header: &'static str,
    /// `Some(true)`: act on it; `Some(false)`: answer `pong`; `None`: ignore it.
    acts_on: fn(&str) -> Option<bool>,
    parse: fn(&[u8]) -> Result<Delivery, service::PayloadError>,
}

const GITHUB: Hook = Hook {
    provider: Provider::GitHub,
    secret: |settings| settings.vcs.github_webhook_secret.as_ref(),
    authentic: |secret, body, req| {
        service::github_signature_is_valid(secret, body, header(req, "x-hub-signature-256"))
    },
    authenticity_error: "missing or invalid X-Hub-Signature-256",
    event_header: "x-github-event",
    delivery_header: "x-github-delivery",
    acts_on: |event| match event {
        "push" | "pull_request" => Some(true),
        "ping" => Some(false),
        _ => None,
    },
    parse: service::parse_github,
};

const GITLAB: Hook = Hook {
    provider: Provider::GitLab,
    secret: |settings| settings.vcs.gitlab_webhook_secret.as_ref(),
    authentic: |secret, _, req| {
        service::gitlab_token_is_valid(secret, header(req, "x-gitlab-token"))
    },
    authenticity_error: "missing or invalid X-Gitlab-Token",
    event_header: "x-gitlab-event",
    delivery_header: "x-gitlab-event-uuid",
    acts_on: |event| matches!(event, "Push Hook" | "Merge Request Hook").then_some(true),
    parse: service::parse_gitlab,
};

pub async fn github(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(&GITHUB, req, payload, &state).await
}

pub async fn gitlab(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    handle(&GITLAB, req, payload, &state).await
}

async fn handle(
    hook: &Hook,
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let mut payload = payload.into_inner();
    let mut label = "accepted";
    let result = async {
        let secret = (hook.secret)(&state.settings)
            .filter(|_| state.settings.vcs.enabled)
            .ok_or_else(|| {
                ApiError::NotFound(format!("{} webhooks are not enabled", hook.provider))
            })?;
        let body = read_body(&req, &mut payload, MAX_WEBHOOK_BYTES).await?;
        if !(hook.authentic)(secret.expose_secret(), &body, &req) {
            return Err(ApiError::BadSignature(hook.authenticity_error.into()));
        }
        match (hook.acts_on)(header(&req, hook.event_header).unwrap_or_default()) {
            Some(false) => {
                label = "pong";
                Ok(message(StatusCode::OK, "pong"))
            }
            None => {
                label = "ignored";
                Ok(message(StatusCode::OK, "ignored"))
            }
            Some(true) => {
                let delivery =
                    (hook.parse)(&body).map_err(|err| ApiError::BadRequest(err.to_string()))?;
                label = accept(
                    state,
                    hook.provider,
                    header(&req, hook.delivery_header),
                    &delivery,
                )
                .await?;
                Ok(outcome_response(label))
            }
        }
    }
    .await;
    counted(state, hook.provider, &result, label);
    result
}

fn outcome_response(outcome: &str) -> HttpResponse {
    match outcome {
        "duplicate" => message(StatusCode::OK, "duplicate"),
        _ => message(StatusCode::ACCEPTED, "accepted"),
    }
}

/// Queues one poll per matching workspace, once per delivery id. No database
/// connection is held while publishing.
async fn accept(
    state: &AppState,
    provider: Provider,
    delivery_id: Option<&str>,
    delivery: &Delivery,
) -> Result<&'static str, ApiError> {
    let delivery_id = delivery_id
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 200);
    let workspaces = {
        let mut conn = state.pool.get().await?;
        if let Some(id) = delivery_id {
            if !service::claim_delivery(&mut conn, provider, id).await? {
                return Ok("duplicate");
            }
        }
        if delivery.may_have_new_commit {
            service::matching_workspaces(&mut conn, provider, delivery).await?
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
            let _ = service::release_delivery(&mut conn, provider, id).await;
        }
        return Err(err);
    }
    tracing::info!(%provider, repository = %delivery.repository, workspaces = workspaces.len(), "webhook accepted");
    Ok("accepted")
}
