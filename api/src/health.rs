//! Liveness, readiness and the TFE ping.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

pub async fn ping() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("TFP-API-Version", "2.5"))
        .finish()
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "healthy"}))
}

/// 200 while PostgreSQL answers (`degraded` when only RabbitMQ is away: CRUD keeps
/// working), else 503. The broker's state is the publisher's connection, which a
/// background task keeps open: a `/readyz` opens no connection of its own, and never
/// waits for a connect under way.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let broker = async {
        if state.publisher.is_connected() {
            Ok(())
        } else {
            Err("no connection (the API retries every few seconds)".to_owned())
        }
    };
    let readiness = state.readiness.readiness(&state.pool, broker).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness.body)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness.body)
    }
}
