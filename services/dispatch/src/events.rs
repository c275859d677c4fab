//! Device events: taken from the `COMFAAS_EVENTS` stream through a durable
//! consumer shared by all dispatchers, so an event published while no
//! dispatcher runs is handled when one starts. Each event ends with exactly
//! one result on `<prefix>.result.<fn>`, and, when that result is an error,
//! a dead letter on `<prefix>.dlq.<fn>` (stream `COMFAAS_DLQ`, kept for
//! `comfaas dlq`), before it is acknowledged.
//!
//! - A transient failure (no node now, node silent or gone, every node
//!   full) is retried with a growing delay (2 s doubling to 30 s) up to
//!   `max_event_deliveries` (default 20, about 8 minutes); a permanent one
//!   (unknown function, bad request, an input too large, a placement no
//!   known node can ever meet) is dead-lettered at once.
//! - An event older than `max_event_age_s` is dead-lettered, not run.
//! - Runs happen at least once, results exactly once: the invocation's id
//!   is the event's id (its stream sequence), the same on every delivery.
//!   Before placing a redelivery the dispatcher asks on
//!   `<prefix>.held.<id>` whether a node is running it or ran it recently,
//!   and sends it there, where it attaches to that run; the result is
//!   published with `Nats-Msg-Id`, which `COMFAAS_RESULTS` de-duplicates.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use comfaas_platform::request;
use comfaas_platform::resources;
use comfaas_platform::signals::Tasks;
use comfaas_schemas::names::{self, headers as h};
use comfaas_schemas::{now_unix_ms, InvocationError};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::place::{self, Answer, EventRun};
use crate::shared::Shared;

/// Longest wait between two tries of an event no node could take.
const MAX_RETRY_DELAY_S: u64 = 30;
/// How long a dispatcher waits for a node to say it holds a redelivered
/// event's run. Only redeliveries ask.
const HELD_WAIT: Duration = Duration::from_millis(300);
/// Delay before an event whose dead letter could not be written is tried
/// again.
const DLQ_RETRY: Duration = Duration::from_secs(5);

