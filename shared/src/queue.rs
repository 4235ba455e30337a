//! RabbitMQ. The poll-message topology and publisher come with the poller and
//! webhooks; what both programs need now is to know whether the broker answers.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Opens and closes an AMQP connection within `timeout`; `Err` says why it failed,
/// without the URL (it may carry a password).
pub async fn check_broker(amqp_url: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .map_err(|err| err.to_string())?;
        let _ = connection.close(200, "readiness check".into()).await;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
}
