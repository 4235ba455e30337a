//! Liveness, readiness and the TFE ping.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use terrapod_shared::{db, queue};

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
    let (database, broker) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), db::ping(&state.pool)),
        queue::check_broker(
            state.settings.amqp_url.expose_secret(),
            Duration::from_secs(3)
        ),
    );
    let database_ok = database.unwrap_or(false);
    let checks = json!({
        "database": if database_ok { "ok" } else { "unreachable" },
        "rabbitmq": match &broker { Ok(()) => "ok".to_owned(), Err(why) => format!("unreachable: {why}") },
    });
    if database_ok && broker.is_ok() {
        HttpResponse::Ok().json(json!({"status": "ready", "checks": checks}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "unready", "checks": checks}))
    }
}
