//! Readiness, as both programs report it on `/readyz`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::db::{self, DbPool};
use crate::queue;

/// Asks PostgreSQL and RabbitMQ (3 s each, side by side). Returns whether both
/// answered, and the body `{"status": "ready"|"unready", "checks": {...}}`.
pub async fn readiness(pool: &DbPool, amqp_url: &str) -> (bool, Value) {
    let (database, broker) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), db::ping(pool)),
        queue::check_broker(amqp_url, Duration::from_secs(3)),
    );
    let database_ok = database.unwrap_or(false);
    let checks = json!({
        "database": if database_ok { "ok" } else { "unreachable" },
        "rabbitmq": match &broker { Ok(()) => "ok".to_owned(), Err(why) => format!("unreachable: {why}") },
    });
    let ready = database_ok && broker.is_ok();
    let status = if ready { "ready" } else { "unready" };
    (ready, json!({"status": status, "checks": checks}))
}

/// Prometheus text exposition of `registry`.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .expect("text encoding cannot fail");
    String::from_utf8(buffer).expect("prometheus text is UTF-8")
}