/// Creates (or opens) the events and dead-letter streams and the shared
/// durable consumer, brought to this dispatcher's limits.
pub async fn consumer(
    js: &jetstream::Context,
    shared: &Shared,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = resources::events_stream(js, &shared.subjects).await?;
    resources::dlq_stream(js, &shared.subjects).await?;
    let config = resources::events_consumer_config(
        shared.config.max_event_deliveries,
        shared.config.max_events_pending,
    );
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_consumer(names::DISPATCH_EVENTS_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("open consumer {}: {e}", names::DISPATCH_EVENTS_CONSUMER))?;
    let have = &consumer.cached_info().config;
    if have.max_ack_pending != config.max_ack_pending
        || have.max_deliver != config.max_deliver
        || have.ack_wait != config.ack_wait
    {
        // Creating it again with the same name updates what may change.
        match stream.create_consumer(config).await {
            Ok(updated) => consumer = updated,
            Err(e) => tracing::warn!(
                "consumer {} keeps its old limits: {e}",
                names::DISPATCH_EVENTS_CONSUMER
            ),
        }
    }
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
        let mut progress = tokio::time::interval(resources::EVENTS_ACK_WAIT / 3);
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

/// What the stream says about one delivery.
struct Delivery {
    id: String,
    delivered: i64,
    published_unix_ms: u64,
}

impl Delivery {
    fn of(message: &jetstream::Message) -> Option<Self> {
        let info = message.info().ok()?;
        let published_unix_ms =
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Some(Self {
            id: event_id(info.stream_sequence, info.domain),
            delivered: info.delivered,
            published_unix_ms,
        })
    }
}

/// The event's id: its sequence in the events stream, with the site's
/// JetStream domain when there is one. A subject token.
fn event_id(sequence: u64, domain: Option<&str>) -> String {
    match domain.filter(|d| !d.is_empty()) {
        Some(domain) => format!("{sequence}-{}", names::to_token(domain)),
        None => sequence.to_string(),
    }
}

async fn handle(
    shared: Arc<Shared>,
    message: jetstream::Message,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Some(delivery) = Delivery::of(&message) else {
        // Not from the stream (cannot happen on a JetStream consumer):
        // nothing to name it by; leave it to be redelivered.
        tracing::warn!(subject = %message.subject, "event without stream metadata");
        let _ = message.ack_with(AckKind::Nak(Some(DLQ_RETRY))).await;
        return;
    };
    let max_age_ms = shared.config.max_event_age_s.saturating_mul(1000);
    let age_ms = now_unix_ms().saturating_sub(delivery.published_unix_ms);
    let answer = if max_age_ms > 0 && age_ms > max_age_ms {
        let error = InvocationError::node_timeout(format!(
            "event {} was published {}s ago, more than max_event_age ({}s): dead-lettered, not run",
            delivery.id,
            age_ms / 1000,
            shared.config.max_event_age_s
        ));
        Answer {
            for_good: true,
            ..place::failed_answer(
                &shared,
                &message.subject,
                message.headers.as_ref(),
                &error,
                &delivery.id,
            )
        }
    } else {
        let answer = try_once(&shared, &message, &delivery, delivery.delivered > 1).await;
        // A node was tried and the answer is transient (it died, was cut
        // off, timed out): try once more at once, attaching to its run if
        // a node holds it, rather than count on a redelivery alone (after
        // a server restart, 2.9 was seen not to redeliver such events).
        if answer.is_transient() && !answer.tried.is_empty() {
            try_once(&shared, &message, &delivery, true).await
        } else {
            answer
        }
    };
    let last_try = delivery.delivered >= shared.config.max_event_deliveries;
    if answer.is_transient() && !last_try {
        let delay =
            Duration::from_secs((1u64 << delivery.delivered.clamp(1, 5)).min(MAX_RETRY_DELAY_S));
        tracing::info!(subject = %message.subject, delivered = delivery.delivered,
            "event will be retried in {delay:?}");
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!("cannot nak event: {e}");
        }
        if let Some(function) = &answer.function {
            shared.observe.retried(function);
        }
        return;
    }
    let mut answer = answer;
    answer.headers.insert(h::EVENT_ID, delivery.id.as_str());
    // Results are de-duplicated by `Nats-Msg-Id`: the device's, else the
    // event's id, so a redelivery's result is dropped by the stream.
    if request::msg_id(Some(&answer.headers)).is_none() {
        answer.headers.insert(h::MSG_ID, delivery.id.as_str());
    }
    // On the result subject an error says its code and why, never the
    // run's stderr (readable there by observers and MQTT devices).
    if let Some(body) = comfaas_platform::reply::result_error_body(&answer.headers) {
        answer.body = body;
    }
    if !place::publish_result(&shared, &answer).await {
        // Kept in its stream; the next delivery's result is de-duplicated
        // with this one should it have been stored after all.
        let _ = message.ack_with(AckKind::Nak(Some(DLQ_RETRY))).await;
        return;
    }
    if answer.error.is_some() {
        if let Err(e) = dead_letter(&shared, &message, &delivery, &answer).await {
            // The event stays in its stream until its dead letter is kept.
            tracing::warn!(event = %delivery.id, "cannot dead-letter event: {e}");
            shared.state.dlq_failed();
            let _ = message.ack_with(AckKind::Nak(Some(DLQ_RETRY))).await;
            return;
        }
    }
    if let Err(e) = message.double_ack().await {
        tracing::warn!(event = %delivery.id, "cannot ack event: {e}");
    }
}

