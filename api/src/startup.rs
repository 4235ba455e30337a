//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use secrecy::ExposeSecret;
use terrapod_shared::db::DbPool;
use terrapod_shared::queue::Publisher;
use terrapod_shared::Settings;

use crate::metrics::ApiMetrics;
use crate::routes;

pub struct AppState {
    pub pool: DbPool,
    pub settings: Arc<Settings>,
    pub metrics: ApiMetrics,
    /// Connects lazily and reconnects after a failure, so CRUD never waits for the broker.
    pub publisher: Publisher,
    pub token_cache: crate::auth::TokenCache,
}

pub struct Application {
    port: u16,
    server: Server,
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
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(crate::metrics::observe_requests))
                .configure(routes::configure)
        })
        .listen(listener)?
        .run();
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
