//! Device events: taken from the `COMFAAS_EVENTS` stream through a durable
//! consumer shared by all dispatchers, so an event published while no
//! dispatcher runs is handled when one starts. Each event is acknowledged
//! once its result is published; a transient failure (no node, node
//! silent, every node full) is retried with a growing delay (2 s doubling
//! to 30 s) up to `max_event_deliveries` (default 20, about 8 minutes),
//! then answered with an error result.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use comfaas_platform::signals::Tasks;
use comfaas_schemas::names;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::place;
use crate::shared::Shared;

/// How long the server waits for an ack before redelivering. Long runs
/// keep their event with progress acks every third of this.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Longest wait between two tries of an event no node could take.
const MAX_RETRY_DELAY_S: u64 = 30;

/// Creates (or opens) the stream and the shared durable consumer.
pub async fn consumer(
    js: &jetstream::Context,
    shared: &Shared,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = comfaas_platform::resources::events_stream(js, &shared.subjects).await?;
    let consumer = stream
        .get_or_create_consumer(
            names::DISPATCH_EVENTS_CONSUMER,
            pull::Config {
                durable_name: Some(names::DISPATCH_EVENTS_CONSUMER.to_owned()),
                description: Some("comfaas dispatchers".to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: shared.config.max_event_deliveries,
                max_ack_pending: shared.config.max_concurrent as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("create consumer {}: {e}", names::DISPATCH_EVENTS_CONSUMER))?;
    Ok(consumer)
}

/// Handles events until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    shutdown: CancellationToken,
) {
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("cannot consume events: {e}");
            return;
        }
    };
    let mut running = Tasks::new("event");
    while let Some(message) = shutdown
        .run_until_cancelled(messages.next())
        .await
        .flatten()
    {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("events: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // At capacity: keep the event alive while it waits for a permit,
        // and give up waiting at shutdown (it is redelivered to another
        // dispatcher).
        let mut progress = tokio::time::interval(ACK_WAIT / 3);
        progress.tick().await;
        let permit = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                permit = shared.permits.clone().acquire_owned() => break permit.ok(),
            }
        };
        let Some(permit) = permit else { break };
        running.spawn(handle(shared.clone(), message, permit));
    }
    running.wait().await;
}

async fn handle(
    shared: Arc<Shared>,
    message: jetstream::Message,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let work = place::execute(
        &shared,
        &message.subject,
        message.headers.as_ref(),
        message.payload.clone(),
        None,
    );
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    let answer = loop {
        tokio::select! {
            answer = &mut work => break answer,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    let last_try = delivered >= shared.config.max_event_deliveries;
    if answer.is_transient() && !last_try {
        let delay = Duration::from_secs((1u64 << delivered.clamp(1, 5)).min(MAX_RETRY_DELAY_S));
        tracing::info!(subject = %message.subject, delivered, "event will be retried in {delay:?}");
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!("cannot nak event: {e}");
        }
        return;
    }
    place::publish_result(&shared, &answer).await;
    if let Err(e) = message.ack().await {
        tracing::warn!("cannot ack event: {e}");
    }
}
