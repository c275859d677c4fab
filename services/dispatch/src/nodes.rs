//! The live node table, fed by `NodeLoad` heartbeats and by what the
//! dispatcher itself sees when it sends work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use comfaas_placement::NodeView;
use comfaas_schemas::{NodeLoad, NodeMetrics};

struct Node {
    load: NodeLoad,
    last_seen: Instant,
    /// A request found nobody listening on its work subject; cleared by the
    /// next heartbeat.
    unreachable: bool,
    placed: u64,
    in_flight: u32,
    /// Moving average of the round trip as this dispatcher sees it, ms.
    rtt_ms: Option<f64>,
}

/// Weight of the newest sample in the moving averages.
const EWMA_ALPHA: f64 = 0.3;

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| o + EWMA_ALPHA * (sample - o))
}

/// Every node heard from, alive or not, and what runs there took.
#[derive(Default)]
pub struct NodeTable {
    nodes: HashMap<String, Node>,
    dead_after: u32,
    /// (function, node) → (moving average run time ms, processes).
    runs: HashMap<(String, String), (f64, u32)>,
}

impl NodeTable {
    /// A table where a node missing `dead_after` heartbeats is dead.
    pub fn new(dead_after: u32) -> Self {
        Self {
            nodes: HashMap::new(),
            dead_after,
            runs: HashMap::new(),
        }
    }

    /// Records a heartbeat.
    pub fn heard(&mut self, load: NodeLoad, now: Instant) {
        if load.leaving {
            self.nodes.remove(&load.node);
            return;
        }
        match self.nodes.get_mut(&load.node) {
            Some(node) => {
                node.load = load;
                node.last_seen = now;
                node.unreachable = false;
            }
            None => {
                self.nodes.insert(
                    load.node.clone(),
                    Node {
                        load,
                        last_seen: now,
                        unreachable: false,
                        placed: 0,
                        in_flight: 0,
                        rtt_ms: None,
                    },
                );
            }
        }
    }

    fn alive(&self, node: &Node, now: Instant) -> bool {
        let period = Duration::from_millis(node.load.heartbeat_ms.max(1));
        !node.unreachable && now.duration_since(node.last_seen) <= period * self.dead_after
    }

    /// What one answered invocation taught: `took_ms` at the dispatcher, of
    /// which the node says the function ran `run_ms` with `procs` processes.
    pub fn observe(
        &mut self,
        node: &str,
        function: &str,
        procs: u32,
        took_ms: f64,
        run_ms: Option<f64>,
    ) {
        if let Some(n) = self.nodes.get_mut(node) {
            let overhead = (took_ms - run_ms.unwrap_or(0.0)).max(0.05);
            n.rtt_ms = Some(ewma(n.rtt_ms, overhead));
        }
        if let Some(run_ms) = run_ms {
            let key = (function.to_owned(), node.to_owned());
            // Normalise to the stored process count, assuming linear scaling.
            let (old, old_procs) = self.runs.get(&key).copied().unzip();
            let sample = match old_procs {
                Some(p) if p != procs => run_ms * f64::from(procs) / f64::from(p.max(1)),
                _ => run_ms,
            };
            self.runs
                .insert(key, (ewma(old, sample), old_procs.unwrap_or(procs)));
        }
    }

