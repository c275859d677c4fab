//! The live node table, fed by `NodeLoad` heartbeats and by what the
//! dispatcher itself sees when it sends work.
//!
//! A node that misses its heartbeats is declared dead once
//! ([`NodeTable::bury_dead`]): the work in flight there hears of it through
//! the node's death signal (the [`CancellationToken`] handed out with each
//! send), so its requesters get an answer at once instead of at their
//! deadline. A node that said it is leaving is not dead: it is forgotten
//! for placement, but its signal is never given, so its runs under way
//! finish and answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfaas_placement::{placement_allows, NodeView, RunFit};
use comfaas_schemas::{CachedInputs, NodeLoad, NodeMetrics, Placement, Tier};
use tokio_util::sync::CancellationToken;

struct Node {
    load: NodeLoad,
    last_seen: Instant,
    /// A request found nobody listening on its work subject; cleared by the
    /// next heartbeat.
    unreachable: bool,
    placed: u64,
    /// Invocations sent and not answered: token → when each should finish.
    in_flight: HashMap<u64, Instant>,
    /// Moving average of the round trip as this dispatcher sees it, ms.
    rtt_ms: Option<f64>,
    /// The round trip comes from pings (else from answers, less exact).
    pinged: bool,
    /// Answers from the node since its last report: runs the report may
    /// still count as running or queued although they are over.
    answers_since_report: u32,
    /// Given when the node is declared dead; a node heard again after
    /// that starts a new life with a new signal (work sent in its old one
    /// has been answered already).
    death: CancellationToken,
    /// Its input fetches failed lately: inputs go elsewhere until then.
    fetch_failing_until: Option<Instant>,
    /// The inputs in its cache, as last reported: taken out of the report
    /// once, so each decision shares it instead of copying a filter.
    cached_inputs: Arc<CachedInputs>,
    /// Counts the changes to what a view of it shows, but for time passing:
    /// a kept view of it is made again when this moved.
    changes: u64,
}

/// How long inputs keep away from a node after one of its fetches failed.
const FETCH_FAILURE_AVOID: Duration = Duration::from_secs(60);

/// What one answered invocation taught: it took `took_ms` at the
/// dispatcher, of which the node says the function ran `run_ms` with
/// `procs` processes on `input_bytes` of input.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The function.
    pub function: &'a str,
    /// Processes it ran with.
    pub procs: u32,
    /// Its input's size, however it travelled.
    pub input_bytes: u64,
    /// Send to answer at the dispatcher, ms.
    pub took_ms: f64,
    /// The run time the node reported, ms.
    pub run_ms: Option<f64>,
}

/// Weight of the newest sample in the round-trip moving average.
const EWMA_ALPHA: f64 = 0.3;

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| o + EWMA_ALPHA * (sample - o))
}

/// Every node heard from, alive or not, and what runs there took.
#[derive(Default)]
pub struct NodeTable {
    nodes: HashMap<String, Node>,
    dead_after: u32,
    /// function → node → processes → run time fitted to the input size
    /// (nested, so a decision looks a node up by `&str`, without making
    /// a key of two strings per node).
    runs: HashMap<String, HashMap<String, BTreeMap<u32, RunFit>>>,
    next_token: u64,
    /// Counts nodes added and removed: the order of `nodes` changed.
    members: u64,
    /// Per function, the views its last decision was made on
    /// ([`NodeTable::current_views`]).
    kept: HashMap<String, Kept>,
}

/// The views of every node for one function, kept between decisions, in
/// the order of `NodeTable::nodes`.
struct Kept {
    /// `NodeTable::members` when they were made.
    members: u64,
    /// Each node's `changes` when its view was made.
    changes: Vec<u64>,
    views: Vec<NodeView>,
}

/// Functions whose views are kept at most; past it they are all made anew.
const KEPT_FUNCTIONS: usize = 256;

impl NodeTable {
    /// A table where a node missing `dead_after` heartbeats is dead.
    pub fn new(dead_after: u32) -> Self {
        Self {
            nodes: HashMap::new(),
            dead_after,
            runs: HashMap::new(),
            next_token: 0,
            members: 0,
            kept: HashMap::new(),
        }
    }