/// One try of the event: asks first, when `ask_held`, which node holds its
/// run; keeps the event alive with progress acks while it runs.
async fn try_once(
    shared: &Shared,
    message: &jetstream::Message,
    delivery: &Delivery,
    ask_held: bool,
) -> Answer {
    let held_by = if ask_held {
        held_by(shared, &delivery.id).await
    } else {
        None
    };
    if held_by.is_some() {
        shared.state.attached();
    }
    let run = EventRun {
        id: delivery.id.clone(),
        held_by,
    };
    let work = place::execute(
        shared,
        &message.subject,
        message.headers.as_ref(),
        message.payload.clone(),
        None,
        Some(&run),
    );
    tokio::pin!(work);
    let mut progress = tokio::time::interval(resources::EVENTS_ACK_WAIT / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            answer = &mut work => break answer,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Asks the nodes whether one is running the event `id` or ran it
/// recently; that node's id, if one answers in time.
async fn held_by(shared: &Shared, id: &str) -> Option<String> {
    let asked = shared.client.send_request(
        shared.subjects.event_held(id),
        async_nats::Request::new().timeout(Some(HELD_WAIT)),
    );
    let answer = asked.await.ok()?;
    let node = std::str::from_utf8(&answer.payload).ok()?;
    names::is_token(node).then(|| node.to_owned())
}

/// Writes the event, its headers and why it failed to `<prefix>.dlq.<fn>`
/// and waits for the stream to keep it.
async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    delivery: &Delivery,
    answer: &Answer,
) -> Result<(), String> {
    let function =
        request::function_of(&shared.subjects, &message.subject).unwrap_or(names::UNKNOWN_FUNCTION);
    let mut headers = HeaderMap::new();
    if let Some(original) = message.headers.as_ref() {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            // The device's id is kept under a name of its own: as
            // `Nats-Msg-Id` it would de-duplicate the dead letters.
            let kept = if name.eq_ignore_ascii_case(h::MSG_ID) {
                h::DLQ_MSG_ID
            } else {
                name
            };
            for value in values {
                headers.append(kept, value.as_str());
            }
        }
    }
    let (code, reason) = comfaas_platform::reply::error_of(&answer.headers);
    headers.insert(h::MSG_ID, format!("dlq-{}", delivery.id).as_str());
    headers.insert(h::EVENT_ID, delivery.id.as_str());
    headers.insert(h::DLQ_REASON, reason.as_str());
    headers.insert(h::DLQ_CODE, code.to_string().as_str());
    headers.insert(h::DLQ_DELIVERIES, delivery.delivered.to_string().as_str());
    headers.insert(h::DLQ_NODES, answer.tried.join(",").as_str());
    headers.insert(h::DLQ_AT, now_unix_ms().to_string().as_str());
    headers.insert(
        h::DLQ_PUBLISHED,
        delivery.published_unix_ms.to_string().as_str(),
    );
    headers.insert(h::DLQ_SUBJECT, message.subject.as_str());
    shared
        .js
        .publish_with_headers(
            shared.subjects.dlq(function),
            headers,
            message.payload.clone(),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    shared.state.dead_lettered();
    shared.observe.dead_lettered(function);
    tracing::info!(event = %delivery.id, function, code, "event dead-lettered: {reason}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_result_says_why_in_its_body() {
        let error = InvocationError::new(
            comfaas_schemas::ErrorCode::NotFound,
            "function `nope` is not deployed",
        );
        let headers =
            comfaas_platform::reply::error(&error, &comfaas_platform::reply::ReplyMeta::default());
        let body: serde_json::Value = serde_json::from_slice(
            &comfaas_platform::reply::result_error_body(&headers).expect("an error"),
        )
        .expect("JSON");
        assert_eq!(body["code"], 404);
        assert_eq!(body["status"], "error");
        assert_eq!(body["error"], "function `nope` is not deployed");
    }

    #[test]
    fn an_event_id_is_one_subject_token() {
        assert_eq!(event_id(42, None), "42");
        assert_eq!(event_id(42, Some("")), "42");
        assert_eq!(event_id(7, Some("edge")), "7-edge");
        assert_eq!(event_id(7, Some("a.b>*")), "7-a_b__");
    }
}