    /// The snapshot the placement model decides on, for `function`.
    pub fn views(&self, function: &str, now: Instant) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|n| {
                let history = self.runs.get(&(function.to_owned(), n.load.node.clone()));
                NodeView {
                    node: n.load.node.clone(),
                    tier: n.load.tier,
                    alive: self.alive(n, now),
                    serves: n.load.serves(function),
                    slots: n.load.slots,
                    running: n.load.running,
                    queued: n.load.queued,
                    queue_capacity: n.load.queue_capacity,
                    in_flight: n.in_flight,
                    cpu_load: n.load.cpu_load,
                    max_procs: n.load.max_procs,
                    rtt_ms: n.rtt_ms,
                    fetch_bytes_per_s: Some(n.load.input_fetch_bytes_per_s).filter(|b| *b > 0.0),
                    run_ms: history.map(|r| r.0),
                    run_procs: history.map_or(1, |r| r.1),
                }
            })
            .collect()
    }

    /// Why `function` is not servable on live nodes that know it:
    /// `node: install failed: …` or `node: installing`.
    pub fn install_report(&self, function: &str, now: Instant) -> Vec<String> {
        let mut report: Vec<String> = self
            .nodes
            .values()
            .filter(|n| self.alive(n, now) && !n.load.serves(function))
            .filter_map(|n| {
                let f = n.load.functions.iter().find(|f| f.name == function)?;
                Some(match &f.reason {
                    Some(reason) => format!("{}: install failed: {reason}", n.load.node),
                    None => format!("{}: installing", n.load.node),
                })
            })
            .collect();
        report.sort();
        report
    }

    /// Whether `function` (bundle `digest`) is on its way to some live node
    /// and none serves it yet: a node is installing it, or, when `fresh`
    /// (deployed moments ago), no live node has reported that bundle yet.
    pub fn coming(&self, function: &str, digest: &str, fresh: bool, now: Instant) -> bool {
        let live = || self.nodes.values().filter(|n| self.alive(n, now));
        if live().any(|n| n.load.serves(function)) {
            return false;
        }
        let states = || live().flat_map(|n| n.load.functions.iter().filter(|f| f.name == function));
        states().any(|f| f.state == comfaas_schemas::InstallState::Installing)
            || (fresh && live().next().is_some() && !states().any(|f| f.digest == digest))
    }

    /// Work was sent to `node`.
    pub fn sent(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.placed += 1;
            n.in_flight += 1;
        }
    }

    /// Work sent to `node` was answered (or given up).
    pub fn answered(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.in_flight = n.in_flight.saturating_sub(1);
        }
    }

    /// Nobody listens on `node`'s work subject: stop choosing it until it
    /// is heard from again.
    pub fn unreachable(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.unreachable = true;
        }
    }

    /// Forgets nodes silent for a long time (a hundred heartbeats).
    pub fn prune(&mut self, now: Instant) {
        self.nodes.retain(|_, n| {
            now.duration_since(n.last_seen)
                < Duration::from_millis(n.load.heartbeat_ms.max(1)) * 100
        });
    }

    /// Per-node metrics for the dispatcher's report.
    pub fn metrics(&self, now: Instant) -> Vec<NodeMetrics> {
        let mut out: Vec<NodeMetrics> = self
            .nodes
            .values()
            .map(|n| NodeMetrics {
                node: n.load.node.clone(),
                tier: n.load.tier,
                site: n.load.site.clone(),
                alive: self.alive(n, now),
                last_seen_ms: now.duration_since(n.last_seen).as_millis() as u64,
                placed: n.placed,
                in_flight: n.in_flight,
                rtt_ms: n.rtt_ms,
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(node: &str) -> NodeLoad {
        NodeLoad {
            schema: 1,
            node: node.into(),
            tier: Default::default(),
            site: String::new(),
            cores: 1,
            slots: 1,
            running: 0,
            queued: 0,
            queue_capacity: 1,
            cpu_load: 0.0,
            memory_total_bytes: 0,
            memory_used_bytes: 0,
            max_procs: 1,
            runtimes: vec![],
            functions: vec![],
            heartbeat_ms: 1000,
            sent_unix_ms: 0,
            leaving: false,
            input_fetched_bytes: 0,
            input_cache_hits: 0,
            input_fetch_bytes_per_s: 0.0,
        }
    }

    #[test]
    fn a_node_dies_after_missing_its_heartbeats() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        assert!(table.views("f", t0 + Duration::from_millis(2900))[0].alive);
        assert!(!table.views("f", t0 + Duration::from_millis(3100))[0].alive);
    }

    #[test]
    fn answers_teach_round_trips_and_run_times() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        table.observe("a", "f", 1, 12.0, Some(10.0));
        let view = &table.views("f", t0)[0];
        assert_eq!(view.rtt_ms, Some(2.0));
        assert_eq!((view.run_ms, view.run_procs), (Some(10.0), 1));
        // A run at 2 processes counts as twice the work at 1.
        table.observe("a", "f", 2, 7.0, Some(6.0));
        let view = &table.views("f", t0)[0];
        assert!((view.run_ms.unwrap() - (10.0 + 0.3 * (12.0 - 10.0))).abs() < 1e-9);
        assert!(table.views("g", t0)[0].run_ms.is_none(), "per function");
    }

    #[test]
    fn unreachable_until_heard_again_and_leaving_removes() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        table.unreachable("a");
        assert!(!table.views("f", t0)[0].alive);
        table.heard(load("a"), t0);
        assert!(table.views("f", t0)[0].alive);
        table.heard(
            NodeLoad {
                leaving: true,
                ..load("a")
            },
            t0,
        );
        assert!(table.views("f", t0).is_empty());
    }
}