    /// Records a heartbeat.
    pub fn heard(&mut self, mut load: NodeLoad, now: Instant) {
        if load.leaving {
            if self.nodes.remove(&load.node).is_some() {
                self.members += 1;
            }
            return;
        }
        let cached_inputs = Arc::new(std::mem::take(&mut load.cached_inputs));
        match self.nodes.get_mut(&load.node) {
            Some(node) => {
                // Restarted (faster than the dead-node bound): what was in
                // flight on its old run is lost, and hears so now.
                if !node.load.instance.is_empty() && node.load.instance != load.instance {
                    node.death.cancel();
                }
                // Its count of failed fetches grew: one failed since the
                // last report. (A restarted node counts from zero again.)
                if load.input_fetch_failures > node.load.input_fetch_failures {
                    node.fetch_failing_until = Some(now + FETCH_FAILURE_AVOID);
                }
                node.load = load;
                node.cached_inputs = cached_inputs;
                node.last_seen = now;
                node.unreachable = false;
                node.answers_since_report = 0;
                node.changes += 1;
                if node.death.is_cancelled() {
                    node.death = CancellationToken::new();
                }
            }
            None => {
                self.members += 1;
                self.nodes.insert(
                    load.node.clone(),
                    Node {
                        load,
                        last_seen: now,
                        unreachable: false,
                        placed: 0,
                        in_flight: HashMap::new(),
                        rtt_ms: None,
                        pinged: false,
                        answers_since_report: 0,
                        death: CancellationToken::new(),
                        fetch_failing_until: None,
                        cached_inputs,
                        changes: 0,
                    },
                );
            }
        }
    }

    fn alive(&self, node: &Node, now: Instant) -> bool {
        !node.unreachable && !self.silent(node, now)
    }

    /// Whether `node` missed its last `dead_after` heartbeats. Only silence
    /// kills: a node nobody listens for on its work subject for a moment
    /// (`unreachable`, say while it reconnects) may still answer what it runs.
    fn silent(&self, node: &Node, now: Instant) -> bool {
        let period = Duration::from_millis(node.load.heartbeat_ms.max(1));
        now.duration_since(node.last_seen) > period * self.dead_after
    }

    /// Declares dead every node silent for `dead_after` heartbeats and not
    /// declared so yet, giving its death signal; returns each with the
    /// count of invocations it had in flight.
    pub fn bury_dead(&mut self, now: Instant) -> Vec<(String, usize)> {
        let silent: Vec<String> = self
            .nodes
            .values()
            .filter(|n| !n.death.is_cancelled() && self.silent(n, now))
            .map(|n| n.load.node.clone())
            .collect();
        silent
            .into_iter()
            .filter_map(|name| {
                let node = self.nodes.get_mut(&name)?;
                node.death.cancel();
                Some((name, node.in_flight.len()))
            })
            .collect()
    }

