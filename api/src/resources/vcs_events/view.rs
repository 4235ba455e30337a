use serde_json::{json, Value};
use terrapod_shared::db::models::VcsEvent;

use crate::jsonapi::{relationship, timestamp};

pub fn render(event: &VcsEvent) -> Value {
    json!({
        "id": event.id.to_string(),
        "type": "vcs-events",
        "attributes": {
            "kind": event.kind,
            "message": event.message,
            "commit-sha": event.commit_sha,
            "pull-request-number": event.pull_request_number,
            "created-at": timestamp(event.created_at),
        },
        "relationships": {
            "run": relationship("runs", event.run_id.as_deref()),
        },
    })
}
