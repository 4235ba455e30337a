//! RabbitMQ: the "poll workspace X now" queue. Both programs declare the same
//! topology idempotently; the API publishes with publisher confirms, the poller
//! consumes with manual acks.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::ids::WorkspaceId;

/// The durable quorum queue of poll requests.
pub const POLL_QUEUE: &str = "terrapod.vcs.poll";
/// Messages that failed [`DELIVERY_LIMIT`] times go here, through this exchange.
pub const DEAD_LETTER_EXCHANGE: &str = "terrapod.vcs.poll.dlx";
pub const DEAD_LETTER_QUEUE: &str = "terrapod.vcs.poll.dead";
/// Deliveries of one message before it is dead-lettered.
pub const DELIVERY_LIMIT: i32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollReason {
    Webhook,
    Manual,
    Linked,
}

/// The only message type; a message of any other type is refused, not guessed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageType {
    #[serde(rename = "poll-workspace")]
    PollWorkspace,
}

/// `{"type":"poll-workspace","workspace_id":"ws-…","reason":"webhook|manual|linked"}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollMessage {
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub workspace_id: String,
    pub reason: PollReason,
}

impl PollMessage {
    pub fn new(workspace_id: &WorkspaceId, reason: PollReason) -> Self {
        PollMessage {
            kind: MessageType::PollWorkspace,
            workspace_id: workspace_id.to_string(),
            reason,
        }
    }

    /// The message's workspace, if its id is well-formed.
    pub fn workspace(&self) -> Option<WorkspaceId> {
        WorkspaceId::parse(&self.workspace_id).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ is unreachable: {0}")]
    Unreachable(String),
    #[error("RabbitMQ did not confirm the message")]
    NotConfirmed,
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
}

pub fn unreachable(err: lapin::Error) -> QueueError {
    QueueError::Unreachable(err.to_string())
}

pub async fn connect(amqp_url: &str, name: &str) -> Result<Connection, QueueError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url, properties)
        .await
        .map_err(unreachable)
}

/// Declares the exchange, queues and binding; safe to repeat from every process.
pub async fn declare_topology(channel: &Channel) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)?;
    channel
        .queue_declare(DEAD_LETTER_QUEUE.into(), durable, FieldTable::default())
        .await
        .map_err(unreachable)?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            POLL_QUEUE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)),
    );
    channel
        .queue_declare(POLL_QUEUE.into(), durable, arguments)
        .await
        .map_err(unreachable)?;
    Ok(())
}

/// The reporter's quorum queue of run events (bound to every `run.*` key).
pub const COMMIT_STATUS_QUEUE: &str = "terrapod.commit-status";
/// Events the reporter's queue keeps at most.
const COMMIT_STATUS_QUEUE_MAX: i32 = 100_000;

/// Declares the run-events topic exchange (the relay publishes to it).
pub async fn declare_run_events(channel: &Channel) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            crate::outbox::RUN_EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)
}

