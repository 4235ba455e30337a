//! The RabbitMQ consumer: one poll per message, acked once the poll is done. It
//! reconnects by itself; while the broker is away the schedule keeps polling.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use terrapod_shared::queue::{self, PollMessage, QueueError, POLL_QUEUE};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::CycleCache;
use crate::poll::{poll_workspace, PollContext, PollOutcome, Trigger};

pub async fn run_consumer(ctx: Arc<PollContext>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match consume(&ctx, &mut shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ consumer stopped; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn consume(
    ctx: &Arc<PollContext>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), QueueError> {
    let unreachable = |err: lapin::Error| QueueError::Unreachable(err.to_string());
    let connection =
        queue::connect(ctx.settings.amqp_url.expose_secret(), "terrapod-poller").await?;
    let channel = connection.create_channel().await.map_err(unreachable)?;
    queue::declare_topology(&channel).await?;
    let prefetch = u16::try_from(ctx.settings.poller_concurrency.get()).unwrap_or(u16::MAX);
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(unreachable)?;
    let mut consumer = channel
        .basic_consume(
            POLL_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(unreachable)?;
    tracing::info!(queue = POLL_QUEUE, prefetch, "consuming poll messages");
    *backoff = Duration::from_secs(1);
    let mut in_flight = JoinSet::new();
    let result = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    in_flight.spawn(async move { handle(&ctx, delivery).await });
                }
                Some(Err(err)) => break Err(unreachable(err)),
                None => break Err(QueueError::Unreachable("the consumer was cancelled".into())),
            },
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = shutdown.changed() => break Ok(()),
        }
    };
    // Finish what was taken; unacked messages of a lost connection are redelivered.
    while in_flight.join_next().await.is_some() {}
    if result.is_ok() {
        let _ = channel.close(200, "shutting down".into()).await;
        let _ = connection.close(200, "shutting down".into()).await;
    }
    result
}

async fn handle(ctx: &PollContext, delivery: Delivery) {
    let message = serde_json::from_slice::<PollMessage>(&delivery.data)
        .ok()
        .and_then(|message| message.workspace().map(|id| (message.reason, id)));
    let Some((reason, workspace)) = message else {
        tracing::warn!("malformed poll message dead-lettered");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let cache = CycleCache::default();
    match poll_workspace(ctx, &cache, &workspace, Trigger::Message).await {
        Ok(outcome) => {
            if let PollOutcome::Polled { runs_created, .. } = outcome {
                tracing::info!(workspace.id = %workspace, ?reason, runs_created, "polled on request");
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(err) => {
            // Requeued; the queue's delivery limit dead-letters it if this persists.
            tracing::warn!(workspace.id = %workspace, error = %err, "poll on request failed; requeued");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
    }
}
