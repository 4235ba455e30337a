//! Liveness, readiness and the TFE ping.

use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use terrapod_shared::health;

use crate::startup::AppState;

pub async fn ping() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("TFP-API-Version", "2.5"))
        .finish()
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "healthy"}))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (ready, body) =
        health::readiness(&state.pool, state.settings.amqp_url.expose_secret()).await;
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
