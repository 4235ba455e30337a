//! Building and running the HTTP server, and the API's background tasks.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use secrecy::ExposeSecret;
use terrapod_shared::db::DbPool;
use terrapod_shared::health::ReadinessCache;
use terrapod_shared::queue::Publisher;
use terrapod_shared::Settings;
use tokio::sync::Semaphore;

use crate::metrics::ApiMetrics;
use crate::routes;

pub struct AppState {
    pub pool: DbPool,
    pub settings: Arc<Settings>,
    pub metrics: ApiMetrics,
    /// Connects lazily and reconnects after a failure, so CRUD never waits for the broker.
    pub publisher: Publisher,
    pub token_cache: crate::auth::TokenCache,
    pub readiness: ReadinessCache,
    /// Webhook body bytes being read at once by this process (unauthenticated until
    /// their signature is checked).
    pub webhook_bytes: Semaphore,
}

/// Webhook body bytes read at once, at most, per process.
pub const WEBHOOK_BYTES_IN_FLIGHT: usize = 64 << 20;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds `settings.api_listen` (port 0 picks a free port, as tests do).
    pub fn build(settings: Settings, pool: DbPool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.api_listen)?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            pool,
            publisher: Publisher::new(settings.amqp_url.expose_secret(), "terrapod-api"),
            settings: Arc::new(settings),
            metrics: ApiMetrics::new(),
            token_cache: crate::auth::TokenCache::new(),
            readiness: ReadinessCache::default(),
            webhook_bytes: Semaphore::new(WEBHOOK_BYTES_IN_FLIGHT),
        });
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                // Outermost last: requests are counted, then authenticated.
                .wrap(from_fn(crate::auth::authenticate_requests))
                .wrap(from_fn(crate::metrics::observe_requests))
                .configure(routes::configure)
        })
        .listen(listener)?
        .run();
        Ok(Application {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped, with the background tasks: watching the broker and
    /// forgetting old webhook deliveries.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let watcher = tokio::spawn(watch_broker(self.state.clone()));
        let purger = tokio::spawn(purge_deliveries(self.state.clone()));
        let served = self.server.await;
        watcher.abort();
        purger.abort();
        served
    }
}

/// How often the broker connection is checked (and reopened when it dropped).
const BROKER_CHECK: Duration = Duration::from_secs(5);

/// Keeps the publisher's connection open and says in the log when RabbitMQ comes or
/// goes (and at start), so an operator does not learn it from a failed webhook.
async fn watch_broker(state: web::Data<AppState>) {
    let mut was_reachable: Option<bool> = None;
    loop {
        let result = state.publisher.ensure_connected().await;
        let reachable = result.is_ok();
        if was_reachable != Some(reachable) {
            match result {
                Ok(()) => {
                    tracing::info!("RabbitMQ is reachable: webhooks and poll-vcs queue polls")
                }
                Err(err) => tracing::warn!(
                    error = %err,
                    "RabbitMQ is unreachable: CRUD is served; webhooks and poll-vcs answer 503 and the schedule polls within one interval"
                ),
            }
            was_reachable = Some(reachable);
        }
        tokio::time::sleep(BROKER_CHECK).await;
    }
}

/// How often delivery ids older than a day are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(600);

async fn purge_deliveries(state: web::Data<AppState>) {
    loop {
        tokio::time::sleep(PURGE_EVERY).await;
        let purged = match state.pool.get().await {
            Ok(mut conn) => crate::webhooks::deliveries::purge(&mut conn)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match purged {
            Ok(purged) => tracing::debug!(purged, "old webhook delivery ids purged"),
            Err(err) => tracing::warn!(error = %err, "cannot purge old webhook delivery ids"),
        }
    }
}
