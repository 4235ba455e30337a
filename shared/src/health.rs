//! Readiness, as both programs report it on `/readyz`, and the metrics page.
//!
//! PostgreSQL is what serving needs: without it, `unready` (503). A broker outage alone
//! is `degraded` (200): CRUD and the schedule keep working, so a load balancer must not
//! take the program out. Answers are cached for about a second, so a flood of
//! `/readyz` calls costs the database and the broker nothing.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::db::{self, DbPool};

/// How long a readiness answer is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// What `/readyz` answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Readiness {
    /// False only when PostgreSQL does not answer: then 503.
    pub ready: bool,
    /// `{"status": "ready"|"degraded"|"unready", "checks": {...}}`
    pub body: Value,
}

/// Readiness answers, computed at most once per [`READINESS_TTL`]; concurrent callers
/// wait for the one computation under way.
#[derive(Default)]
pub struct ReadinessCache {
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl ReadinessCache {
    /// The cached answer, or a fresh one from PostgreSQL and `broker` (which says why
    /// RabbitMQ is unusable, if it is).
    pub async fn readiness<F>(&self, pool: &DbPool, broker: F) -> Readiness
    where
        F: Future<Output = Result<(), String>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, readiness)) = last.as_ref() {
            if at.elapsed() < READINESS_TTL {
                return readiness.clone();
            }
        }
        let readiness = check(pool, broker).await;
        *last = Some((Instant::now(), readiness.clone()));
        readiness
    }
}

/// Asks PostgreSQL (3 s at most) and the broker side by side.
async fn check<F>(pool: &DbPool, broker: F) -> Readiness
where
    F: Future<Output = Result<(), String>>,
{
    let (database, broker) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), db::ping(pool)),
        broker,
    );
    let database_ok = database.unwrap_or(false);
    let status = match (database_ok, broker.is_ok()) {
        (false, _) => "unready",
        (true, false) => "degraded",
        (true, true) => "ready",
    };
    let checks = json!({
        "database": if database_ok { "ok" } else { "unreachable" },
        "rabbitmq": match &broker { Ok(()) => "ok".to_owned(), Err(why) => format!("unreachable: {why}") },
    });
    Readiness {
        ready: database_ok,
        body: json!({"status": status, "checks": checks}),
    }
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
