//! `/healthz`, `/readyz` and `/metrics` on `TERRAPOD_POLLER__LISTEN`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use secrecy::ExposeSecret;
use serde_json::json;
use terrapod_shared::queue;

use crate::poll::PollContext;

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "healthy"}))
}

/// 200 while PostgreSQL answers (`degraded` when only RabbitMQ is away: the schedule
/// keeps polling), else 503; cached for about a second.
async fn readyz(ctx: web::Data<Arc<PollContext>>) -> HttpResponse {
    let broker = queue::check_broker(
        ctx.settings.amqp_url.expose_secret(),
        std::time::Duration::from_secs(3),
    );
    let readiness = ctx.readiness.readiness(&ctx.pool, broker).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness.body)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness.body)
    }
}

async fn metrics(ctx: web::Data<Arc<PollContext>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ctx.metrics.render())
}

/// Binds the listener; returns the server and the port it got.
pub fn build(ctx: Arc<PollContext>, listener: TcpListener) -> std::io::Result<Server> {
    let data = web::Data::new(ctx);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}
