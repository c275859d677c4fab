//! What the dashboard shows, folded from what it hears: the latest load of
//! every node, the latest report of every dispatcher, the placement
//! decisions seen so far and a short history of invocations per second by
//! node. Pure state, no NATS and no HTTP, so tests drive it with messages
//! they make.
//!
//! The page gets it whole, as one JSON [`Snapshot`], once a second: a
//! browser that connects late gets the same picture (rate history included)
//! as one that was there all along.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use comfaas_schemas::{DispatchMetrics, ErrorCount, FunctionState, NodeLoad};

use crate::decisions::Decision;
use serde::Serialize;

/// Placement decisions kept, newest first on the page.
pub const DECISIONS_KEPT: usize = 30;
/// Rate samples kept (one a second: two minutes of chart).
pub const RATE_SAMPLES_KEPT: usize = 120;
/// A node not heard from for this long leaves the table.
const NODE_FORGOTTEN: Duration = Duration::from_secs(300);
/// A dispatcher not heard from for this long leaves the table.
const DISPATCHER_FORGOTTEN: Duration = Duration::from_secs(60);
/// Heartbeat periods a node may miss before it counts as dead here (when no
/// dispatcher says otherwise).
const MISSED_HEARTBEATS: u32 = 3;

/// Everything the page draws, as sent to it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When it was made (Unix ms).
    pub sent_unix_ms: u64,
    /// Every node heard from, by site then id.
    pub nodes: Vec<NodeView>,
    /// Every dispatcher heard from, by id.
    pub dispatchers: Vec<DispatcherView>,
    /// The latest placement decisions, newest first.
    pub decisions: Vec<Decision>,
    /// The events stream and the dead-letter queue.
    pub events: EventsView,
    /// Invocations per second by node, oldest sample first.
    pub rates: Vec<RateSample>,
}

/// One node's row.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Node id.
    pub node: String,
    /// `edge` or `cloud`.
    pub tier: String,
    /// Site name.
    pub site: String,
    /// CPU cores of its host.
    pub cores: u32,
    /// Runs allowed at once.
    pub slots: u32,
    /// Runs under way.
    pub running: u32,
    /// Runs waiting for a slot.
    pub queued: u32,
    /// How many may wait.
    pub queue_capacity: u32,
    /// Load average per core.
    pub cpu_load: f32,
    /// Most MPI processes per job.
    pub max_procs: u32,
    /// Runtimes it can install.
    pub runtimes: Vec<String>,
    /// Functions and their versions there.
    pub functions: Vec<FunctionState>,
    /// Alive as the dispatchers see it (or, when none knows it, heard
    /// within a few heartbeats).
    pub alive: bool,
    /// Milliseconds since its last heartbeat reached the dashboard.
    pub last_seen_ms: u64,
    /// Round trip, the lowest any dispatcher measures, ms.
    pub rtt_ms: Option<f64>,
    /// Invocations placed there, summed over the dispatchers.
    pub placed: u64,
}

/// One dispatcher's row.
#[derive(Debug, Clone, Serialize)]
pub struct DispatcherView {
    /// Dispatcher id.
    pub dispatcher: String,
    /// Whether a report came within the last few seconds.
    pub alive: bool,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Invocations and events received.
    pub received: u64,
    /// Answered ok.
    pub succeeded: u64,
    /// Answered with an error.
    pub failed: u64,
    /// Received and not answered yet.
    pub in_flight: u32,
    /// Errors by code.
    pub errors: Vec<ErrorCount>,
    /// Events it wrote to the dead-letter queue.
    pub dead_lettered: u64,
    /// Redelivered events it sent to the node holding their run.
    pub attached: u64,
}

/// The events stream and the dead-letter queue, as last read from
/// JetStream. `None` where the reading failed; `error` says why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventsView {
    /// Events no dispatcher has taken yet.
    pub pending: Option<u64>,
    /// Events taken and not yet acknowledged (running, or waiting for a retry).
    pub in_progress: Option<u64>,
    /// Of those, events delivered more than once (being retried).
    pub retrying: Option<u64>,
    /// Dead letters in `COMFAAS_DLQ`.
    pub dead_letters: Option<u64>,
    /// Events dead-lettered since the dispatchers started (their sum).
    pub dead_lettered: u64,
    /// Why a reading failed.
    pub error: Option<String>,
}