    /// What one answered invocation on `node` taught.
    pub fn observe(&mut self, node: &str, seen: &Observed<'_>) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.changes += 1;
            if !n.pinged {
                let overhead = (seen.took_ms - seen.run_ms.unwrap_or(0.0)).max(0.05);
                n.rtt_ms = Some(ewma(n.rtt_ms, overhead));
            }
        }
        if let Some(run_ms) = seen.run_ms {
            let runs = self
                .runs
                .entry(seen.function.to_owned())
                .or_default()
                .entry(node.to_owned())
                .or_default();
            runs.entry(seen.procs)
                .and_modify(|fit| fit.update(seen.input_bytes, run_ms))
                .or_insert_with(|| RunFit::new(seen.input_bytes, run_ms));
        }
    }

    /// A ping to `node` came back after `rtt_ms`.
    pub fn pinged(&mut self, node: &str, rtt_ms: f64) {
        if let Some(n) = self.nodes.get_mut(node) {
            // The first ping replaces what answers taught.
            let old = n.rtt_ms.filter(|_| n.pinged);
            n.rtt_ms = Some(ewma(old, rtt_ms));
            n.pinged = true;
            n.changes += 1;
        }
    }

    /// Nodes to ping: every live one.
    pub fn live_nodes(&self, now: Instant) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| self.alive(n, now))
            .map(|n| n.load.node.clone())
            .collect()
    }

    /// The snapshot the placement model decides on, for `function`, made
    /// anew.
    pub fn views(&self, function: &str, now: Instant) -> Vec<NodeView> {
        let histories = self.runs.get(function);
        self.nodes
            .values()
            .map(|n| self.view(n, function, histories, now))
            .collect()
    }

    /// The same snapshot as [`NodeTable::views`], kept between decisions:
    /// only the views of nodes that changed since are made again, and what
    /// time alone changes (alive, avoided for failed fetches, the time left
    /// of the work in flight) is brought up to `now`. At a few hundred
    /// nodes, making every view for every decision was most of the
    /// dispatcher's work.
    pub fn current_views(&mut self, function: &str, now: Instant) -> &[NodeView] {
        let mut kept = std::mem::take(&mut self.kept);
        // The function's name is copied only the first time it is placed.
        if !kept.contains_key(function) {
            if kept.len() >= KEPT_FUNCTIONS {
                kept.clear();
            }
            let unmade = Kept {
                members: self.members.wrapping_sub(1),
                changes: Vec::new(),
                views: Vec::new(),
            };
            kept.insert(function.to_owned(), unmade);
        }
        let Some(entry) = kept.get_mut(function) else {
            self.kept = kept;
            return &[];
        };
        let histories = self.runs.get(function);
        if entry.members != self.members || entry.views.len() != self.nodes.len() {
            entry.views = self.views(function, now);
            entry.changes = self.nodes.values().map(|n| n.changes).collect();
            entry.members = self.members;
        } else {
            let each = self
                .nodes
                .values()
                .zip(entry.views.iter_mut())
                .zip(entry.changes.iter_mut());
            for ((n, view), changes) in each {
                if n.changes != *changes {
                    *view = self.view(n, function, histories, now);
                    *changes = n.changes;
                    continue;
                }
                view.alive = self.alive(n, now);
                view.fetch_failing = fetch_failing(n, now);
                if !n.in_flight.is_empty() {
                    view.ahead_ms.clear();
                    view.ahead_ms.extend(ahead_ms(n, now));
                }
            }
        }
        self.kept = kept;
        self.kept
            .get(function)
            .map_or(&[][..], |kept| kept.views.as_slice())
    }

    /// What the placement model knows of node `n` for `function`, whose
    /// run histories per node are `histories`.
    fn view(
        &self,
        n: &Node,
        function: &str,
        histories: Option<&HashMap<String, BTreeMap<u32, RunFit>>>,
        now: Instant,
    ) -> NodeView {
        let history = histories.and_then(|h| h.get(&n.load.node));
        // A report is up to a heartbeat old: runs answered since are
        // over, queued ones first.
        let over = n.answers_since_report;
        let queued = n.load.queued.saturating_sub(over);
        let running = n
            .load
            .running
            .saturating_sub(over.saturating_sub(n.load.queued));
        NodeView {
            node: n.load.node.clone(),
            tier: n.load.tier,
            alive: self.alive(n, now),
            serves: n.load.serves(function),
            install: install_state(&n.load, function),
            slots: n.load.slots,
            running,
            queued,
            queue_capacity: n.load.queue_capacity,
            in_flight: n.in_flight.len() as u32,
            ahead_ms: ahead_ms(n, now).collect(),
            max_procs: n.load.max_procs,
            rtt_ms: n.rtt_ms,
            fetch_bytes_per_s: Some(n.load.input_fetch_bytes_per_s).filter(|b| *b > 0.0),
            fetch_failing: fetch_failing(n, now),
            runs: history.map_or(Vec::new(), |h| {
                h.iter().map(|(p, fit)| (*p, *fit)).collect()
            }),
            cached_inputs: Arc::clone(&n.cached_inputs),
        }
    }

    /// Whether `function` (bundle `digest`) is on its way to some live node
    /// `placement` allows and none of those serves it yet: one is
    /// installing it, or, when `fresh` (deployed moments ago), none has
    /// reported that bundle yet (nor, perhaps, been heard from at all: a
    /// node's reports may reach this dispatcher a moment after the deployer
    /// saw it ready). A node the placement excludes serving it changes
    /// nothing: a request for `node:b` waits for b's install even while a
    /// serves it.
    pub fn coming(
        &self,
        function: &str,
        digest: &str,
        fresh: bool,
        placement: &Placement,
        now: Instant,
    ) -> bool {
        let live = || {
            self.nodes.values().filter(|n| {
                self.alive(n, now) && placement_allows(placement, &n.load.node, n.load.tier)
            })
        };
        if live().any(|n| n.load.serves(function)) {
            return false;
        }
        let states = || live().flat_map(|n| n.load.functions.iter().filter(|f| f.name == function));
        states().any(|f| f.state == comfaas_schemas::InstallState::Installing)
            || (fresh && !states().any(|f| f.digest == digest))
    }

    /// Work was sent to `node`, expected to finish at `done`; the token
    /// names it to [`NodeTable::answered`], the signal is given if the node
    /// is declared dead (never, for a node the table does not know).
    pub fn sent(&mut self, node: &str, done: Instant) -> (u64, CancellationToken) {
        self.next_token += 1;
        let death = match self.nodes.get_mut(node) {
            Some(n) => {
                n.placed += 1;
                n.changes += 1;
                n.in_flight.insert(self.next_token, done);
                n.death.clone()
            }
            None => CancellationToken::new(),
        };
        (self.next_token, death)
    }

    /// Work sent to `node` was answered (or given up).
    pub fn answered(&mut self, node: &str, token: u64) {
        if let Some(n) = self.nodes.get_mut(node) {
            if n.in_flight.remove(&token).is_some() {
                n.answers_since_report += 1;
                n.changes += 1;
            }
        }
    }

    /// Nobody listens on `node`'s work subject: stop choosing it until it
    /// is heard from again.
    pub fn unreachable(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.unreachable = true;
            n.changes += 1;
        }
    }

    /// Forgets nodes silent for a long time (a hundred heartbeats).
    pub fn prune(&mut self, now: Instant) {
        let before = self.nodes.len();
        self.nodes.retain(|_, n| {
            now.duration_since(n.last_seen)
                < Duration::from_millis(n.load.heartbeat_ms.max(1)) * 100
        });
        if self.nodes.len() != before {
            self.members += 1;
        }
    }

    /// Each node known: id, tier, runs and queue as it last reported.
    pub fn loads(&self) -> Vec<(String, Tier, u32, u32)> {
        self.nodes
            .values()
            .map(|n| {
                (
                    n.load.node.clone(),
                    n.load.tier,
                    n.load.running,
                    n.load.queued,
                )
            })
            .collect()
    }

    /// Every node known, as the metrics report lists it.
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
                in_flight: n.in_flight.len() as u32,
                rtt_ms: n.rtt_ms,
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

