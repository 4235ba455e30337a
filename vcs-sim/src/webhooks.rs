//! Delivering webhooks the way GitHub and GitLab sign them.

use ring::hmac;
use serde::Serialize;

use crate::ops::Event;
use crate::state::{Kind, WebhookTarget};

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: String,
    pub kind: Kind,
    pub event: String,
    pub url: String,
    /// HTTP status of the answer, or `None` when the target could not be reached.
    pub status: Option<u16>,
}

pub fn delivery_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("random");
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `sha256=<hex HMAC-SHA256 of body>`, GitHub's `X-Hub-Signature-256`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// Sends one event to one target; `id` is reused for redeliveries.
pub async fn deliver(
    client: &reqwest::Client,
    target: &WebhookTarget,
    event: &Event,
    id: &str,
) -> Delivery {
    let body = serde_json::to_vec(&event.payload).expect("JSON serialises");
    let mut request = client
        .post(&target.url)
        .header("Content-Type", "application/json")
        .timeout(std::time::Duration::from_secs(10));
    request = match target.kind {
        Kind::Github => request
            .header("X-GitHub-Event", event.name)
            .header("X-GitHub-Delivery", id)
            .header("X-GitHub-Hook-ID", "1")
            .header("User-Agent", "GitHub-Hookshot/sim")
            .header(
                "X-Hub-Signature-256",
                github_signature(&target.secret, &body),
            ),
        Kind::Gitlab => request
            .header("X-Gitlab-Event", event.name)
            .header("X-Gitlab-Event-UUID", id)
            .header("X-Gitlab-Token", &target.secret)
            .header("User-Agent", "GitLab/sim"),
    };
    let status = request
        .body(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    Delivery {
        id: id.to_owned(),
        kind: target.kind,
        event: event.name.to_owned(),
        url: target.url.clone(),
        status,
    }
}

/// Sends every event to every target registered for its provider.
pub async fn deliver_all(
    client: &reqwest::Client,
    targets: &[WebhookTarget],
    events: &[Event],
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for event in events {
        for target in targets.iter().filter(|t| t.kind == event.kind) {
            deliveries.push(deliver(client, target, event, &delivery_id()).await);
        }
    }
    deliveries
}
