//! Shared plumbing of the comfaas services: how they connect to NATS, read
//! their layered configuration, create the JetStream resources they share,
//! read and write the function registry, parse requests and spell reply
//! headers.
//!
//! Architecture invariant: nothing here knows how a function runs or where
//! an invocation is placed. It is the NATS side of the house, reused by the
//! dispatcher, the executor, the CLI and the tests. Starting servers and
//! emulating networks is not its job: that is `comfaas-testbed`.

pub mod auth;
pub mod dlq;
pub mod logs;
pub mod metrics;
pub mod micro;
pub mod nats;
pub mod notices;
pub mod objects;
pub mod registry;
pub mod reply;
pub mod request;
pub mod resources;
pub mod secrets;
pub mod settings;
pub mod signals;
pub mod signing;

/// An error from NATS or JetStream, with what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct NatsError {
    /// What was being done (e.g. "open the functions bucket").
    pub context: String,
    /// The underlying error.
    #[source]
    pub source: async_nats::Error,
}

impl NatsError {
    /// Wraps `source` with `context`.
    pub fn new(context: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        Self {
            context: context.into(),
            source: source.into(),
        }
    }
}
