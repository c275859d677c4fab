//! `comfaas ls`, `comfaas nodes`, `comfaas rm`: what is deployed and where.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfaas_platform::registry::Registry;
use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, DispatchMetrics, NodeLoad};
use futures::StreamExt;
use serde::Serialize;

use crate::deploy::state_name;
use crate::output;

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

/// One function of `comfaas ls --json`.
#[derive(Debug, Serialize)]
pub struct FunctionRow {
    /// Function name.
    pub name: String,
    /// The version the registry holds.
    pub version: String,
    /// Its runtime (`python`, `c-mpi`, …).
    pub runtime: &'static str,
    /// The bundle's digest (`sha256:<hex>`).
    pub digest: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The operator key that signed it, if any.
    pub signed_by: Option<String>,
    /// Its state on each node that reported it.
    pub nodes: Vec<FunctionOnNode>,
}

/// A function's state on one node, in `comfaas ls --json`.
#[derive(Debug, Serialize)]
pub struct FunctionOnNode {
    /// The node.
    pub node: String,
    /// `installing`, `ready` or `failed`.
    pub state: &'static str,
    /// The version the node has (it may lag behind the registry).
    pub version: String,
    /// Whether the node's bundle is the registry's current one.
    pub current: bool,
    /// The version it answers with while another installs, if any.
    pub serving: Option<String>,
    /// Why it failed or is still installing, if the node said.
    pub reason: Option<String>,
}