/// Invocations per second by node at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateSample {
    /// When (Unix ms).
    pub t: u64,
    /// Node id → invocations placed there per second.
    pub per_node: BTreeMap<String, f64>,
}

struct HeardLoad {
    load: NodeLoad,
    at: Instant,
}

struct HeardReport {
    report: DispatchMetrics,
    at: Instant,
    /// Node → its placement rate from the last two reports.
    rates: HashMap<String, f64>,
}

/// The dashboard's state; see the module doc.
#[derive(Default)]
pub struct View {
    loads: BTreeMap<String, HeardLoad>,
    reports: BTreeMap<String, HeardReport>,
    /// Newest first.
    decisions: VecDeque<Decision>,
    rates: VecDeque<RateSample>,
    events: EventsView,
}

impl View {
    /// A node's heartbeat: its row is replaced; a node that says it is
    /// leaving goes at once.
    pub fn heard_load(&mut self, load: NodeLoad, at: Instant) {
        if load.leaving {
            self.loads.remove(&load.node);
        } else {
            self.loads.insert(load.node.clone(), HeardLoad { load, at });
        }
    }

    /// A dispatcher's report: its row, its node rates and any decision not
    /// seen before.
    pub fn heard_report(&mut self, report: DispatchMetrics, at: Instant) {
        let mut rates = HashMap::new();
        if let Some(previous) = self.reports.get(&report.dispatcher) {
            let seconds = report
                .sent_unix_ms
                .saturating_sub(previous.report.sent_unix_ms) as f64
                / 1000.0;
            for node in &report.nodes {
                let before = previous
                    .report
                    .nodes
                    .iter()
                    .find(|n| n.node == node.node)
                    .map_or(0, |n| n.placed);
                // A counter that went down is a restarted dispatcher:
                // everything it counted is new.
                let placed = if node.placed >= before {
                    node.placed - before
                } else {
                    node.placed
                };
                let rate = if seconds > 0.0 {
                    placed as f64 / seconds
                } else {
                    0.0
                };
                rates.insert(node.node.clone(), rate);
            }
        }
        // Records are in order, oldest first; a new one goes to the front.
        // New: not in its dispatcher's previous report (whose oldest this
        // page may have let go already), nor kept here.
        let before = self
            .reports
            .get(&report.dispatcher)
            .map(|h| &h.report.recent);
        for record in &report.recent {
            let reported =
                before.is_some_and(|b| b.iter().any(|r| r.invocation == record.invocation));
            let seen = reported
                || self.decisions.iter().any(|d| {
                    d.dispatcher == report.dispatcher && d.record.invocation == record.invocation
                });
            if !seen {
                self.decisions.push_front(Decision {
                    dispatcher: report.dispatcher.clone(),
                    record: record.clone(),
                });
            }
        }
        self.decisions.truncate(DECISIONS_KEPT);
        self.reports
            .insert(report.dispatcher.clone(), HeardReport { report, at, rates });
    }

    /// The latest reading of the events stream and the dead-letter queue.
    pub fn heard_events(&mut self, events: EventsView) {
        self.events = events;
    }

