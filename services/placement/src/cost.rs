//! The completion-time estimate of one job at one node: queue wait,
//! contention, input transfer, round trip and run time, with the
//! fallbacks assumed where the node has measured nothing yet (the fastest
//! run time measured elsewhere, its tier's fetch throughput, a first
//! guess).

use comfaas_schemas::{EstimateParts, Tier};

use crate::view::NodeView;

/// Assumed round trip to a node not measured yet, ms.
const DEFAULT_RTT_MS: f64 = 1.0;
/// Assumed input fetch throughput of an edge node that has fetched nothing
/// yet, when no other edge node has either: the edge's store is near.
const EDGE_FETCH_BYTES_PER_S: f64 = 100e6;
/// The same for a cloud node: the input crosses a WAN link (the paper's
/// edge uplink is under 100 Mbit/s).
const CLOUD_FETCH_BYTES_PER_S: f64 = 10e6;
/// Round trips an input fetch takes before data flows (object info, then
/// a consumer).
const FETCH_ROUND_TRIPS: f64 = 2.0;
/// Run time assumed for a function no node has a history of, ms.
const FIRST_RUN_MS: f64 = 100.0;
/// Slow-down of a run per job at the node, shared by its slots: the jobs
/// running or waiting there share its cores a little, so each adds this
/// fraction of the run time divided by the slots
/// (`run × CONTENTION × backlog ÷ slots`).
const CONTENTION: f64 = 0.1;

/// Completion-time estimates of one job on the nodes eligible for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Estimator<'a> {
    /// Bytes of input the node must fetch.
    fetch_bytes: u64,
    /// That input's digest: a node holding it fetches nothing.
    fetch_digest: Option<&'a str>,
    /// Bytes of input however it travels: what run time depends on.
    run_bytes: u64,
    /// The least run time × processes any eligible node has a history
    /// of, ms: what a node without history is assumed to take.
    fastest_work: Option<f64>,
    /// Fetch throughput assumed for an edge node that never fetched.
    edge_fetch_bytes_per_s: f64,
    /// Fetch throughput assumed for a cloud node that never fetched.
    cloud_fetch_bytes_per_s: f64,
}

impl<'a> Estimator<'a> {
    /// Estimates for a job with `fetch_bytes` of input to fetch (of
    /// digest `fetch_digest`, when known) and `run_bytes` of input in all,
    /// on `eligible` nodes with the process count each would run it with;
    /// `nodes` are all the nodes known, whose measured fetch throughputs
    /// stand in for those of their tier that have none.
    pub(crate) fn new(
        nodes: &[NodeView],
        eligible: &[(&NodeView, u32)],
        fetch_bytes: u64,
        run_bytes: u64,
        fetch_digest: Option<&'a str>,
    ) -> Self {
        // A node without history of the function is assumed as fast as the
        // fastest that has one (at its own process count), else a first guess.
        let fastest_work = eligible
            .iter()
            .filter_map(|(n, p)| Some(run_ms(n, *p, run_bytes)? * f64::from(*p)))
            .min_by(f64::total_cmp);
        Self {
            fetch_bytes,
            fetch_digest,
            run_bytes,
            fastest_work,
            edge_fetch_bytes_per_s: tier_fetch_bytes_per_s(nodes, Tier::Edge),
            cloud_fetch_bytes_per_s: tier_fetch_bytes_per_s(nodes, Tier::Cloud),
        }
    }

    /// Whether some eligible node has a history of the function, so that
    /// the others' estimates rest on a measured run time.
    pub(crate) fn knows_a_run_time(&self) -> bool {
        self.fastest_work.is_some()
    }

    /// Estimated completion time of the job at `view` with `procs`
    /// processes, in its parts (ms; [`EstimateParts::total_ms`] adds them
    /// up), as decisions report them.
    pub(crate) fn parts(&self, view: &NodeView, procs: u32) -> EstimateParts {
        let fallback_run_ms = self
            .fastest_work
            .map_or(FIRST_RUN_MS, |w| w / f64::from(procs));
        let fallback_fetch_bytes_per_s = match view.tier {
            Tier::Edge => self.edge_fetch_bytes_per_s,
            Tier::Cloud => self.cloud_fetch_bytes_per_s,
        };
        let run = run_ms(view, procs, self.run_bytes).unwrap_or(fallback_run_ms);
        let slots = f64::from(view.slots.max(1));
        // The jobs at the node share its cores a little.
        let contention = run * CONTENTION * f64::from(view.backlog()) / slots;
        let rtt = view.rtt_ms.unwrap_or(DEFAULT_RTT_MS);
        // A fetch takes a few round trips before data flows, then the
        // bytes; a node holding the input in its cache fetches nothing.
        let transfer = if self.fetch_bytes == 0 || view.holds(self.fetch_digest) {
            0.0
        } else {
            FETCH_ROUND_TRIPS * rtt
                + self.fetch_bytes as f64
                    / view
                        .fetch_bytes_per_s
                        .filter(|b| *b > 0.0)
                        .unwrap_or(fallback_fetch_bytes_per_s)
                    * 1000.0
        };
        EstimateParts {
            wait_ms: view.wait_ms(run),
            contention_ms: contention,
            transfer_ms: transfer,
            rtt_ms: rtt,
            run_ms: run,
        }
    }
}

/// Run time of a job of `procs` processes and `input_bytes` of input at
/// `view`: fitted at that count, else from the nearest count measured,
/// assuming it scales with the process count; `None` without history.
fn run_ms(view: &NodeView, procs: u32, input_bytes: u64) -> Option<f64> {
    let procs = procs.max(1);
    view.runs
        .iter()
        .min_by_key(|(p, _)| p.abs_diff(procs))
        .map(|(p, fit)| fit.predict(input_bytes) * f64::from((*p).max(1)) / f64::from(procs))
}

/// Fetch throughput assumed for a node of `tier` that never fetched: the
/// average of those of its tier among `nodes` that did, else a default
/// for the tier.
fn tier_fetch_bytes_per_s(nodes: &[NodeView], tier: Tier) -> f64 {
    let (sum, known) = nodes
        .iter()
        .filter(|n| n.tier == tier)
        .filter_map(|n| n.fetch_bytes_per_s.filter(|b| *b > 0.0))
        .fold((0.0, 0u32), |(sum, known), b| (sum + b, known + 1));
    if known == 0 {
        match tier {
            Tier::Edge => EDGE_FETCH_BYTES_PER_S,
            Tier::Cloud => CLOUD_FETCH_BYTES_PER_S,
        }
    } else {
        sum / f64::from(known)
    }
}
