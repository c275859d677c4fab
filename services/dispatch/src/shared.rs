//! What the dispatcher's tasks share: its configuration, its connections,
//! its [`State`], and the permits that bound the invocations and events
//! it handles at once. Built once by `Dispatcher::connect`.

use std::sync::Arc;

use comfaas_platform::registry::Registry;
use comfaas_schemas::names::Subjects;
use tokio::sync::Semaphore;

use crate::config::DispatchConfig;
use crate::observe::Observe;
use crate::replies::Replies;
use crate::state::State;

/// The dispatcher's context, one per process, behind an `Arc`.
pub struct Shared {
    /// Its configuration.
    pub config: DispatchConfig,
    /// Its NATS connection.
    pub client: async_nats::Client,
    /// Subject names under the configured prefix.
    pub subjects: Subjects,
    /// JetStream in the configured domain (dead letters).
    pub js: async_nats::jetstream::Context,
    /// The function registry, read when the watch has not caught up.
    pub registry: Registry,
    /// The store of large inputs, whose objects requests may name.
    pub inputs: async_nats::jetstream::object_store::ObjectStore,
    /// What it knows: nodes, functions, counters.
    pub state: State,
    /// One per invocation or event handled at once.
    pub permits: Arc<Semaphore>,
    /// Counters for discovery and metrics.
    pub observe: Observe,
    /// Its inbox for work requests' replies and nodes' notices.
    pub replies: Replies,
}