/// Declares the commit-status reporter's queue, bound to every run event. Only a
/// running reporter declares it, so nothing piles up where no reporter runs (what it
/// must report is kept in the database; events only wake it).
pub async fn declare_commit_status_queue(channel: &Channel) -> Result<(), QueueError> {
    declare_run_events(channel).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    // Events only wake reporters (what to report is in PostgreSQL): with no reporter
    // consuming, the oldest are dropped rather than piling up.
    arguments.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongInt(COMMIT_STATUS_QUEUE_MAX),
    );
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    channel
        .queue_declare(
            COMMIT_STATUS_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(unreachable)?;
    channel
        .queue_bind(
            COMMIT_STATUS_QUEUE.into(),
            crate::outbox::RUN_EVENTS_EXCHANGE.into(),
            "run.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)
}

/// Opens and closes an AMQP connection within `timeout`; `Err` says why it failed,
/// without the URL (it may carry a password).
pub async fn check_broker(amqp_url: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let connection = connect(amqp_url, "terrapod-readiness")
            .await
            .map_err(|e| e.to_string())?;
        let _ = connection.close(200, "readiness check".into()).await;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
}

/// Publishes poll messages over one lazily (re)connected confirm channel. A failed
/// publish drops the connection so the next one reconnects.
pub struct Publisher {
    amqp_url: String,
    name: String,
    timeout: Duration,
    state: Mutex<Option<(Connection, Channel)>>,
    /// The connection's state as last seen, for readers that must not wait while a
    /// connect or publish holds `state` (up to the timeout with a silent broker).
    last_seen_connected: std::sync::atomic::AtomicBool,
}

impl Publisher {
    pub fn new(amqp_url: &str, name: &str) -> Self {
        Publisher {
            amqp_url: amqp_url.to_owned(),
            name: name.to_owned(),
            timeout: Duration::from_secs(5),
            state: Mutex::new(None),
            last_seen_connected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), QueueError> {
        let connection = connect(&self.amqp_url, &self.name).await?;
        let channel = connection.create_channel().await.map_err(unreachable)?;
        declare_topology(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unreachable)?;
        Ok((connection, channel))
    }

    /// Publishes `message` persistently and waits for the broker's confirm. A webhook's
    /// delivery id travels as the AMQP `message_id`, so the poll's logs name it.
    pub async fn publish(
        &self,
        message: &PollMessage,
        message_id: Option<&str>,
    ) -> Result<(), QueueError> {
        let payload = serde_json::to_vec(message).expect("poll messages serialise");
        let attempt = async {
            let mut state = self.state.lock().await;
            let usable = state.as_ref().is_some_and(|(connection, channel)| {
                connection.status().connected() && channel.status().connected()
            });
            if !usable {
                *state = Some(self.open().await?);
            }
            let (_, channel) = state.as_ref().expect("opened above");
            let result = async {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        POLL_QUEUE.into(),
                        BasicPublishOptions::default(),
                        &payload,
                        message_id
                            .map_or_else(BasicProperties::default, |id| {
                                BasicProperties::default().with_message_id(id.into())
                            })
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into()),
                    )
                    .await
                    .map_err(unreachable)?
                    .await
                    .map_err(unreachable)?;
                if confirm.is_ack() {
                    Ok(())
                } else {
                    Err(QueueError::NotConfirmed)
                }
            }
            .await;
            if result.is_err() {
                *state = None;
            }
            result
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be wedged; start over next time.
                if let Ok(mut state) = self.state.try_lock() {
                    *state = None;
                }
                Err(QueueError::Timeout(self.timeout))
            }
        };
        self.last_seen_connected
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// True when a confirm channel is open. Never waits: while a connect or publish
    /// is under way, the state last seen is the answer.
    pub fn is_connected(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.state.try_lock() {
            Ok(state) => {
                let connected = state.as_ref().is_some_and(|(connection, channel)| {
                    connection.status().connected() && channel.status().connected()
                });
                self.last_seen_connected.store(connected, Ordering::Relaxed);
                connected
            }
            Err(_) => self.last_seen_connected.load(Ordering::Relaxed),
        }
    }

    /// Opens the confirm channel if it is not open (within the publish timeout).
    pub async fn ensure_connected(&self) -> Result<(), QueueError> {
        let attempt = async {
            let mut state = self.state.lock().await;
            let usable = state.as_ref().is_some_and(|(connection, channel)| {
                connection.status().connected() && channel.status().connected()
            });
            if !usable {
                *state = Some(self.open().await?);
            }
            Ok(())
        };
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(QueueError::Timeout(self.timeout)));
        self.last_seen_connected
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_messages_have_the_specified_wire_form() {
        let id = WorkspaceId::generate();
        let message = PollMessage::new(&id, PollReason::Webhook);
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "poll-workspace", "workspace_id": id.as_str(), "reason": "webhook"})
        );
        let parsed: PollMessage = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.workspace(), Some(id));
        assert!(serde_json::from_str::<PollMessage>(
            r#"{"type":"other","workspace_id":"ws-x","reason":"manual"}"#
        )
        .is_err());
    }
}
