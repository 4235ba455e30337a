//! `POST /api/v2/vcs-events/github` and `POST /api/v2/vcs-events/gitlab`.

pub mod service;

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use terrapod_shared::domain::Provider;
use terrapod_shared::queue::PollReason;

use crate::error::ApiError;
use crate::jsonapi::read_body;
use crate::startup::AppState;
use service::Delivery;

/// The largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 25 * 1024 * 1024;

fn message(status: actix_web::http::StatusCode, text: &str) -> HttpResponse {
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

pub async fn github(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut payload = payload.into_inner();
    let mut label = "accepted";
    let result = async {
        let secret = state
            .settings
            .vcs
            .github_webhook_secret
            .as_ref()
            .filter(|_| state.settings.vcs.enabled)
            .ok_or_else(|| {
                ApiError::NotFound(
                    "GitHub webhooks are not enabled (TERRAPOD_VCS__GITHUB__WEBHOOK_SECRET)".into(),
                )
            })?;
        let body = read_body(&req, &mut payload, MAX_WEBHOOK_BYTES).await?;
        if !service::github_signature_is_valid(
            secret.expose_secret(),
            &body,
            header(&req, "x-hub-signature-256"),
        ) {
            return Err(ApiError::BadSignature(
                "missing or invalid X-Hub-Signature-256".into(),
            ));
        }
        match header(&req, "x-github-event").unwrap_or_default() {
            "ping" => {
                label = "pong";
                Ok(message(actix_web::http::StatusCode::OK, "pong"))
            }
            "push" | "pull_request" => {
                let delivery = service::parse_github(&body)
                    .map_err(|err| ApiError::BadRequest(err.to_string()))?;
                let outcome = accept(
                    &state,
                    Provider::GitHub,
                    header(&req, "x-github-delivery"),
                    &delivery,
                )
                .await?;
                label = outcome;
                Ok(outcome_response(outcome))
            }
            _ => {
                label = "ignored";
                Ok(message(actix_web::http::StatusCode::OK, "ignored"))
            }
        }
    }
    .await;
    counted(&state, Provider::GitHub, &result, label);
    result
}

pub async fn gitlab(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut payload = payload.into_inner();
    let mut label = "accepted";
    let result = async {
        let secret = state
            .settings
            .vcs
            .gitlab_webhook_secret
            .as_ref()
            .filter(|_| state.settings.vcs.enabled)
            .ok_or_else(|| {
                ApiError::NotFound(
                    "GitLab webhooks are not enabled (TERRAPOD_VCS__GITLAB__WEBHOOK_SECRET)".into(),
                )
            })?;
        let body = read_body(&req, &mut payload, MAX_WEBHOOK_BYTES).await?;
        if !service::gitlab_token_is_valid(secret.expose_secret(), header(&req, "x-gitlab-token")) {
            return Err(ApiError::BadSignature(
                "missing or invalid X-Gitlab-Token".into(),
            ));
        }
        match header(&req, "x-gitlab-event").unwrap_or_default() {
            "Push Hook" | "Merge Request Hook" => {
                let delivery = service::parse_gitlab(&body)
                    .map_err(|err| ApiError::BadRequest(err.to_string()))?;
                let outcome = accept(
                    &state,
                    Provider::GitLab,
                    header(&req, "x-gitlab-event-uuid"),
                    &delivery,
                )
                .await?;
                label = outcome;
                Ok(outcome_response(outcome))
            }
            _ => {
                label = "ignored";
                Ok(message(actix_web::http::StatusCode::OK, "ignored"))
            }
        }
    }
    .await;
    counted(&state, Provider::GitLab, &result, label);
    result
}

fn outcome_response(outcome: &str) -> HttpResponse {
    match outcome {
        "duplicate" => message(actix_web::http::StatusCode::OK, "duplicate"),
        _ => message(actix_web::http::StatusCode::ACCEPTED, "accepted"),
    }
}

/// Queues one poll per matching workspace, once per delivery id.
async fn accept(
    state: &AppState,
    provider: Provider,
    delivery_id: Option<&str>,
    delivery: &Delivery,
) -> Result<&'static str, ApiError> {
    let mut conn = state.pool.get().await?;
    let delivery_id = delivery_id
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 200);
    if let Some(id) = delivery_id {
        if !service::claim_delivery(&mut conn, provider, id).await? {
            return Ok("duplicate");
        }
    }
    let workspaces = if delivery.may_have_new_commit {
        service::matching_workspaces(&mut conn, provider, delivery).await?
    } else {
        Vec::new()
    };
    if let Err(err) = crate::polls::queue(state, &workspaces, PollReason::Webhook).await {
        if let Some(id) = delivery_id {
            // Let a redelivery try again.
            let _ = service::release_delivery(&mut conn, provider, id).await;
        }
        return Err(err);
    }
    tracing::info!(%provider, repository = %delivery.repository, workspaces = workspaces.len(), "webhook accepted");
    Ok("accepted")
}
