//! The RabbitMQ consumer: one poll per message, acked once the poll is done. It
//! reconnects by itself; while the broker is away the schedule keeps polling.
//!
//! Message polls have their own share of the process's capacity (prefetch =
//! concurrency, and a pool share of their own), so a busy schedule never starves them.
//!
//! One webhook delivery becomes one message per workspace on the repository; those
//! polls share one cache (one set of provider calls, one archive download). A poll
//! uses a shared answer only if it was asked for after the poll's workspace was last
//! asked to poll (see `cache::Freshness`), so a later push is always seen.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
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
use tracing::Instrument;

use crate::cache::CycleCache;
use crate::poll::{poll_workspace, PollContext, PollOutcome, Trigger};

/// How long a message whose poll failed (the database is away) waits before it is
/// handed back: its redeliveries then span about half a minute, not milliseconds.
const REQUEUE_PAUSE: Duration = Duration::from_secs(5);

/// Reconnection delays: 1 s doubling to 30 s, started over once consuming works.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build()
}

/// Runs a session (`start` with the shutdown signal) until one ends cleanly (at
/// shutdown), starting another after each failure with backoff; the backoff starts
/// over after a session that got going (the `bool` it returns). Every broker client
/// of the poller runs this way.
pub async fn keep_running<E, F, S>(
    mut shutdown: watch::Receiver<bool>,
    stopped: &'static str,
    mut start: S,
) where
    E: std::fmt::Display,
    F: std::future::Future<Output = (Result<(), E>, bool)>,
    S: FnMut(watch::Receiver<bool>) -> F,
{
    let mut delays = reconnect_delays();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (result, got_going) = start(shutdown.clone()).await;
        match result {
            Ok(()) => return,
            Err(err) => {
                if got_going {
                    delays = reconnect_delays();
                }
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "{stopped}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

pub async fn run_consumer(ctx: Arc<PollContext>, shutdown: watch::Receiver<bool>) {
    keep_running(
        shutdown,
        "RabbitMQ consumer stopped; reconnecting",
        |mut shutdown| {
            let ctx = ctx.clone();
            async move {
                let mut consuming = false;
                let result = consume(&ctx, &mut shutdown, &mut consuming).await;
                (result, consuming)
            }
        },
    )
    .await;
}

async fn consume(
    ctx: &Arc<PollContext>,
    shutdown: &mut watch::Receiver<bool>,
    consuming: &mut bool,
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
    *consuming = true;
    let mut in_flight = JoinSet::new();
    let caches = delivery_caches();
    let result = loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    let cache = match delivery.properties.message_id() {
                        Some(id) => caches.get_with(id.to_string(), Arc::default),
                        None => Arc::default(),
                    };
                    in_flight.spawn(async move { handle(&ctx, &cache, delivery).await });
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

/// The caches of recent webhook deliveries, by delivery id: a delivery's messages may
/// be taken over several seconds (more workspaces than the prefetch). Bounded: 200
/// deliveries, each forgotten 30 s after its last poll.
fn delivery_caches() -> moka::sync::Cache<String, Arc<CycleCache>> {
    moka::sync::Cache::builder()
        .max_capacity(200)
        .time_to_idle(Duration::from_secs(30))
        .build()
}

async fn handle(ctx: &PollContext, cache: &CycleCache, delivery: Delivery) {
    let message = serde_json::from_slice::<PollMessage>(&delivery.data)
        .ok()
        .and_then(|message| message.workspace().map(|id| (message.reason, id)));
    let delivery_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    let span = tracing::info_span!(
        "poll_message",
        amqp.delivery_tag = delivery.delivery_tag,
        delivery.id = delivery_id.as_deref(),
        workspace.id = tracing::field::Empty,
        reason = tracing::field::Empty,
    );
    let Some((reason, workspace)) = message else {
        span.in_scope(|| tracing::warn!("malformed poll message dead-lettered"));
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    span.record("workspace.id", workspace.as_str());
    span.record("reason", format!("{reason:?}").to_lowercase());
    async {
        match poll_workspace(ctx, cache, &workspace, Trigger::Message).await {
            Ok(outcome) => {
                if let PollOutcome::Polled(report) = outcome {
                    tracing::info!(runs_created = report.runs_created, "polled on request");
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(err) => {
                // Requeued after a pause (the database is away: an immediate redelivery
                // would fail too); the queue's delivery limit dead-letters it if this
                // persists, and the schedule polls the workspace when it is back.
                tracing::warn!(error = %err, "poll on request failed; requeued");
                tokio::time::sleep(REQUEUE_PAUSE).await;
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
            }
        }
    }
    .instrument(span)
    .await
}