/// The registry with each node's install state, as `comfaas ls` shows it.
pub async fn functions(
    registry: &Registry,
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<Vec<FunctionRow>> {
    let deployments = registry.list().await?;
    let loads = collect_loads(client, subjects, Duration::from_millis(1200)).await?;
    Ok(deployments
        .into_iter()
        .map(|d| {
            let m = d.manifest;
            let nodes = loads
                .values()
                .filter_map(|load| {
                    let f = load.functions.iter().find(|f| f.name == m.name)?;
                    Some(FunctionOnNode {
                        node: load.node.clone(),
                        state: state_name(f.state),
                        version: f.version.clone(),
                        current: f.version == m.version && f.digest == d.bundle.digest,
                        serving: f.serving.clone(),
                        reason: f.reason.clone(),
                    })
                })
                .collect();
            FunctionRow {
                name: m.name,
                version: m.version,
                runtime: m.runtime.as_str(),
                digest: d.bundle.digest,
                size: d.bundle.size,
                signed_by: d.signature.map(|s| s.signer),
                nodes,
            }
        })
        .collect())
}

/// Prints the registry with each node's install state: a table, or with
/// `json` the document `{"functions": [FunctionRow…]}`.
pub async fn ls(
    registry: &Registry,
    client: &async_nats::Client,
    subjects: &Subjects,
    json: bool,
) -> anyhow::Result<()> {
    let rows = functions(registry, client, subjects).await?;
    if json {
        return output::json(&serde_json::json!({ "functions": rows }));
    }
    if rows.is_empty() {
        output::line("no functions deployed")?;
        return Ok(());
    }
    let mut table = output::table(["NAME", "VERSION", "RUNTIME", "BUNDLE", "NODES"], 4);
    for row in rows {
        let states: Vec<String> = row
            .nodes
            .iter()
            .map(|n| {
                let mut s = format!("{}:{}", n.node, n.state);
                if !n.current {
                    s.push_str(&format!("({})", n.version));
                }
                if let Some(serving) = n.serving.as_ref().filter(|v| **v != n.version) {
                    s.push_str(&format!("[serving {serving}]"));
                }
                if let Some(reason) = &n.reason {
                    s.push_str(&format!(" \"{reason}\""));
                }
                s
            })
            .collect();
        let digest = row.digest.trim_start_matches("sha256:");
        table.add_row([
            row.name.clone(),
            row.version.clone(),
            row.runtime.to_owned(),
            digest.get(..12).unwrap_or(digest).to_owned(),
            if states.is_empty() {
                "-".to_owned()
            } else {
                states.join(" ")
            },
        ]);
    }
    output::print_table(&table)?;
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

/// One node of `comfaas nodes --json`: its last heartbeat.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    /// Node id.
    pub node: String,
    /// `edge` or `cloud`.
    pub tier: &'static str,
    /// Its site.
    pub site: String,
    /// Invocations it runs at once.
    pub slots: u32,
    /// Invocations running now.
    pub running: u32,
    /// Invocations waiting for a slot.
    pub queued: u32,
    /// Load average per core.
    pub cpu_load: f32,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory of the host, bytes.
    pub memory_total_bytes: u64,
    /// The most MPI processes one job may have there.
    pub max_procs: u32,
    /// Its cores: a `max_procs` above them oversubscribes.
    pub cores: u32,
    /// The lowest round trip a dispatcher measured to it, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Runtimes it can install.
    pub runtimes: Vec<String>,
    /// Functions it serves.
    pub functions_ready: usize,
    /// Functions it knows (serving, installing or failed).
    pub functions: usize,
}

/// The live nodes, as `comfaas nodes` shows them.
pub async fn node_rows(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<Vec<NodeRow>> {
    let window = Duration::from_millis(1200);
    let (loads, rtts) = tokio::try_join!(
        collect_loads(client, subjects, window),
        collect_rtts(client, subjects, window)
    )?;
    Ok(loads
        .into_values()
        .map(|load| NodeRow {
            rtt_ms: rtts.get(&load.node).copied(),
            functions_ready: load
                .functions
                .iter()
                .filter(|f| f.serving.is_some())
                .count(),
            functions: load.functions.len(),
            tier: load.tier.as_str(),
            node: load.node,
            site: load.site,
            slots: load.slots,
            running: load.running,
            queued: load.queued,
            cpu_load: load.cpu_load,
            memory_used_bytes: load.memory_used_bytes,
            memory_total_bytes: load.memory_total_bytes,
            max_procs: load.max_procs,
            cores: load.cores,
            runtimes: load.runtimes,
        })
        .collect())
}

/// Prints the live node table, or with `json` the document
/// `{"nodes": [NodeRow…]}`.
pub async fn nodes(
    client: &async_nats::Client,
    subjects: &Subjects,
    json: bool,
) -> anyhow::Result<()> {
    let rows = node_rows(client, subjects).await?;
    if json {
        return output::json(&serde_json::json!({ "nodes": rows }));
    }
    if rows.is_empty() {
        output::line("no live node (no heartbeat in the last 1.2 s)")?;
        return Ok(());
    }
    let header = [
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
        "RUNTIMES",
        "READY",
    ];
    // Only the runtimes wrap on a narrow terminal.
    let mut table = output::table(header, 10);
    for row in rows {
        table.add_row([
            row.node,
            row.tier.to_owned(),
            row.site,
            row.slots.to_string(),
            row.running.to_string(),
            row.queued.to_string(),
            format!("{:.2}", row.cpu_load),
            format!(
                "{}/{}",
                gib(row.memory_used_bytes),
                gib(row.memory_total_bytes)
            ),
            max_procs_cell(row.max_procs, row.cores),
            row.rtt_ms
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            // Spaces let a narrow terminal wrap the list inside its column.
            row.runtimes.join(", "),
            format!("{}/{}", row.functions_ready, row.functions),
        ]);
    }
    output::print_table(&table)?;
    Ok(())
}

/// A node's most processes per job, saying when that oversubscribes its
/// cores (`comfaas dev --max-procs`, `comfaas-exec --max-procs`).
pub fn max_procs_cell(max_procs: u32, cores: u32) -> String {
    if cores > 0 && max_procs > cores {
        // One word: scripts split the table on whitespace.
        format!("{max_procs}(>{cores}cores)")
    } else {
        max_procs.to_string()
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / f64::from(1u32 << 30))
}

/// Removes a function from the registry; executors uninstall it.
pub async fn rm(registry: &Registry, name: &str) -> anyhow::Result<()> {
    if registry.remove(name).await? {
        output::line(format!("removed {name}"))?;
        Ok(())
    } else {
        anyhow::bail!("function `{name}` is not deployed")
    }
}
