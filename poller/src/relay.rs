//! The run-event relay: publishes the outbox (`terrapod_shared::outbox`) to the topic
//! exchange `terrapod.run-events` and deletes events only after RabbitMQ confirmed
//! them. One relay publishes at a time across all replicas (a transaction-scoped
//! advisory lock), so events leave in commit order and a run's events in `sequence`
//! order. A replica killed mid-batch leaves its events in the outbox for the next
//! relay: they may be delivered twice, never lost. While the broker is away events
//! wait in PostgreSQL. PostgreSQL notifies the relay of each committed event (a
//! trigger on the outbox), so an idle relay costs a query a second, not a poll loop.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use secrecy::ExposeSecret;
use terrapod_shared::outbox::{self, RunEvent, RUN_EVENTS_EXCHANGE};
use terrapod_shared::queue::{self, unreachable, QueueError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::consumer::keep_running;
use crate::poll::PollContext;

/// Events published per transaction at most.
const BATCH: i64 = 500;
/// How often an idle relay looks for events without being told (PostgreSQL notifies
/// it of each committed event; this covers a lost notification).
const IDLE_PAUSE: Duration = Duration::from_secs(1);
/// How often the outbox backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// The channel the outbox's insert trigger notifies.
const CHANNEL: &str = "terrapod_run_events";
/// A batch's publishes and confirms end within this, or the batch is retried.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("database: {0}")]
    Pool(#[from] terrapod_shared::db::PoolError),
    #[error("cannot listen for run events: {0}")]
    Listen(String),
}

/// Relays until `shutdown`; reconnects to the broker with backoff.
pub async fn run_relay(ctx: Arc<PollContext>, shutdown: watch::Receiver<bool>) {
    keep_running(
        shutdown,
        "run-event relay stopped; events wait in the outbox",
        |mut shutdown| {
            let ctx = ctx.clone();
            async move {
                let mut relayed_any = false;
                let result = relay(&ctx, &mut shutdown, &mut relayed_any).await;
                (result, relayed_any)
            }
        },
    )
    .await;
}

async fn relay(
    ctx: &PollContext,
    shutdown: &mut watch::Receiver<bool>,
    relayed_any: &mut bool,
) -> Result<(), RelayError> {
    // A connection of its own, outside the pool, that hears of every committed event.
    let mut listener = AsyncPgConnection::establish(ctx.settings.database_url.expose_secret())
        .await
        .map_err(|err| RelayError::Listen(err.to_string()))?;
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut listener)
        .await?;
    let connection = queue::connect(
        ctx.settings.amqp_url.expose_secret(),
        "terrapod-poller-relay",
    )
    .await?;
    let result = async {
        let channel = connection.create_channel().await.map_err(unreachable)?;
        queue::declare_run_events(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unreachable)?;
        let mut backlog_at: Option<Instant> = None;
        let mut notifications = std::pin::pin!(listener.notifications_stream());
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            // Notifications that arrived while a batch was sent are covered by the next.
            while let Some(Some(notified)) = notifications.next().now_or_never() {
                notified?;
            }
            let relayed = relay_batch(ctx, &channel).await?;
            if relayed > 0 {
                *relayed_any = true;
                ctx.metrics.run_events_published.inc_by(relayed as u64);
                continue;
            }
            if backlog_at.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                backlog_at = Some(Instant::now());
                let mut conn = ctx.events_pool.get().await?;
                ctx.metrics
                    .run_events_backlog
                    .set(outbox::backlog(&mut conn).await?);
            }
            tokio::select! {
                notified = notifications.next() => match notified {
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.into()),
                    None => return Err(RelayError::Listen("the listening connection closed".into())),
                },
                _ = tokio::time::sleep(IDLE_PAUSE) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    .await;
    // Closed either way: a connection dropped after an error would linger.
    let _ = connection.close(200, "relay stopping".into()).await;
    result
}

/// Publishes one batch of waiting events and deletes them, in one transaction that
/// holds the relay lock. Returns how many were relayed (0 when another replica's
/// relay holds the lock or nothing waits).
pub async fn relay_batch(ctx: &PollContext, channel: &Channel) -> Result<usize, RelayError> {
    let mut conn = ctx.events_pool.get().await?;
    conn.transaction::<_, RelayError, _>(async |conn| {
        if !outbox::try_lock_relay(conn).await? {
            return Ok(0);
        }
        let rows = outbox::waiting(conn, BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        tokio::time::timeout(CONFIRM_TIMEOUT, publish_all(channel, &rows))
            .await
            .map_err(|_| QueueError::Timeout(CONFIRM_TIMEOUT))??;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        outbox::delete(conn, &ids).await?;
        Ok(rows.len())
    })
    .await
}

/// Publishes every event persistently, then waits for all the confirms.
async fn publish_all(channel: &Channel, rows: &[outbox::OutboxRow]) -> Result<(), QueueError> {
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let event = RunEvent::from(row);
        let payload = serde_json::to_vec(&event).expect("run events serialise");
        let properties = BasicProperties::default()
            .with_message_id(event.message_id().into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                RUN_EVENTS_EXCHANGE.into(),
                event.routing_key().into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(unreachable)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        if !confirm.await.map_err(unreachable)?.is_ack() {
            return Err(QueueError::NotConfirmed);
        }
    }
    Ok(())
}