    /// One tick: forgets the long silent, takes a rate sample, and returns
    /// the whole picture.
    pub fn tick(&mut self, now: Instant, now_unix_ms: u64) -> Snapshot {
        self.loads
            .retain(|_, heard| now.duration_since(heard.at) < NODE_FORGOTTEN);
        self.reports
            .retain(|_, heard| now.duration_since(heard.at) < DISPATCHER_FORGOTTEN);
        let dispatcher_alive =
            |heard: &HeardReport| now.duration_since(heard.at) < Duration::from_secs(3);

        let mut per_node: BTreeMap<String, f64> =
            self.loads.keys().map(|n| (n.clone(), 0.0)).collect();
        for heard in self.reports.values().filter(|h| dispatcher_alive(h)) {
            for (node, rate) in &heard.rates {
                *per_node.entry(node.clone()).or_default() += rate;
            }
        }
        if self.rates.len() == RATE_SAMPLES_KEPT {
            self.rates.pop_front();
        }
        self.rates.push_back(RateSample {
            t: now_unix_ms,
            per_node,
        });

        let mut nodes: Vec<NodeView> = self
            .loads
            .values()
            .map(|heard| self.node_view(heard, now))
            .collect();
        nodes.sort_by(|a, b| (&a.site, &a.node).cmp(&(&b.site, &b.node)));
        let dispatchers = self
            .reports
            .values()
            .map(|heard| {
                let r = &heard.report;
                DispatcherView {
                    dispatcher: r.dispatcher.clone(),
                    alive: dispatcher_alive(heard),
                    uptime_s: r.uptime_s,
                    received: r.received,
                    succeeded: r.succeeded,
                    failed: r.failed,
                    in_flight: r.in_flight,
                    errors: r.errors.clone(),
                    dead_lettered: r.dead_lettered,
                    attached: r.attached,
                }
            })
            .collect();
        let mut events = self.events.clone();
        events.dead_lettered = self.reports.values().map(|h| h.report.dead_lettered).sum();
        Snapshot {
            sent_unix_ms: now_unix_ms,
            nodes,
            dispatchers,
            decisions: self.decisions.iter().cloned().collect(),
            events,
            rates: self.rates.iter().cloned().collect(),
        }
    }

