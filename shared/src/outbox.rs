//! Run events (SPEC section 9): written to `run_events_outbox` in the transaction that
//! creates or moves a run (`runs.rs`), taken from there by the relay, published to the
//! topic exchange `terrapod.run-events` and deleted only after RabbitMQ confirmed them.
//! The database stays the source of truth; the broker carries news.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::db::schema::run_events_outbox;
use crate::domain::RunStatus;

/// The topic exchange run events are published to (routing key `run.<status>`).
pub const RUN_EVENTS_EXCHANGE: &str = "terrapod.run-events";

/// One waiting event.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = run_events_outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub run_id: String,
    pub workspace_id: String,
    pub organization_name: String,
    pub status: RunStatus,
    pub previous_status: Option<RunStatus>,
    pub sequence: i64,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEventType {
    #[serde(rename = "run-event")]
    RunEvent,
}

/// `{"type":"run-event","run_id","workspace_id","organization","status",
/// "previous_status","at","sequence"}`: consumers order a run's events by `sequence`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    #[serde(rename = "type")]
    pub kind: RunEventType,
    pub run_id: String,
    pub workspace_id: String,
    pub organization: String,
    pub status: RunStatus,
    pub previous_status: Option<RunStatus>,
    pub at: String,
    pub sequence: i64,
}

impl RunEvent {
    pub fn routing_key(&self) -> String {
        format!("run.{}", self.status)
    }

    /// Names the event for consumers that deduplicate (delivery is at least once).
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.run_id, self.sequence)
    }
}

impl From<&OutboxRow> for RunEvent {
    fn from(row: &OutboxRow) -> Self {
        RunEvent {
            kind: RunEventType::RunEvent,
            run_id: row.run_id.clone(),
            workspace_id: row.workspace_id.clone(),
            organization: row.organization_name.clone(),
            status: row.status,
            previous_status: row.previous_status,
            at: row.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            sequence: row.sequence,
        }
    }
}

/// The relay lock: one relay publishes at a time, whatever the number of replicas, so
/// events leave in the order they were committed.
const RELAY_LOCK: i64 = 0x7465_7272_6170_6f64; // "terrapod"

/// Takes the relay lock for the current transaction; false when another replica's
/// relay holds it.
pub async fn try_lock_relay(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    diesel::select(pg_try_advisory_xact_lock(RELAY_LOCK))
        .get_result(conn)
        .await
}

diesel::define_sql_function!(fn pg_try_advisory_xact_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool);

/// The oldest waiting events, at most `limit`.
pub async fn waiting(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<OutboxRow>> {
    run_events_outbox::table
        .order(run_events_outbox::id)
        .limit(limit)
        .select(OutboxRow::as_select())
        .load(conn)
        .await
}

/// Forgets delivered events.
pub async fn delete(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::delete(run_events_outbox::table.filter(run_events_outbox::id.eq_any(ids)))
        .execute(conn)
        .await
}

/// Events waiting, for the metrics and the health page.
pub async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    run_events_outbox::table.count().get_result(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_events_have_the_specified_wire_form() {
        let row = OutboxRow {
            id: 7,
            run_id: "run-abc".into(),
            workspace_id: "ws-def".into(),
            organization_name: "default".into(),
            status: RunStatus::Planning,
            previous_status: Some(RunStatus::PlanQueued),
            sequence: 3,
            at: DateTime::parse_from_rfc3339("2026-11-30T17:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let event = RunEvent::from(&row);
        assert_eq!(event.routing_key(), "run.planning");
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"type": "run-event", "run_id": "run-abc", "workspace_id": "ws-def",
                "organization": "default", "status": "planning", "previous_status": "plan_queued",
                "at": "2026-11-30T17:00:00Z", "sequence": 3})
        );
    }
}
