//! `comfaas ls`, `comfaas nodes`, `comfaas rm`: what is deployed and where.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfaas_platform::registry::Registry;
use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, DispatchMetrics, NodeLoad};
use futures::StreamExt;

use crate::deploy::state_name;

/// Listens to heartbeats for `window` and returns the latest of each node.
pub async fn collect_loads(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
) -> anyhow::Result<BTreeMap<String, NodeLoad>> {
    let mut loads = client.subscribe(subjects.node_load_all()).await?;
    let deadline = Instant::now() + window;
    let mut nodes = BTreeMap::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), loads.next()).await {
        if let Ok(load) = decode::<NodeLoad>(&message.payload) {
            if load.leaving {
                nodes.remove(&load.node);
            } else {
                nodes.insert(load.node.clone(), load);
            }
        }
    }
    Ok(nodes)
}

/// Prints the registry with each node's install state.
pub async fn ls(
    registry: &Registry,
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<()> {
    let deployments = registry.list().await?;
    let loads = collect_loads(client, subjects, Duration::from_millis(1200)).await?;
    if deployments.is_empty() {
        println!("no functions deployed");
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<10} {:<14} NODES",
        "NAME", "VERSION", "RUNTIME", "BUNDLE"
    );
    for d in deployments {
        let m = &d.manifest;
        let mut states = Vec::new();
        for load in loads.values() {
            if let Some(f) = load.functions.iter().find(|f| f.name == m.name) {
                let mut s = format!("{}:{}", load.node, state_name(f.state));
                if f.version != m.version || f.digest != d.bundle.digest {
                    s.push_str(&format!("({})", f.version));
                }
                if let Some(serving) = f.serving.as_ref().filter(|v| **v != f.version) {
                    s.push_str(&format!("[serving {serving}]"));
                }
                if let Some(reason) = &f.reason {
                    s.push_str(&format!(" \"{reason}\""));
                }
                states.push(s);
            }
        }
        let digest = d.bundle.digest.trim_start_matches("sha256:");
        println!(
            "{:<20} {:<10} {:<10} {:<14} {}",
            m.name,
            m.version,
            m.runtime.as_str(),
            &digest[..digest.len().min(12)],
            if states.is_empty() {
                "-".to_owned()
            } else {
                states.join(" ")
            }
        );
    }
    Ok(())
}

/// Round trips to each node as the dispatchers measure them (the lowest
/// when several dispatchers report), heard for `window`.
async fn collect_rtts(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut metrics = client.subscribe(subjects.dispatch_metrics_all()).await?;
    let deadline = Instant::now() + window;
    let mut rtts: BTreeMap<String, f64> = BTreeMap::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), metrics.next()).await {
        if let Ok(report) = decode::<DispatchMetrics>(&message.payload) {
            for node in report.nodes {
                if let Some(rtt) = node.rtt_ms {
                    let best = rtts.entry(node.node).or_insert(rtt);
                    *best = best.min(rtt);
                }
            }
        }
    }
    Ok(rtts)
}

/// Prints the live node table.
pub async fn nodes(client: &async_nats::Client, subjects: &Subjects) -> anyhow::Result<()> {
    let window = Duration::from_millis(1200);
    let (loads, rtts) = tokio::try_join!(
        collect_loads(client, subjects, window),
        collect_rtts(client, subjects, window)
    )?;
    if loads.is_empty() {
        println!("no live node (no heartbeat in the last 1.2 s)");
        return Ok(());
    }
    println!(
        "{:<14} {:<6} {:<12} {:>5} {:>7} {:>6} {:>5} {:>11} {:>14} {:>8} {:<40} READY",
        "NODE",
        "TIER",
        "SITE",
        "SLOTS",
        "RUNNING",
        "QUEUED",
        "CPU",
        "MEM",
        "MAX_PROCS",
        "RTT_MS",
        "RUNTIMES"
    );
    for load in loads.values() {
        let ready = load
            .functions
            .iter()
            .filter(|f| f.serving.is_some())
            .count();
        let rtt = rtts
            .get(&load.node)
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        println!(
            "{:<14} {:<6} {:<12} {:>5} {:>7} {:>6} {:>5.2} {:>5}/{:>5} {:>14} {:>8} {:<40} {}/{}",
            load.node,
            load.tier.as_str(),
            load.site,
            load.slots,
            load.running,
            load.queued,
            load.cpu_load,
            gib(load.memory_used_bytes),
            gib(load.memory_total_bytes),
            max_procs_cell(load),
            rtt,
            load.runtimes.join(","),
            ready,
            load.functions.len()
        );
    }
    Ok(())
}

/// A node's most processes per job, saying when that oversubscribes its
/// cores (`comfaas dev --max-procs`, `comfaas-exec --max-procs`).
pub fn max_procs_cell(load: &comfaas_schemas::NodeLoad) -> String {
    if load.cores > 0 && load.max_procs > load.cores {
        // One word: scripts split the table on whitespace.
        format!("{}(>{}cores)", load.max_procs, load.cores)
    } else {
        load.max_procs.to_string()
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / f64::from(1u32 << 30))
}

/// Removes a function from the registry; executors uninstall it.
pub async fn rm(registry: &Registry, name: &str) -> anyhow::Result<()> {
    if registry.remove(name).await? {
        println!("removed {name}");
        Ok(())
    } else {
        anyhow::bail!("function `{name}` is not deployed")
    }
}