    fn node_view(&self, heard: &HeardLoad, now: Instant) -> NodeView {
        let load = &heard.load;
        let seen_by: Vec<_> = self
            .reports
            .values()
            .filter_map(|h| h.report.nodes.iter().find(|n| n.node == load.node))
            .collect();
        let since = now.duration_since(heard.at);
        let heartbeat = Duration::from_millis(load.heartbeat_ms.max(1000));
        let alive = if seen_by.is_empty() {
            since < heartbeat * MISSED_HEARTBEATS
        } else {
            seen_by.iter().any(|n| n.alive)
        };
        let rtt_ms = seen_by
            .iter()
            .filter_map(|n| n.rtt_ms)
            .min_by(|a, b| a.total_cmp(b));
        NodeView {
            node: load.node.clone(),
            tier: load.tier.as_str().to_owned(),
            site: load.site.clone(),
            cores: load.cores,
            slots: load.slots,
            running: load.running,
            queued: load.queued,
            queue_capacity: load.queue_capacity,
            cpu_load: load.cpu_load,
            max_procs: load.max_procs,
            runtimes: load.runtimes.clone(),
            functions: load.functions.clone(),
            alive,
            last_seen_ms: since.as_millis() as u64,
            rtt_ms,
            placed: seen_by.iter().map(|n| n.placed).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use comfaas_schemas::{CandidateEstimate, NodeMetrics, Tier};

    fn load(node: &str, site: &str) -> NodeLoad {
        NodeLoad {
            node: node.into(),
            site: site.into(),
            tier: Tier::Cloud,
            slots: 2,
            heartbeat_ms: 1000,
            ..NodeLoad::default()
        }
    }

    fn report(sent_unix_ms: u64, placed: &[(&str, u64)], recent: &[&str]) -> DispatchMetrics {
        DispatchMetrics {
            schema: 1,
            dispatcher: "d1".into(),
            uptime_s: 1,
            received: 0,
            succeeded: 0,
            failed: 0,
            in_flight: 0,
            errors: vec![],
            nodes: placed
                .iter()
                .map(|(node, placed)| NodeMetrics {
                    node: (*node).into(),
                    tier: Tier::Edge,
                    site: "edge".into(),
                    alive: true,
                    last_seen_ms: 0,
                    placed: *placed,
                    in_flight: 0,
                    rtt_ms: Some(0.5),
                })
                .collect(),
            recent: recent
                .iter()
                .map(|id| comfaas_schemas::PlacementRecord {
                    invocation: (*id).into(),
                    function: "f".into(),
                    node: "a".into(),
                    procs: None,
                    reason: "least loaded".into(),
                    took_ms: Some(1),
                    estimate_ms: Some(1.0),
                    candidates: vec![CandidateEstimate {
                        node: "a".into(),
                        estimate_ms: 1.0,
                        parts: None,
                    }],
                    unix_ms: None,
                })
                .collect(),
            sent_unix_ms,
            bad_reply_subjects: 0,
            forged_loads: 0,
            dead_lettered: 2,
            dlq_failures: 0,
            attached: 0,
        }
    }

    #[test]
    fn rates_come_from_the_placed_counters_of_two_reports() {
        let mut view = View::default();
        let t0 = Instant::now();
        view.heard_load(load("a", "edge"), t0);
        view.heard_report(report(1000, &[("a", 10)], &[]), t0);
        view.heard_report(report(3000, &[("a", 16)], &[]), t0);
        let snapshot = view.tick(t0, 3000);
        assert_eq!(snapshot.rates.last().unwrap().per_node["a"], 3.0);
        // A restarted dispatcher counts from zero: all it counted is new.
        view.heard_report(report(4000, &[("a", 2)], &[]), t0);
        let snapshot = view.tick(t0, 4000);
        assert_eq!(snapshot.rates.last().unwrap().per_node["a"], 2.0);
        assert_eq!(snapshot.nodes[0].placed, 2);
        assert_eq!(snapshot.nodes[0].rtt_ms, Some(0.5));
        assert_eq!(snapshot.events.dead_lettered, 2);
    }

    #[test]
    fn decisions_are_kept_once_newest_first() {
        let mut view = View::default();
        let t0 = Instant::now();
        view.heard_report(report(1000, &[], &["i1", "i2"]), t0);
        view.heard_report(report(2000, &[], &["i2", "i3"]), t0);
        let ids: Vec<_> = view
            .tick(t0, 2000)
            .decisions
            .iter()
            .map(|d| d.record.invocation.clone())
            .collect();
        assert_eq!(ids, ["i3", "i2", "i1"]);
        let many: Vec<String> = (0..DECISIONS_KEPT + 5).map(|i| format!("m{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        view.heard_report(report(3000, &[], &many), t0);
        let snapshot = view.tick(t0, 3000);
        assert_eq!(snapshot.decisions.len(), DECISIONS_KEPT);
        assert_eq!(
            snapshot.decisions[0].record.invocation,
            format!("m{}", DECISIONS_KEPT + 4)
        );
    }

    #[test]
    fn nodes_are_sorted_by_site_leave_when_they_say_so_and_die_when_silent() {
        let mut view = View::default();
        let t0 = Instant::now();
        view.heard_load(load("z", "a-site"), t0);
        view.heard_load(load("b", "b-site"), t0);
        view.heard_load(load("a", "b-site"), t0);
        let nodes: Vec<_> = view.tick(t0, 0).nodes.into_iter().map(|n| n.node).collect();
        assert_eq!(nodes, ["z", "a", "b"]);
        view.heard_load(
            NodeLoad {
                leaving: true,
                ..load("a", "b-site")
            },
            t0,
        );
        let later = t0 + Duration::from_secs(4);
        let nodes = view.tick(later, 0).nodes;
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| !n.alive), "no heartbeat for 4 s");
        assert_eq!(view.tick(t0 + NODE_FORGOTTEN, 0).nodes.len(), 0);
    }

    #[test]
    fn the_rate_history_is_bounded() {
        let mut view = View::default();
        let t0 = Instant::now();
        for i in 0..RATE_SAMPLES_KEPT as u64 + 3 {
            view.tick(t0, i);
        }
        let rates = view.tick(t0, 1000).rates;
        assert_eq!(rates.len(), RATE_SAMPLES_KEPT);
        assert_eq!(rates.last().unwrap().t, 1000);
    }
}
