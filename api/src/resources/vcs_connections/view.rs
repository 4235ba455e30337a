use serde_json::{json, Value};
use terrapod_shared::db::models::VcsConnection;
use terrapod_shared::domain::Provider;

use crate::jsonapi::{relationship, timestamp};

/// The JSON:API resource. Credentials are never rendered: only whether one is stored.
pub fn render(connection: &VcsConnection) -> Value {
    let mut attributes = json!({
        "name": connection.name,
        "provider": connection.provider,
        "server-url": connection.server_url,
        "status": connection.status,
        "has-credentials": connection.encrypted_credential.is_some(),
        "created-at": timestamp(connection.created_at),
        "updated-at": timestamp(connection.updated_at),
    });
    if connection.provider == Provider::GitHub {
        let github = json!({
            "github-app-id": connection.github_app_id,
            "github-installation-id": connection.github_installation_id,
            "github-account-login": connection.github_account_login,
            "github-account-type": connection.github_account_type,
        });
        if let (Value::Object(attrs), Value::Object(extra)) = (&mut attributes, github) {
            attrs.extend(extra);
        }
    }
    json!({
        "id": connection.id,
        "type": "vcs-connections",
        "attributes": attributes,
        "relationships": {
            "organization": relationship("organizations", Some(&connection.organization_name)),
        },
        "links": { "self": format!("/api/v2/vcs-connections/{}", connection.id) },
    })
}
