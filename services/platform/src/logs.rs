//! Reading function logs from `COMFAAS_LOGS` (`comfaas logs` and tests):
//! an ordered consumer of the stream, filtered to one function's subject
//! (and one node's, when asked), from a start time or the beginning, read
//! until caught up or followed. Each message is one piece of one run's
//! stderr, named by its headers (invocation id, function, version, node,
//! event id); the invocation id filter is applied here, since the id is
//! not in the subject.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_schemas::names::{self, headers as h, Subjects};
use futures::StreamExt;

use crate::NatsError;

/// Which logs to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// The function.
    pub function: String,
    /// Only this node's runs.
    pub node: Option<String>,
    /// Only this invocation's.
    pub invocation_id: Option<String>,
    /// Only what was published this long ago or later.
    pub since: Option<Duration>,
}

/// One piece of one run's log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// When the server took it.
    pub time: SystemTime,
    /// The node the run was on.
    pub node: String,
    /// The function.
    pub function: String,
    /// Its version.
    pub version: String,
    /// The invocation's id.
    pub invocation_id: String,
    /// The event's id, for an event's run.
    pub event_id: Option<String>,
    /// What the run wrote (lines; a long line may be cut across records).
    pub text: Bytes,
}

/// Why logs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The stream is not there: no dispatcher created it yet.
    #[error("there is no {stream} stream on this site (a dispatcher creates it; is one running?)")]
    NoStream {
        /// The stream's name.
        stream: &'static str,
    },
    /// A name given is not one subject token.
    #[error("{what} `{value}` is not a valid name (letters, digits, `-`, `_`)")]
    BadName {
        /// What it names.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Talking to the server failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// A reader of the logs `filter` selects.
pub struct LogReader {
    messages: consumer::push::Ordered,
    filter: LogFilter,
    /// Messages left when the reader started; 0: nothing to read.
    pending: u64,
}

impl LogReader {
    /// Opens a reader of the logs `filter` selects on `js`'s site.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        filter: LogFilter,
    ) -> Result<Self, LogsError> {
        comfaas_schemas::validate_function_name(&filter.function).map_err(|_| {
            LogsError::BadName {
                what: "function",
                value: filter.function.clone(),
            }
        })?;
        if let Some(node) = filter.node.as_deref().filter(|n| !names::is_token(n)) {
            return Err(LogsError::BadName {
                what: "node",
                value: node.to_owned(),
            });
        }
        let stream = match js.get_stream(names::LOGS_STREAM).await {
            Ok(stream) => stream,
            Err(e)
                if crate::resources::jetstream_code(&e)
                    == Some(jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Err(LogsError::NoStream {
                    stream: names::LOGS_STREAM,
                })
            }
            Err(e) => return Err(NatsError::new(format!("open {}", names::LOGS_STREAM), e).into()),
        };
        let deliver_policy = match filter.since {
            None => consumer::DeliverPolicy::All,
            Some(since) => {
                let start = SystemTime::now()
                    .checked_sub(since)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let nanos = start
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128);
                let start_time = async_nats::datetime::from_nanos(nanos)
                    .map_err(|e| NatsError::new("compute the start time", e))?;
                consumer::DeliverPolicy::ByStartTime { start_time }
            }
        };
        let node = filter.node.as_deref().unwrap_or("*");
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                filter_subject: subjects.log(&filter.function, node),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::new(format!("read {}", names::LOGS_STREAM), e))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| NatsError::new(format!("read {}", names::LOGS_STREAM), e))?;
        Ok(Self {
            messages,
            filter,
            pending,
        })
    }

    /// The next record the filter selects: `None` once caught up with
    /// what the stream held, unless `follow`, which waits for new ones.
    pub async fn next(&mut self, follow: bool) -> Result<Option<LogRecord>, LogsError> {
        loop {
            if !follow && self.pending == 0 {
                return Ok(None);
            }
            let Some(message) = self.messages.next().await else {
                return Ok(None);
            };
            let message =
                message.map_err(|e| NatsError::new(format!("read {}", names::LOGS_STREAM), e))?;
            let info = message
                .info()
                .map_err(|e| NatsError::new("read a log's metadata", e))?;
            let published = info.published;
            self.pending = info.pending;
            let record = record(
                message.message.headers.as_ref(),
                published,
                &message.payload,
            );
            let wanted = self
                .filter
                .invocation_id
                .as_deref()
                .is_none_or(|id| id == record.invocation_id);
            if wanted {
                return Ok(Some(record));
            }
        }
    }
}

fn record(
    headers: Option<&HeaderMap>,
    published: async_nats::datetime::DateTime,
    payload: &Bytes,
) -> LogRecord {
    let get = |name: &str| headers.and_then(|hm| crate::reply::get(hm, name));
    let nanos = u64::try_from(published.unix_timestamp_nanos()).unwrap_or(0);
    LogRecord {
        time: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
        node: get(h::NODE).unwrap_or_default(),
        function: get(h::FUNCTION).unwrap_or_default(),
        version: get(h::VERSION).unwrap_or_default(),
        invocation_id: get(h::INVOCATION_ID).unwrap_or_default(),
        event_id: get(h::EVENT_ID),
        text: payload.clone(),
    }
}
