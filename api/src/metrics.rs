//! Prometheus metrics of the API.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::startup::AppState;

#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub webhooks_received: IntCounterVec,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "terrapod_http_requests_total",
                "HTTP requests answered, by route pattern and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let webhooks_received = IntCounterVec::new(
            Opts::new(
                "terrapod_vcs_webhooks_received_total",
                "VCS webhooks received, by provider and result",
            ),
            &["provider", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(webhooks_received.clone()))
            .expect("registered once");
        ApiMetrics {
            registry,
            http_requests,
            webhooks_received,
        }
    }

    pub fn render(&self) -> String {
        terrapod_shared::health::render_metrics(&self.registry)
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs one `http` event per request and counts it by route pattern (never the raw
/// path, which would make one series per id).
pub async fn observe_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = crate::routes::RoutePattern::of(&req).unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let response = next.call(req).await?;
    let status = response.status();
    if let Some(metrics) = metrics {
        metrics
            .http_requests
            .with_label_values(&[&*route, status.as_str()])
            .inc();
    }
    tracing::info!(
        target: "terrapod_api::http",
        method = %method,
        route = %route,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "http"
    );
    Ok(response)
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
