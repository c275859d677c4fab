//! The dead-letter queue, `COMFAAS_DLQ`: events that ended without a
//! successful run, as dispatchers wrote them (`<prefix>.dlq.<fn>`, the
//! event's payload and headers plus `Comfaas-Dlq-*`). Listing, reading,
//! replaying (publishing the event again on its events subject, then
//! removing the dead letter) and purging, for `comfaas dlq` and tests.

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_schemas::names::{self, headers as h, Subjects};

use crate::NatsError;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in `COMFAAS_DLQ`: what `show` and `replay` take.
    pub seq: u64,
    /// The function it was for.
    pub function: String,
    /// The event's payload.
    pub payload: Bytes,
    /// The event's headers and the `Comfaas-Dlq-*` ones.
    pub headers: HeaderMap,
}

impl DeadLetter {
    /// A header's value, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.as_str()).unwrap_or("")
    }
}

/// What `replay` did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The dead letter's sequence.
    pub seq: u64,
    /// The events subject it went to.
    pub subject: String,
    /// Its new sequence in `COMFAAS_EVENTS`, `None` when the stream
    /// dropped it as a duplicate of a recent `Nats-Msg-Id`.
    pub event_seq: Option<u64>,
}

/// The `Nats-Msg-Id` a replay of the dead letter `seq` of an event the
/// device called `original` gets: `<original>-replay-<seq>`.
pub fn replay_msg_id(original: &str, seq: u64) -> String {
    format!("{original}-replay-{seq}")
}

/// The dead-letter queue of one site.
pub struct Dlq {
    stream: stream::Stream,
    js: jetstream::Context,
    subjects: Subjects,
}

impl Dlq {
    /// Opens (or creates) the queue.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, NatsError> {
        let stream = crate::resources::dlq_stream(js, subjects).await?;
        Ok(Self {
            stream,
            js: js.clone(),
            subjects: subjects.clone(),
        })
    }

    /// Dead letters, oldest first, of `function` (every function when
    /// `None`), at most `limit`.
    pub async fn list(
        &mut self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, NatsError> {
        let state = self
            .stream
            .info()
            .await
            .map_err(|e| NatsError::new("read the dead-letter queue", e))?
            .state
            .clone();
        let mut letters = Vec::new();
        if state.messages == 0 {
            return Ok(letters);
        }
        for seq in state.first_sequence..=state.last_sequence {
            if letters.len() >= limit {
                break;
            }
            // Deleted (replayed) ones leave gaps.
            let Ok(letter) = self.get(seq).await else {
                continue;
            };
            if function.is_none_or(|f| f == letter.function) {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    /// The dead letter `seq`.
    pub async fn get(&self, seq: u64) -> Result<DeadLetter, NatsError> {
        let message = self
            .stream
            .get_raw_message(seq)
            .await
            .map_err(|e| NatsError::new(format!("dead letter {seq}"), e))?;
        let function = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(DeadLetter {
            seq,
            function,
            payload: message.payload,
            headers: message.headers,
        })
    }

    /// Publishes the dead letter `seq` again as the event it was (its
    /// payload, its own headers, the device's `Nats-Msg-Id` marked as a
    /// replay, see [`replay_msg_id`]) and removes it from the queue once
    /// the events stream has it.
    pub async fn replay(&self, seq: u64) -> Result<Replayed, NatsError> {
        let letter = self.get(seq).await?;
        // The subject it names is only trusted when it is an events
        // subject of this site; else the function's events subject.
        let named = letter.header(h::DLQ_SUBJECT);
        let subject = match self.subjects.function_of(named) {
            Some(function) if named == self.subjects.event(function) => named.to_owned(),
            _ => self.subjects.event(&letter.function),
        };
        let mut headers = HeaderMap::new();
        // The device's id with the replay's mark: the original alone would
        // be dropped by the events stream's de-duplication window.
        let msg_id = letter.header(h::DLQ_MSG_ID);
        if !msg_id.is_empty() {
            headers.insert(h::MSG_ID, replay_msg_id(msg_id, seq).as_str());
        }
        for (name, values) in letter.headers.iter() {
            let name: &str = name.as_ref();
            let original = if name.starts_with("Comfaas-Dlq-")
                || name.eq_ignore_ascii_case(h::MSG_ID)
                || name.eq_ignore_ascii_case(h::EVENT_ID)
            {
                None
            } else {
                Some(name)
            };
            if let Some(original) = original {
                for value in values {
                    headers.append(original, value.as_str());
                }
            }
        }
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, letter.payload.clone())
            .await
            .map_err(|e| NatsError::new(format!("replay dead letter {seq}"), e))?
            .await
            .map_err(|e| NatsError::new(format!("replay dead letter {seq}"), e))?;
        self.stream
            .delete_message(seq)
            .await
            .map_err(|e| NatsError::new(format!("remove replayed dead letter {seq}"), e))?;
        Ok(Replayed {
            seq,
            subject,
            event_seq: (!ack.duplicate).then_some(ack.sequence),
        })
    }

    /// Removes every dead letter of `function` (all when `None`); how many.
    pub async fn purge(&self, function: Option<&str>) -> Result<u64, NatsError> {
        let purge = self.stream.purge();
        let purged = match function {
            Some(function) => purge.filter(self.subjects.dlq(function)).await,
            None => purge.await,
        };
        purged
            .map(|p| p.purged)
            .map_err(|e| NatsError::new(format!("purge {}", names::DLQ_STREAM), e))
    }
}
