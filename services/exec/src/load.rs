//! The heartbeat: this node's `NodeLoad`, every period, at once when an
//! install starts or ends, and soon after a run is admitted, starts or
//! ends, so that every dispatcher (not only the one that sent the work)
//! sees a slot taken or freed without waiting a period. Each report says
//! which inputs the node's cache holds, so dispatchers send an input where
//! it need not be fetched. On shutdown, a last report says the node is
//! leaving.

use std::sync::Arc;
use std::time::Duration;

use comfaas_schemas::{encode, now_unix_ms, NodeLoad, SandboxReport};
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::config::{cores, ExecConfig};
use crate::functions::FunctionTable;
use crate::inputs::InputCache;

/// The least time between two reports sent early because runs started or
/// ended: at most ten a second, however busy the node.
const EARLY_REPORT_GAP: Duration = Duration::from_millis(100);

/// Publishes the node's load on `<prefix>.node.<id>.load`.
pub struct Heartbeat {
    /// The connection reports go out on.
    pub client: async_nats::Client,
    /// The node's configuration.
    pub config: Arc<ExecConfig>,
    /// The functions and their install states.
    pub table: FunctionTable,
    /// Runs and queue.
    pub admission: Admission,
    /// Input fetch statistics.
    pub inputs: Arc<InputCache>,
    /// Runtimes this node can install.
    pub runtimes: Vec<String>,
    /// How runs are confined here.
    pub sandbox: SandboxReport,
    /// This run of the executor: `NodeLoad.instance`.
    pub instance: String,
}

impl Heartbeat {
    /// Reports every heartbeat, and early on changes, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let subject = self.config.nats.subjects().node_load(&self.config.node);
        let mut system = sysinfo::System::new();
        let mut ticker = tokio::time::interval(self.config.heartbeat());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            let woken = stop.run_until_cancelled(async {
                tokio::select! {
                    _ = ticker.tick() => false,
                    _ = self.table.changed() => false,
                    _ = self.admission.changed() => true,
                }
            });
            let Some(by_a_run) = woken.await else { return };
            if by_a_run {
                let gap = tokio::time::sleep_until(last + EARLY_REPORT_GAP);
                if stop.run_until_cancelled(gap).await.is_none() {
                    return;
                }
            }
            last = tokio::time::Instant::now();
            system.refresh_memory();
            let load = NodeLoad {
                cached_inputs: self.inputs.cached_inputs().await,
                ..self.load(&system)
            };
            match encode(&load) {
                Ok(bytes) => {
                    if let Err(e) = self.client.publish(subject.clone(), bytes.into()).await {
                        tracing::warn!("cannot publish load: {e}");
                    }
                }
                Err(e) => tracing::error!("cannot encode load: {e}"),
            }
        }
    }

    /// The report now.
    fn load(&self, system: &sysinfo::System) -> NodeLoad {
        let (running, queued) = self.admission.counts();
        let fetch = self.inputs.stats();
        NodeLoad {
            running,
            queued,
            memory_total_bytes: system.total_memory(),
            memory_used_bytes: system.used_memory(),
            runtimes: self.runtimes.clone(),
            functions: self.table.states(),
            input_fetched_bytes: fetch.fetched_bytes,
            input_cache_hits: fetch.cache_hits,
            input_fetch_bytes_per_s: fetch.bytes_per_s,
            input_fetch_failures: fetch.failures,
            sandbox: self.sandbox.clone(),
            instance: self.instance.clone(),
            ..node_load(&self.config)
        }
    }
}

/// Tells dispatchers this node is gone, so they stop choosing it at once.
pub async fn say_leaving(client: &async_nats::Client, config: &ExecConfig) {
    let load = NodeLoad {
        leaving: true,
        ..node_load(config)
    };
    if let Ok(bytes) = encode(&load) {
        let subject = config.nats.subjects().node_load(&config.node);
        let _ = client.publish(subject, bytes.into()).await;
        let _ = client.flush().await;
    }
}

/// What the node's configuration and host alone tell: who it is, what it
/// can take and how busy its CPUs are; nothing running, nothing installed.
fn node_load(config: &ExecConfig) -> NodeLoad {
    let cores = cores();
    NodeLoad {
        node: config.node.clone(),
        tier: config.tier,
        site: config.site.clone(),
        cores,
        slots: config.slots(),
        queue_capacity: config.queue,
        cpu_load: (sysinfo::System::load_average().one / f64::from(cores)) as f32,
        max_procs: config.max_procs(),
        heartbeat_ms: config.heartbeat_ms,
        sent_unix_ms: now_unix_ms(),
        signatures: config.signatures(),
        ..NodeLoad::default()
    }
}