/// For each invocation in flight on `n`, the time left until it is
/// expected to finish, ms (0 when overdue).
fn ahead_ms(n: &Node, now: Instant) -> impl Iterator<Item = f64> + '_ {
    n.in_flight
        .values()
        .map(move |done| done.saturating_duration_since(now).as_secs_f64() * 1000.0)
}

/// Whether inputs keep away from `n` now, after one of its fetches failed.
fn fetch_failing(n: &Node, now: Instant) -> bool {
    n.fetch_failing_until.is_some_and(|until| now < until)
}

/// Why `function` is not served on a node that knows it: `installing`,
/// or `install failed: …`; `None` when it serves it or never heard of it.
fn install_state(load: &NodeLoad, function: &str) -> Option<String> {
    if load.serves(function) {
        return None;
    }
    let f = load.functions.iter().find(|f| f.name == function)?;
    Some(match &f.reason {
        Some(reason) => format!("install failed: {reason}"),
        None => "installing".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(node: &str) -> NodeLoad {
        NodeLoad {
            node: node.into(),
            slots: 1,
            queue_capacity: 1,
            max_procs: 1,
            cores: 1,
            heartbeat_ms: 1000,
            ..NodeLoad::default()
        }
    }

    fn seen(
        function: &str,
        procs: u32,
        input_bytes: u64,
        took_ms: f64,
        run_ms: Option<f64>,
    ) -> Observed<'_> {
        Observed {
            function,
            procs,
            input_bytes,
            took_ms,
            run_ms,
        }
    }

    /// A load of `node` (tier `tier`) with `function` ready (served) or
    /// still installing.
    fn with_function(node: &str, tier: Tier, function: &str, ready: bool) -> NodeLoad {
        use comfaas_schemas::{FunctionState, InstallState};
        NodeLoad {
            tier,
            functions: vec![FunctionState {
                name: function.into(),
                version: "1".into(),
                digest: "d1".into(),
                state: if ready {
                    InstallState::Ready
                } else {
                    InstallState::Installing
                },
                reason: None,
                serving: ready.then(|| "1".to_owned()),
                install: None,
            }],
            ..load(node)
        }
    }

    /// A request placed on a node still installing waits for it, though
    /// another node serves the function; unplaced, it goes to the one
    /// serving (nothing is coming).
    #[test]
    fn an_install_is_awaited_by_the_requests_its_placement_allows() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(with_function("a", Tier::Cloud, "f", true), t0);
        table.heard(with_function("b", Tier::Edge, "f", false), t0);
        let coming = |placement: &Placement| table.coming("f", "d1", false, placement, t0);
        assert!(coming(&Placement::Node("b".into())));
        assert!(coming(&Placement::Edge));
        assert!(!coming(&Placement::Auto));
        assert!(!coming(&Placement::Cloud));
        assert!(!coming(&Placement::Node("a".into())));
        // A node the placement names that was never heard of: not coming,
        // unless the deploy is fresh.
        assert!(!coming(&Placement::Node("c".into())));
        assert!(table.coming("f", "d1", true, &Placement::Node("c".into()), t0));
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
        table.observe("a", &seen("f", 1, 0, 12.0, Some(10.0)));
        let view = &table.views("f", t0)[0];
        assert_eq!(view.rtt_ms, Some(2.0));
        assert_eq!(view.runs, vec![(1, RunFit::new(0, 10.0))]);
        // Runs are kept per process count, each a fit to the input size
        // (a moving average while the size does not change).
        table.observe("a", &seen("f", 2, 0, 7.0, Some(6.0)));
        table.observe("a", &seen("f", 1, 0, 12.0, Some(20.0)));
        let view = &table.views("f", t0)[0];
        let predicted: Vec<(u32, f64)> =
            view.runs.iter().map(|(p, f)| (*p, f.predict(0))).collect();
        assert_eq!(predicted, vec![(1, 10.0 + 0.3 * (20.0 - 10.0)), (2, 6.0)]);
        // Larger inputs that took longer teach a slope.
        table.observe("a", &seen("f", 2, 10_000_000, 70.0, Some(66.0)));
        let fit = table.views("f", t0)[0].runs[1].1;
        assert!(fit.predict(20_000_000) > fit.predict(10_000_000), "{fit:?}");
        assert!(table.views("g", t0)[0].runs.is_empty(), "per function");
        // Pings replace round trips taught by answers, which then stop counting.
        table.pinged("a", 30.0);
        table.observe("a", &seen("f", 1, 0, 100.0, Some(10.0)));
        assert_eq!(table.views("f", t0)[0].rtt_ms, Some(30.0));
    }

    #[test]
    fn in_flight_work_counts_until_answered() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        let (first, _) = table.sent("a", t0 + Duration::from_millis(500));
        let _second = table.sent("a", t0 + Duration::from_millis(900));
        let view = &table.views("f", t0 + Duration::from_millis(100))[0];
        assert_eq!(view.in_flight, 2);
        let mut ahead = view.ahead_ms.clone();
        ahead.sort_by(f64::total_cmp);
        assert_eq!(ahead, vec![400.0, 800.0]);
        table.answered("a", first);
        let view = &table.views("f", t0 + Duration::from_millis(1000))[0];
        assert_eq!((view.in_flight, view.ahead_ms.clone()), (1, vec![0.0]));
    }

    #[test]
    fn answers_after_a_report_make_it_count_less() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        let (token, _) = table.sent("a", t0);
        assert_eq!(token, 1);
        table.heard(
            NodeLoad {
                running: 1,
                queued: 1,
                ..load("a")
            },
            t0,
        );
        let (first, _) = table.sent("a", t0);
        let (second, _) = table.sent("a", t0);
        table.answered("a", first);
        let view = &table.views("f", t0)[0];
        assert_eq!((view.running, view.queued), (1, 0));
        table.answered("a", second);
        let view = &table.views("f", t0)[0];
        assert_eq!((view.running, view.queued, view.in_flight), (0, 0, 0));
        // The next report is the truth again.
        table.heard(
            NodeLoad {
                running: 1,
                ..load("a")
            },
            t0,
        );
        assert_eq!(table.views("f", t0)[0].running, 1);
    }

    #[test]
    fn a_failed_input_fetch_keeps_inputs_away_for_a_while() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        let failures = |n: u64| NodeLoad {
            input_fetch_failures: n,
            ..load("a")
        };
        // Failures from before this dispatcher heard of the node: unknown when.
        table.heard(failures(2), t0);
        assert!(!table.views("f", t0)[0].fetch_failing);
        table.heard(failures(3), t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(2);
        table.heard(failures(3), t1);
        assert!(table.views("f", t1)[0].fetch_failing);
        let later = t0 + Duration::from_secs(1) + FETCH_FAILURE_AVOID;
        table.heard(failures(3), later);
        assert!(
            !table.views("f", later)[0].fetch_failing,
            "for a while only"
        );
    }

    /// The inputs a node reports in its cache reach the views, and the
    /// next report replaces them.
    #[test]
    fn the_inputs_a_node_holds_are_as_last_reported() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        let holding = |digests: &[&str]| NodeLoad {
            cached_inputs: CachedInputs::of(digests),
            ..load("a")
        };
        table.heard(holding(&["SHA-256=one"]), t0);
        let view = &table.views("f", t0)[0];
        assert!(view.cached_inputs.holds("SHA-256=one"));
        table.heard(holding(&["SHA-256=two"]), t0);
        let view = &table.views("f", t0)[0];
        assert!(!view.cached_inputs.holds("SHA-256=one"), "evicted since");
        assert!(view.cached_inputs.holds("SHA-256=two"));
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

    #[test]
    fn a_silent_node_is_declared_dead_once_and_its_work_hears_it() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        table.heard(load("b"), t0);
        let (_, on_a) = table.sent("a", t0);
        let (_, on_b) = table.sent("b", t0);
        // b keeps reporting; a falls silent.
        table.heard(load("b"), t0 + Duration::from_millis(2500));
        assert!(table.bury_dead(t0 + Duration::from_millis(2900)).is_empty());
        assert!(!on_a.is_cancelled());
        let buried = table.bury_dead(t0 + Duration::from_millis(3100));
        assert_eq!(buried, vec![("a".to_owned(), 1)]);
        assert!(
            on_a.is_cancelled(),
            "work in flight on a hears of its death"
        );
        assert!(!on_b.is_cancelled());
        assert!(
            table.bury_dead(t0 + Duration::from_millis(4000)).is_empty(),
            "declared dead once"
        );
        // Heard again: a new life, whose work is not born dead.
        table.heard(load("a"), t0 + Duration::from_millis(5000));
        let (_, again) = table.sent("a", t0 + Duration::from_millis(5000));
        assert!(!again.is_cancelled());
        assert!(table.views("f", t0 + Duration::from_millis(5000))[0].alive);
    }

    #[test]
    fn a_node_heard_from_a_new_instance_restarted_and_its_work_hears_it() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        let life = |instance: &str| NodeLoad {
            instance: instance.to_owned(),
            ..load("a")
        };
        table.heard(life("first"), t0);
        let (_, on_first) = table.sent("a", t0);
        table.heard(life("first"), t0 + Duration::from_millis(1000));
        assert!(!on_first.is_cancelled(), "the same run reporting again");
        // Killed and started again within the dead-node bound.
        table.heard(life("second"), t0 + Duration::from_millis(1500));
        assert!(
            on_first.is_cancelled(),
            "work on the old run hears it is lost"
        );
        let (_, on_second) = table.sent("a", t0 + Duration::from_millis(1500));
        assert!(!on_second.is_cancelled());
        assert!(table.views("f", t0 + Duration::from_millis(1500))[0].alive);
    }

    #[test]
    fn a_leaving_or_unreachable_node_is_not_dead() {
        let mut table = NodeTable::new(3);
        let t0 = Instant::now();
        table.heard(load("a"), t0);
        table.heard(load("b"), t0);
        let (_, on_a) = table.sent("a", t0);
        let (_, on_b) = table.sent("b", t0);
        // a drains: it stops reporting after saying so, and its runs finish.
        table.heard(
            NodeLoad {
                leaving: true,
                ..load("a")
            },
            t0,
        );
        // b is briefly without a listener (reconnecting), still reporting.
        table.heard(load("b"), t0 + Duration::from_millis(2000));
        table.unreachable("b");
        assert!(table.bury_dead(t0 + Duration::from_millis(4900)).is_empty());
        assert!(!on_b.is_cancelled(), "unreachable for a moment is not dead");
        assert_eq!(
            table.bury_dead(t0 + Duration::from_millis(9000)),
            vec![("b".to_owned(), 1)],
            "silence is"
        );
        assert!(!on_a.is_cancelled(), "a leaving node's runs go on");
    }

    /// The views kept between decisions are, after any sequence of what
    /// happens to the table (reports, sends, answers, pings, nodes coming,
    /// leaving, going silent, pruned, time passing), the views made anew.
    #[test]
    fn kept_views_are_always_the_views_made_anew() {
        use comfaas_schemas::{FunctionState, InstallState};
        use rand::{Rng, SeedableRng};

        let names = ["a", "b", "c", "d", "e"];
        let functions = ["f", "g"];
        let report = |node: &str, rng: &mut rand::rngs::StdRng| NodeLoad {
            running: rng.random_range(0..3),
            queued: rng.random_range(0..3),
            slots: rng.random_range(1..4),
            input_fetch_failures: rng.random_range(0..2),
            leaving: rng.random_bool(0.05),
            functions: vec![FunctionState {
                name: "f".into(),
                version: "1".into(),
                digest: "d".into(),
                state: if rng.random_bool(0.8) {
                    InstallState::Ready
                } else {
                    InstallState::Installing
                },
                reason: None,
                serving: rng.random_bool(0.8).then(|| "1".to_owned()),
                install: None,
            }],
            ..load(node)
        };
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut table = NodeTable::new(3);
            let mut now = Instant::now();
            let mut tokens: Vec<(String, u64)> = Vec::new();
            for step in 0..400 {
                let node = names[rng.random_range(0..names.len())];
                match rng.random_range(0..9) {
                    0 | 1 => table.heard(report(node, &mut rng), now),
                    2 => {
                        let done = now + Duration::from_millis(rng.random_range(0..3000));
                        let (token, _) = table.sent(node, done);
                        tokens.push((node.to_owned(), token));
                    }
                    3 if !tokens.is_empty() => {
                        let (node, token) = tokens.swap_remove(rng.random_range(0..tokens.len()));
                        table.answered(&node, token);
                    }
                    4 => table.observe(
                        node,
                        &seen(
                            functions[rng.random_range(0..2)],
                            rng.random_range(1..3),
                            rng.random_range(0..1000),
                            rng.random_range(1.0..50.0),
                            Some(rng.random_range(0.5..40.0)),
                        ),
                    ),
                    5 => table.pinged(node, rng.random_range(0.1..5.0)),
                    6 => table.unreachable(node),
                    7 => now += Duration::from_millis(rng.random_range(0..1500)),
                    _ => {
                        let _ = table.bury_dead(now);
                        if rng.random_bool(0.1) {
                            now += Duration::from_secs(120);
                            table.prune(now);
                        }
                    }
                }
                let function = functions[rng.random_range(0..2)];
                let fresh = table.views(function, now);
                let kept = table.current_views(function, now).to_vec();
                assert_eq!(kept, fresh, "seed {seed}, step {step}, {function}");
            }
        }
    }
}
