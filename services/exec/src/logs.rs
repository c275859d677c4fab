//! Function logs: what each run wrote to stderr (already bounded by the
//! runtime's capture) is published to `<prefix>.log.<fn>.<node>`, where
//! the stream `COMFAAS_LOGS` keeps it, in messages cut at line ends under
//! the server's max payload, each with the invocation's id, function,
//! version and node (and event id) in headers.
//!
//! Publishing is off the reply path: a run's log is handed to a bounded
//! queue after its reply left, and one task publishes from it. When the
//! queue is full the log is dropped and counted, never waited for, so a
//! slow server or a chatty function cannot slow the runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_schemas::names::{headers as h, Subjects};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest log message body; smaller when the server's max payload is.
const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// One run's log, waiting to be published.
#[derive(Debug, Clone)]
pub struct RunLog {
    /// The function.
    pub function: String,
    /// Its version.
    pub version: String,
    /// The invocation's id.
    pub invocation_id: String,
    /// The event's id, when the run was an event's.
    pub event_id: Option<String>,
    /// What it wrote, bounded, with a truncation line where bytes were dropped.
    pub text: Vec<u8>,
}

/// The queue runs hand their logs to.
#[derive(Clone)]
pub struct LogQueue {
    sender: mpsc::Sender<RunLog>,
    dropped: Arc<AtomicU64>,
}

impl LogQueue {
    /// A queue of `capacity` runs' logs and the task publishing them as
    /// node `node` with `client`, in messages of at most `max_payload`
    /// bytes (less room for headers), until `stop` and the queue is empty.
    pub fn start(
        client: async_nats::Client,
        subjects: Subjects,
        node: String,
        capacity: usize,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let chunk = chunk_bytes(client.max_payload());
        let task = publish_logs(client, subjects, node, chunk, receiver, stop);
        (
            Self {
                sender,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        )
    }

    /// Queues `log` for publishing, or drops it when the queue is full.
    pub fn send(&self, log: RunLog) {
        if log.text.is_empty() {
            return;
        }
        if self.sender.try_send(log).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Once per power of two: a flood warns a few times, not per run.
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "function logs dropped: their queue is full");
            }
        }
    }
}

/// The body size of log messages for a server taking `max_payload` bytes.
fn chunk_bytes(max_payload: usize) -> usize {
    // Headers (ids, names) and protocol framing need some room.
    max_payload
        .saturating_sub(4096)
        .clamp(1024, MAX_CHUNK_BYTES)
}

async fn publish_logs(
    client: async_nats::Client,
    subjects: Subjects,
    node: String,
    chunk: usize,
    mut receiver: mpsc::Receiver<RunLog>,
    stop: CancellationToken,
) {
    loop {
        let log = tokio::select! {
            log = receiver.recv() => log,
            // At shutdown what is queued still goes, then the task ends.
            () = stop.cancelled() => {
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(log) = log else { break };
        let subject = subjects.log(&log.function, &node);
        let mut headers = HeaderMap::new();
        headers.insert(h::INVOCATION_ID, log.invocation_id.as_str());
        headers.insert(h::FUNCTION, log.function.as_str());
        headers.insert(h::VERSION, log.version.as_str());
        headers.insert(h::NODE, node.as_str());
        if let Some(event) = &log.event_id {
            headers.insert(h::EVENT_ID, event.as_str());
        }
        let text = Bytes::from(log.text);
        for (start, end) in chunks(&text, chunk) {
            if let Err(e) = client
                .publish_with_headers(subject.clone(), headers.clone(), text.slice(start..end))
                .await
            {
                tracing::debug!("cannot publish a log to {subject}: {e}");
                break;
            }
        }
    }
}

/// Cuts `text` into ranges of at most `max` bytes, each ending at a line
/// end when the line fits (a longer line is cut where the range is full).
pub fn chunks(text: &[u8], max: usize) -> Vec<(usize, usize)> {
    let max = max.max(1);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = (start + max).min(text.len());
        let cut = if end == text.len() {
            end
        } else {
            text[start..end]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(end, |i| start + i + 1)
        };
        ranges.push((start, cut));
        start = cut;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize, expect: &[&str]) {
        let got: Vec<&str> = chunks(text.as_bytes(), max)
            .into_iter()
            .map(|(s, e)| &text[s..e])
            .collect();
        assert_eq!(got, expect, "{text:?} in chunks of {max}");
    }

    #[test]
    fn logs_are_cut_at_line_ends_under_the_limit() {
        check("", 10, &[]);
        check("one\n", 10, &["one\n"]);
        check("one\ntwo\nthree\n", 10, &["one\ntwo\n", "three\n"]);
        check("one\ntwo\nthree", 8, &["one\ntwo\n", "three"]);
        check(
            "a-very-long-line\nx\n",
            5,
            &["a-ver", "y-lon", "g-lin", "e\nx\n"],
        );
        check("abc", 1, &["a", "b", "c"]);
    }

    #[test]
    fn chunks_fit_the_server() {
        assert_eq!(chunk_bytes(1 << 20), MAX_CHUNK_BYTES);
        assert_eq!(chunk_bytes(8192), 4096);
        assert_eq!(chunk_bytes(100), 1024);
    }
}
