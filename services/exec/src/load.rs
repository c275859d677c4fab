//! The heartbeat: this node's `NodeLoad`, every period, and soon after
//! a run starts or ends, so that every dispatcher (not only the one that
//! sent the work) sees a slot taken or freed without waiting a period.

use std::sync::Arc;
use std::time::Duration;

use comfaas_schemas::{encode, now_unix_ms, NodeLoad, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

use crate::functions::FunctionTable;
use crate::inputs::InputCache;
use crate::work::Admission;
use crate::ExecConfig;

/// The least time between two reports sent early because runs started or
/// ended: at most ten a second, however busy the node.
const EARLY_REPORT_GAP: Duration = Duration::from_millis(100);

/// Publishes the node's load every heartbeat until `stop`.
pub async fn heartbeat(
    client: async_nats::Client,
    config: Arc<ExecConfig>,
    table: FunctionTable,
    admission: Admission,
    inputs: Arc<InputCache>,
    runtimes: Vec<String>,
    stop: CancellationToken,
) {
    let subject = config.nats.subjects().node_load(&config.node);
    let mut system = sysinfo::System::new();
    let mut ticker = tokio::time::interval(config.heartbeat());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = table.changed() => {}
            _ = admission.changed() => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(last + EARLY_REPORT_GAP) => {}
                }
            }
        }
        last = tokio::time::Instant::now();
        system.refresh_memory();
        let mut load = snapshot(&config, &admission, &runtimes, table.states());
        load.memory_total_bytes = system.total_memory();
        load.memory_used_bytes = system.used_memory();
        let fetch = inputs.stats();
        load.input_fetched_bytes = fetch.fetched_bytes;
        load.input_cache_hits = fetch.cache_hits;
        load.input_fetch_bytes_per_s = fetch.bytes_per_s;
        match encode(&load) {
            Ok(bytes) => {
                if let Err(e) = client.publish(subject.clone(), bytes.into()).await {
                    tracing::warn!("cannot publish load: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode load: {e}"),
        }
    }
}

fn snapshot(
    config: &ExecConfig,
    admission: &Admission,
    runtimes: &[String],
    functions: Vec<comfaas_schemas::FunctionState>,
) -> NodeLoad {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (running, queued) = admission.counts();
    NodeLoad {
        schema: SCHEMA_VERSION,
        node: config.node.clone(),
        tier: config.tier,
        site: config.site.clone(),
        cores,
        slots: config.slots(),
        running,
        queued,
        queue_capacity: config.queue,
        cpu_load: (sysinfo::System::load_average().one / f64::from(cores)) as f32,
        memory_total_bytes: 0,
        memory_used_bytes: 0,
        max_procs: config.max_procs(),
        runtimes: runtimes.to_vec(),
        functions,
        heartbeat_ms: config.heartbeat_ms,
        sent_unix_ms: now_unix_ms(),
        leaving: false,
        input_fetched_bytes: 0,
        input_cache_hits: 0,
        input_fetch_bytes_per_s: 0.0,
    }
}

/// Tells dispatchers this node is gone, so they stop choosing it at once.
pub async fn say_leaving(client: &async_nats::Client, config: &ExecConfig) {
    let load = NodeLoad {
        leaving: true,
        ..snapshot(config, &Admission::new(1, 0), &[], Vec::new())
    };
    if let Ok(bytes) = encode(&load) {
        let subject = config.nats.subjects().node_load(&config.node);
        let _ = client.publish(subject, bytes.into()).await;
        let _ = client.flush().await;
    }
}
