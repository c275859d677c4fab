//! The dispatcher's configuration and its command-line flags.

use std::time::Duration;

use clap::Args;
use comfaas_platform::nats::{NatsFlags, NatsOptions};
use serde::{Deserialize, Serialize};

/// Dispatcher settings, read in layers (see `comfaas_platform::settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatchConfig {
    /// How to reach NATS.
    #[serde(flatten)]
    pub nats: NatsOptions,
    /// Dispatcher id (one subject token); random when empty.
    pub id: String,
    /// Period of the metrics report, ms.
    pub metrics_ms: u64,
    /// Heartbeats a node may miss before it counts as dead.
    pub dead_after_heartbeats: u32,
    /// Run time limit when neither the request nor the manifest sets one.
    pub default_timeout_ms: u64,
    /// Largest run time limit a request may ask for.
    pub max_timeout_ms: u64,
    /// Time an invocation may wait in a node's queue on top of its run time.
    pub queue_wait_ms: u64,
    /// Invocations and events handled at once by this dispatcher.
    pub max_concurrent: usize,
    /// Deliveries of one event before it is given up with an error result
    /// (retries wait 2, 4, 8, 16, then 30 s: 20 deliveries ≈ 8 minutes).
    pub max_event_deliveries: i64,
    /// Events taken from the stream and not yet acknowledged, waiting for
    /// a retry included: the window every function's events share.
    pub max_events_pending: i64,
    /// An event published longer ago than this is dead-lettered, not run
    /// (like Lambda's maximum event age); 0 for no limit.
    pub max_event_age_s: u64,
    /// Where to serve Prometheus metrics (`host:port`, `GET /metrics`);
    /// empty: off, and nothing is counted.
    pub metrics_addr: String,
    /// Size and age limits of the function logs stream `COMFAAS_LOGS`,
    /// which the dispatcher creates (`[logs]`: `max_bytes`, `max_age_s`).
    pub logs: comfaas_platform::resources::LogsLimits,
    /// Place as if no node held any input in its cache (the nodes' reports
    /// of what they hold are ignored): the ablation the placement
    /// benchmark compares against; off in any real deployment.
    pub ignore_cached_inputs: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            nats: NatsOptions::default(),
            id: String::new(),
            metrics_ms: 1000,
            dead_after_heartbeats: 3,
            default_timeout_ms: comfaas_schemas::RunLimits::default().default_timeout_ms(),
            max_timeout_ms: comfaas_schemas::RunLimits::default().max_timeout_ms(),
            queue_wait_ms: 30_000,
            max_concurrent: 4096,
            max_event_deliveries: comfaas_platform::resources::EVENTS_MAX_DELIVER,
            max_events_pending: comfaas_platform::resources::EVENTS_MAX_ACK_PENDING,
            max_event_age_s: 6 * 3600,
            metrics_addr: String::new(),
            logs: comfaas_platform::resources::LogsLimits::default(),
            ignore_cached_inputs: false,
        }
    }
}

impl DispatchConfig {
    /// Fills in the id and checks values.
    pub fn validate(mut self) -> anyhow::Result<Self> {
        if self.id.is_empty() {
            self.id = format!(
                "dispatch-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
        }
        if !comfaas_schemas::names::is_token(&self.id) {
            anyhow::bail!("dispatcher id `{}` must be one subject token", self.id);
        }
        self.logs.validate()?;
        if self.max_concurrent == 0 || self.metrics_ms == 0 || self.dead_after_heartbeats == 0 {
            anyhow::bail!(
                "max_concurrent, metrics_ms and dead_after_heartbeats must be above zero"
            );
        }
        Ok(self)
    }

    /// The run time limits this dispatcher writes into invocations.
    pub fn run_limits(&self) -> comfaas_schemas::RunLimits {
        comfaas_schemas::RunLimits::from_ms(self.default_timeout_ms, self.max_timeout_ms)
    }

    /// Metrics period.
    pub fn metrics_period(&self) -> Duration {
        Duration::from_millis(self.metrics_ms)
    }
}

/// Command-line flags of `comfaas-dispatch`; each overrides its config key.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct DispatchFlags {
    /// How to reach NATS.
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsFlags,
    /// Dispatcher id [default: random]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Serve Prometheus metrics on this host:port (GET /metrics) [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}
