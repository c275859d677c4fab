//! The placement model: given a snapshot of the nodes a dispatcher knows
//! and one invocation, which node runs it, and with how many processes.
//!
//! Architecture invariant: a pure function of its inputs (plus a random
//! source for tie-breaks). It knows nothing of NATS, processes or clocks,
//! so every decision can be replayed from data in a test.
//!
//! The model: among eligible nodes (placement filter, alive, serving the
//! function, `max_procs` covers the job's fewest processes, room in the
//! queue), pick the smallest estimated completion time
//!
//! ```text
//! queue wait (when the jobs ahead free a slot) + input transfer (two round
//! trips, then bytes ÷ the node's fetch throughput) + round trip
//! (measured) + run time (per function, node and process count, a line
//! in the input's size fitted to recent runs, see [`RunFit`]; from the
//! nearest count, scaled, when this one was never run there)
//! ```
//!
//! with a random pick among estimates within 2% of the best, so several
//! dispatchers do not herd onto one node. A job with a process range runs
//! on each node with as many processes as the node allows.
//!
//! A node that never fetched an input is assumed to fetch as fast as the
//! other nodes of its tier on average (else 100 MB/s at the edge, 10 MB/s
//! in the cloud, across a WAN link).
//!
//! Learning: a node with no history of the function is estimated with the
//! best run time measured elsewhere (optimism), and is *explored*, tried
//! once, when that estimate is within half again of the best; after one
//! answer it is judged by what it measured. A function no node has run
//! starts from a first guess.

use comfaas_schemas::{ErrorCode, Placement, Procs, Tier};
use rand::Rng;

/// What the dispatcher knows of one node at decision time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub node: String,
    /// Edge or cloud.
    pub tier: Tier,
    /// Heartbeat seen recently and not marked unreachable.
    pub alive: bool,
    /// The function is installed and served there.
    pub serves: bool,
    /// Runs allowed at once.
    pub slots: u32,
    /// Runs under way (as last reported).
    pub running: u32,
    /// Runs waiting (as last reported).
    pub queued: u32,
    /// Queue room beyond the slots.
    pub queue_capacity: u32,
    /// Invocations this dispatcher sent there that are not answered yet.
    pub in_flight: u32,
    /// For each of those, the time left until it is expected to finish, ms
    /// (as estimated when it was placed; 0 when overdue).
    pub ahead_ms: Vec<f64>,
    /// One-minute load per core.
    pub cpu_load: f32,
    /// Most MPI processes one job may use.
    pub max_procs: u32,
    /// Round trip to the node as measured by the dispatcher, ms.
    pub rtt_ms: Option<f64>,
    /// The node's input fetch throughput, bytes per second.
    pub fetch_bytes_per_s: Option<f64>,
    /// This function's run time here, per process count it ran with:
    /// `(procs, fit)`.
    pub runs: Vec<(u32, RunFit)>,
}

/// Run time as a function of input size, fitted to recent runs: an
/// exponentially weighted least-squares line (recent runs weigh most, as
/// in a moving average). While every run had about the same input size
/// the line is flat, and the fit is the moving average of run times; once
/// sizes vary it learns how run time grows with the input, so a large
/// input is not estimated from small ones. The slope is never negative, is
/// learnt only from sizes that spread at least 1 MB (so that run time
/// noise on near-equal inputs does not pass for one), and is kept while
/// later runs all have one size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFit {
    /// Weighted mean input size, bytes.
    mean_bytes: f64,
    /// Weighted mean run time, ms.
    mean_ms: f64,
    /// Weighted variance of input sizes, bytes².
    var_bytes: f64,
    /// Weighted covariance of input size and run time.
    cov: f64,
    /// The last slope learnt from well-spread sizes, ms per byte.
    slope: f64,
}

/// Weight of the newest run in a [`RunFit`].
pub const RUN_FIT_ALPHA: f64 = 0.3;

/// Input sizes must spread at least this much (standard deviation, bytes)
/// before a slope is fitted: below it, run time noise would pass for one.
const SLOPE_MIN_SPREAD_BYTES: f64 = 1e6;

impl RunFit {
    /// A first run: `ms` with `input_bytes` of input.
    pub fn new(input_bytes: u64, ms: f64) -> Self {
        Self {
            mean_bytes: input_bytes as f64,
            mean_ms: ms,
            var_bytes: 0.0,
            cov: 0.0,
            slope: 0.0,
        }
    }

    /// Learns from one more run.
    pub fn update(&mut self, input_bytes: u64, ms: f64) {
        let a = RUN_FIT_ALPHA;
        let dx = input_bytes as f64 - self.mean_bytes;
        let dy = ms - self.mean_ms;
        self.mean_bytes += a * dx;
        self.mean_ms += a * dy;
        self.var_bytes = (1.0 - a) * (self.var_bytes + a * dx * dx);
        self.cov = (1.0 - a) * (self.cov + a * dx * dy);
        if self.var_bytes.sqrt() >= SLOPE_MIN_SPREAD_BYTES {
            self.slope = (self.cov / self.var_bytes).max(0.0);
        }
    }

    /// Milliseconds per input byte (0 until input sizes varied).
    pub fn ms_per_byte(&self) -> f64 {
        self.slope
    }

    /// Expected run time with `input_bytes` of input, ms.
    pub fn predict(&self, input_bytes: u64) -> f64 {
        let ms = self.mean_ms + self.ms_per_byte() * (input_bytes as f64 - self.mean_bytes);
        // Below the runs seen, a line may cross zero: no run is free.
        ms.max(self.mean_ms * 0.05).max(0.0)
    }
}

impl NodeView {
    /// Work at the node as best known: its report or our own count, whichever is larger
    /// (a report is up to a heartbeat old; our count is current but only ours).
    fn backlog(&self) -> u32 {
        self.running.saturating_add(self.queued).max(self.in_flight)
    }

    fn has_room(&self) -> bool {
        self.backlog() < self.slots.saturating_add(self.queue_capacity)
    }

    /// Run time of a job of `procs` processes and `input_bytes` of input
    /// here: fitted at that count, else from the nearest count measured,
    /// assuming it scales with the process count.
    fn run_ms(&self, procs: u32, input_bytes: u64) -> Option<f64> {
        let procs = procs.max(1);
        self.runs
            .iter()
            .min_by_key(|(p, _)| p.abs_diff(procs))
            .map(|(p, fit)| fit.predict(input_bytes) * f64::from((*p).max(1)) / f64::from(procs))
    }

    /// Time until a slot is free for one more job, given `run` ms as the
    /// length of jobs ahead that this dispatcher did not place.
    fn wait_ms(&self, run: f64) -> f64 {
        let slots = self.slots.max(1) as usize;
        let backlog = self.backlog() as usize;
        if backlog < slots {
            return 0.0;
        }
        // Ours: we know when each should finish. A slot frees when all but
        // `slots - 1` of the jobs ahead are done (first in, first out).
        let mut ours = self.ahead_ms.clone();
        ours.sort_by(f64::total_cmp);
        let others = backlog.saturating_sub(ours.len());
        let ours_wait = if ours.len() >= slots {
            ours[ours.len() - slots]
        } else {
            0.0
        };
        // Others': each holds a slot for about one run, shared by the slots.
        ours_wait + run * others as f64 / slots as f64
    }

    /// Estimated completion time of a job of `procs` processes here, given
    /// the run time to assume when this node has no history of the
    /// function.
    fn estimate_ms(
        &self,
        procs: u32,
        request: &Request<'_>,
        fallback_run_ms: f64,
        fallback_fetch_bytes_per_s: f64,
    ) -> f64 {
        let input_bytes = request.input_bytes;
        let run = self
            .run_ms(procs, request.run_input_bytes())
            .unwrap_or(fallback_run_ms);
        let slots = f64::from(self.slots.max(1));
        // Busy slots also share the node's cores a little.
        let contention = run * CONTENTION * f64::from(self.backlog()) / slots;
        let rtt = self.rtt_ms.unwrap_or(DEFAULT_RTT_MS);
        // A fetch takes a few round trips before data flows, then the bytes.
        let transfer = if input_bytes == 0 {
            0.0
        } else {
            FETCH_ROUND_TRIPS * rtt
                + input_bytes as f64
                    / self
                        .fetch_bytes_per_s
                        .filter(|b| *b > 0.0)
                        .unwrap_or(fallback_fetch_bytes_per_s)
                    * 1000.0
        };
        self.wait_ms(run) + contention + transfer + rtt + run
    }
}

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
/// Slow-down of a run per busy slot sharing the node's cores.
const CONTENTION: f64 = 0.1;
/// Estimates within this fraction of the best are a tie.
const TIE: f64 = 0.02;
/// A node never tried for the function is tried when its (optimistic)
/// estimate is within this fraction of the best.
const EXPLORE: f64 = 0.5;

/// The invocation being placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Function name.
    pub function: &'a str,
    /// Where it must or may run.
    pub placement: &'a Placement,
    /// MPI processes it takes (exactly 1 for a plain run).
    pub procs: Procs,
    /// Bytes of input the node must fetch (0 when it travels in the message).
    pub input_bytes: u64,
    /// Bytes of input that travel in the message.
    pub inline_bytes: u64,
}

impl Request<'_> {
    /// The input's size, however it travels: what run time depends on.
    pub fn run_input_bytes(&self) -> u64 {
        self.input_bytes.saturating_add(self.inline_bytes)
    }
}

/// The chosen node and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Node id.
    pub node: String,
    /// Processes to run with there.
    pub procs: u32,
    /// The reason in words, for logs and metrics.
    pub reason: String,
    /// Its estimated completion time, ms.
    pub estimate_ms: f64,
    /// Its estimated run time (the part of the estimate spent running), ms.
    pub run_ms: f64,
    /// Every eligible node's estimate, ms, best first.
    pub candidates: Vec<(String, f64)>,
}

/// No node can take the invocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlacementError {
    /// The code to answer with.
    pub code: ErrorCode,
    /// What is missing, for the requester.
    pub message: String,
}

/// One eligible node, costed.
struct Costed<'a> {
    view: &'a NodeView,
    procs: u32,
    run_ms: f64,
    estimate_ms: f64,
    /// Never ran the function: a candidate for exploration.
    untried: bool,
}

/// Picks the node for `request` among `nodes`.
pub fn choose(
    nodes: &[NodeView],
    request: &Request<'_>,
    rng: &mut impl Rng,
) -> Result<Decision, PlacementError> {
    let unavailable = |message: String| PlacementError {
        code: ErrorCode::Unavailable,
        message,
    };
    let function = request.function;
    let placed: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| match request.placement {
            Placement::Auto => true,
            Placement::Edge => n.tier == Tier::Edge,
            Placement::Cloud => n.tier == Tier::Cloud,
            Placement::Node(id) => &n.node == id,
        })
        .collect();
    let where_ = match request.placement {
        Placement::Auto => String::new(),
        p => format!(" (placement `{p}`)"),
    };
    if placed.is_empty() {
        return Err(unavailable(format!("no node matches{where_}")));
    }
    let live: Vec<&NodeView> = placed.into_iter().filter(|n| n.alive).collect();
    if live.is_empty() {
        return Err(unavailable(format!("no live node{where_}")));
    }
    let ready: Vec<&NodeView> = live.into_iter().filter(|n| n.serves).collect();
    if ready.is_empty() {
        return Err(unavailable(format!(
            "no live node{where_} has function `{function}` installed"
        )));
    }
    let sized: Vec<(&NodeView, u32)> = ready
        .into_iter()
        .filter_map(|n| Some((n, request.procs.fit(n.max_procs.max(1))?)))
        .collect();
    if sized.is_empty() {
        return Err(unavailable(format!(
            "no live node{where_} allows {} processes for `{function}`",
            request.procs.min
        )));
    }
    let roomy: Vec<(&NodeView, u32)> = sized.into_iter().filter(|(n, _)| n.has_room()).collect();
    if roomy.is_empty() {
        return Err(PlacementError {
            code: ErrorCode::TooManyRequests,
            message: format!("every node{where_} serving `{function}` has a full queue"),
        });
    }
    // A node without history of the function is assumed as fast as the
    // fastest that has one (at its own process count), else a first guess.
    let run_bytes = request.run_input_bytes();
    let fastest_work = roomy
        .iter()
        .filter_map(|(n, p)| Some(n.run_ms(*p, run_bytes)? * f64::from(*p)))
        .min_by(f64::total_cmp);
    // A node that never fetched an input is assumed as fast as the others
    // of its tier on average, else a default for its tier.
    let tier_fetch = |tier: Tier| {
        let known: Vec<f64> = nodes
            .iter()
            .filter(|n| n.tier == tier)
            .filter_map(|n| n.fetch_bytes_per_s.filter(|b| *b > 0.0))
            .collect();
        if known.is_empty() {
            match tier {
                Tier::Edge => EDGE_FETCH_BYTES_PER_S,
                Tier::Cloud => CLOUD_FETCH_BYTES_PER_S,
            }
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        }
    };
    let (edge_fetch, cloud_fetch) = (tier_fetch(Tier::Edge), tier_fetch(Tier::Cloud));
    let mut costed: Vec<Costed<'_>> = roomy
        .iter()
        .map(|&(view, procs)| {
            let fallback = fastest_work.map_or(FIRST_RUN_MS, |w| w / f64::from(procs));
            let fetch = match view.tier {
                Tier::Edge => edge_fetch,
                Tier::Cloud => cloud_fetch,
            };
            Costed {
                view,
                procs,
                run_ms: view.run_ms(procs, run_bytes).unwrap_or(fallback),
                estimate_ms: view.estimate_ms(procs, request, fallback, fetch),
                untried: view.runs.is_empty(),
            }
        })
        .collect();
    costed.sort_by(|a, b| a.estimate_ms.total_cmp(&b.estimate_ms));
    let best = costed[0].estimate_ms;
    let candidates: Vec<(String, f64)> = costed
        .iter()
        .map(|c| (c.view.node.clone(), c.estimate_ms))
        .collect();
    // Learn: try a node never tried (and not being tried now) when it may
    // well be the best, once another node has taught a run time.
    let explore = fastest_work.and_then(|_| {
        costed.iter().position(|c| {
            c.untried && c.view.in_flight == 0 && c.estimate_ms <= best * (1.0 + EXPLORE)
        })
    });
    let (index, why) = match explore {
        Some(i) => (i, "exploring: never ran it yet, "),
        _ => {
            let ties = costed
                .iter()
                .filter(|c| c.estimate_ms <= best * (1.0 + TIE))
                .count();
            (rng.random_range(0..ties), "")
        }
    };
    let chosen = &costed[index];
    Ok(Decision {
        reason: format!(
            "{why}estimated {:.1} ms with {} process(es), best of {} candidate(s){where_}",
            chosen.estimate_ms,
            chosen.procs,
            candidates.len()
        ),
        node: chosen.view.node.clone(),
        procs: chosen.procs,
        estimate_ms: chosen.estimate_ms,
        run_ms: chosen.run_ms,
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// A node from one line: `id tier running/slots [flags]`, where flags
    /// are `dead`, `missing` (function not installed), `full` (queue full),
    /// `procs=N` (max_procs), `inflight=N`, `ahead=MS,MS` (our jobs there
    /// and their time left), `rtt=MS`, `mbps=MB/s` fetch, `run=MS[@PROCS]`
    /// history (repeatable), `runs=MB:MS,MB:MS…[@PROCS]` history of runs
    /// with inputs of those sizes, oldest first.
    fn node(line: &str) -> NodeView {
        let mut parts = line.split_whitespace();
        let id = parts.next().unwrap();
        let tier = parts.next().unwrap().parse().unwrap();
        let (running, slots) = parts.next().unwrap().split_once('/').unwrap();
        let mut view = NodeView {
            node: id.into(),
            tier,
            alive: true,
            serves: true,
            slots: slots.parse().unwrap(),
            running: running.parse().unwrap(),
            queued: 0,
            queue_capacity: 4,
            in_flight: 0,
            ahead_ms: Vec::new(),
            cpu_load: 0.0,
            max_procs: 4,
            rtt_ms: None,
            fetch_bytes_per_s: None,
            runs: Vec::new(),
        };
        for flag in parts {
            match flag {
                "dead" => view.alive = false,
                "missing" => view.serves = false,
                "full" => view.queued = view.slots + view.queue_capacity,
                f if f.starts_with("procs=") => view.max_procs = f[6..].parse().unwrap(),
                f if f.starts_with("inflight=") => view.in_flight = f[9..].parse().unwrap(),
                f if f.starts_with("rtt=") => view.rtt_ms = Some(f[4..].parse().unwrap()),
                f if f.starts_with("mbps=") => {
                    view.fetch_bytes_per_s = Some(f[5..].parse::<f64>().unwrap() * 1e6)
                }
                f if f.starts_with("run=") => {
                    let (ms, procs) = f[4..].split_once('@').unwrap_or((&f[4..], "1"));
                    view.runs
                        .push((procs.parse().unwrap(), RunFit::new(0, ms.parse().unwrap())));
                }
                f if f.starts_with("runs=") => {
                    let (runs, procs) = f[5..].split_once('@').unwrap_or((&f[5..], "1"));
                    let mut fit: Option<RunFit> = None;
                    for run in runs.split(',') {
                        let (mb, ms) = run.split_once(':').unwrap();
                        let bytes = mb.parse::<u64>().unwrap() * 1_000_000;
                        let ms = ms.parse().unwrap();
                        match &mut fit {
                            Some(fit) => fit.update(bytes, ms),
                            None => fit = Some(RunFit::new(bytes, ms)),
                        }
                    }
                    view.runs.push((procs.parse().unwrap(), fit.unwrap()));
                }
                f if f.starts_with("ahead=") => {
                    view.ahead_ms = f[6..].split(',').map(|v| v.parse().unwrap()).collect();
                    view.in_flight = view.ahead_ms.len() as u32;
                }
                other => panic!("unknown flag {other}"),
            }
        }
        view
    }

    /// `expect` is a node id, or `error NNN` with the expected code.
    fn check(nodes: &[&str], placement: &str, procs: u32, expect: &str) {
        check_input(nodes, placement, procs, 0, expect)
    }

    /// As [`check`], for an input of `input_mb` megabytes to fetch.
    fn check_input(nodes: &[&str], placement: &str, procs: u32, input_mb: u64, expect: &str) {
        check_full(nodes, placement, &procs.to_string(), input_mb, expect)
    }

    /// As [`check`], for an input of `inline_mb` megabytes in the message.
    fn check_inline(nodes: &[&str], inline_mb: u64, expect: &str) {
        let nodes: Vec<NodeView> = nodes.iter().map(|l| node(l)).collect();
        let request = Request {
            function: "f",
            placement: &Placement::Auto,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: inline_mb * 1_000_000,
        };
        for seed in 0..8 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let got = choose(&nodes, &request, &mut rng).unwrap().node;
            assert_eq!(got, expect, "nodes {nodes:?}, input {inline_mb} MB");
        }
    }

    /// As [`check`], for processes `procs` (`4` or `4-16`); `expect` may
    /// end in `/N`, the processes the node must run it with.
    fn check_full(nodes: &[&str], placement: &str, procs: &str, input_mb: u64, expect: &str) {
        let nodes: Vec<NodeView> = nodes.iter().map(|l| node(l)).collect();
        let placement: Placement = placement.parse().unwrap();
        let request = Request {
            function: "f",
            placement: &placement,
            procs: procs.parse().unwrap(),
            input_bytes: input_mb * 1_000_000,
            inline_bytes: 0,
        };
        // Several seeds: a decision must not depend on luck unless tied.
        for seed in 0..8 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let got = match choose(&nodes, &request, &mut rng) {
                Ok(d) if expect.contains('/') => format!("{}/{}", d.node, d.procs),
                Ok(d) => d.node,
                Err(e) => format!("error {}", e.code),
            };
            assert_eq!(got, expect, "nodes {nodes:?}, placement {placement}");
        }
    }

    #[test]
    fn decisions() {
        check(&["e1 edge 0/2", "c1 cloud 1/2"], "auto", 1, "e1");
        check(&["e1 edge 2/2", "c1 cloud 0/2"], "auto", 1, "c1");
        check(&["e1 edge 0/2 dead", "c1 cloud 1/2"], "auto", 1, "c1");
        check(&["e1 edge 0/2 missing", "c1 cloud 1/2"], "auto", 1, "c1");
        check(&["e1 edge 0/2 full", "c1 cloud 1/2"], "auto", 1, "c1");
        check(&["e1 edge 0/2 inflight=2", "c1 cloud 1/2"], "auto", 1, "c1");
        check(&["e1 edge 0/2", "c1 cloud 0/2"], "cloud", 1, "c1");
        check(&["e1 edge 2/2", "c1 cloud 0/2"], "edge", 1, "e1");
        check(&["e1 edge 0/2", "c1 cloud 0/2"], "node:c1", 1, "c1");
        check(
            &["e1 edge 0/2 procs=4", "c1 cloud 1/2 procs=16"],
            "auto",
            16,
            "c1",
        );
    }

    /// The cases of the placement issue: `node tier running/slots` plus
    /// `rtt=` ms, `mbps=` fetch MB/s, `run=` ms of history.
    #[test]
    fn cost_model_decisions() {
        // An overloaded edge spills to the cloud despite the round trip.
        check(
            &["e1 edge 6/2 run=200", "c1 cloud 0/16 run=200 rtt=40"],
            "auto",
            1,
            "c1",
        );
        // A lightly loaded edge keeps the work: the cloud's round trip costs more.
        check(
            &["e1 edge 1/2 run=200", "c1 cloud 0/16 run=200 rtt=40"],
            "auto",
            1,
            "e1",
        );
        // A large input over a slow link stays at the edge, even a busy one...
        check_input(
            &[
                "e1 edge 3/2 run=2000 mbps=500",
                "c1 cloud 0/16 run=500 rtt=40 mbps=10",
            ],
            "auto",
            1,
            500,
            "e1",
        );
        // ...while a small one goes where the run is fastest.
        check_input(
            &[
                "e1 edge 3/2 run=2000 mbps=500",
                "c1 cloud 0/16 run=500 rtt=40 mbps=10",
            ],
            "auto",
            1,
            1,
            "c1",
        );
        // A 16-process job needs a cloud site.
        check(
            &["e1 edge 0/2 procs=4", "c1 cloud 3/16 procs=16 rtt=60"],
            "auto",
            16,
            "c1",
        );
        // A slow node (by its history) is avoided; so is a far one.
        check(
            &["e1 edge 0/2 run=5000", "c1 cloud 0/2 run=100 rtt=30"],
            "auto",
            1,
            "c1",
        );
        check(
            &["c1 cloud 0/2 rtt=80", "c2 cloud 0/2 rtt=10"],
            "auto",
            1,
            "c2",
        );
        // More processes shorten a known run: 4 procs on a node whose history is at 1.
        check(
            &[
                "e1 edge 0/2 run=1000 procs=4",
                "c1 cloud 0/16 run=300 rtt=200 procs=16",
            ],
            "auto",
            4,
            "e1",
        );
        check(
            &[
                "e1 edge 0/2 run=1000 procs=4",
                "c1 cloud 0/16 run=300 rtt=100 procs=16",
            ],
            "auto",
            4,
            "c1",
        );
        // No history: the first guess, plus what is measured.
        check(&["e1 edge 0/2", "c1 cloud 0/2 rtt=40"], "auto", 1, "e1");
    }

    /// The paper's trade-off: a job using as many processes as a site
    /// allows runs 4-wide at the edge or 16-wide in the cloud; the cloud's
    /// extra processes win unless the input must cross a slow link.
    #[test]
    fn process_ranges_fit_each_node() {
        let sites = [
            "e1 edge 0/1 procs=4 run=1600@4 mbps=500",
            "c1 cloud 0/1 procs=16 run=400@16 rtt=20 mbps=6",
        ];
        check_full(&sites, "auto", "1-16", 0, "c1/16");
        check_full(&sites, "auto", "1-16", 1, "c1/16");
        check_full(&sites, "auto", "1-16", 50, "e1/4");
        check_full(&sites, "edge", "1-16", 0, "e1/4");
        check_full(&sites, "auto", "8-16", 50, "c1/16");
        check_full(&sites, "auto", "8", 0, "c1/8");
        // The history at the job's own count counts, not another scaled
        // (1000 ms at 1 process would make 250 ms at 4, and the edge win).
        check_full(
            &[
                "e1 edge 0/1 procs=4 run=1000@1 run=300@4",
                "c1 cloud 0/1 procs=4 run=260@4 rtt=20",
            ],
            "auto",
            "4",
            0,
            "c1/4",
        );
    }

    /// A cloud node that never fetched borrows its tier's measured
    /// throughput, not the edge's.
    #[test]
    fn unmeasured_fetches_borrow_the_tier() {
        let nodes = [
            "e1 edge 0/1 procs=4 run=800@4 mbps=400",
            "c1 cloud 0/1 procs=16 run=200@16 rtt=20 mbps=6",
            "c2 cloud 0/1 procs=16 run=200@16 rtt=20",
        ];
        check_full(&nodes, "auto", "1-16", 16, "e1/4");
        // With no measure anywhere in the cloud, a WAN default still keeps it at the edge.
        check_full(&[nodes[0], nodes[2]], "auto", "1-16", 16, "e1/4");
        check_full(&[nodes[0], nodes[2]], "auto", "1-16", 0, "c2/16");
    }

    /// The wait at a node whose slots are taken by jobs this dispatcher
    /// sent is when the first of them should finish.
    #[test]
    fn queue_wait_counts_the_jobs_ahead() {
        // The edge frees its slot in 100 ms: wait for it rather than pay 300 ms away.
        check(
            &[
                "e1 edge 0/1 run=200 ahead=100",
                "c1 cloud 0/1 run=200 rtt=300",
            ],
            "auto",
            1,
            "e1",
        );
        // ...but not for 2 s.
        check(
            &[
                "e1 edge 0/1 run=200 ahead=2000",
                "c1 cloud 0/1 run=200 rtt=300",
            ],
            "auto",
            1,
            "c1",
        );
        // Two slots, two jobs ahead: the sooner one frees a slot.
        check(
            &[
                "e1 edge 0/2 run=200 ahead=5000,50",
                "c1 cloud 0/1 run=200 rtt=300",
            ],
            "auto",
            1,
            "e1",
        );
    }

    /// A node never tried is tried once when it may be the best; a node
    /// whose optimistic estimate is far off is not; one being tried is not
    /// tried twice at once.
    #[test]
    fn untried_nodes_are_explored() {
        check(
            &["c1 cloud 0/1 run=100 rtt=20", "c2 cloud 0/1 rtt=30"],
            "auto",
            1,
            "c2",
        );
        check(
            &["c1 cloud 0/1 run=100 rtt=20", "c2 cloud 0/1 rtt=500"],
            "auto",
            1,
            "c1",
        );
        check(
            &[
                "c1 cloud 0/2 run=100 rtt=20",
                "c2 cloud 0/2 rtt=30 inflight=1",
            ],
            "auto",
            1,
            "c1",
        );
        let nodes = [
            node("c1 cloud 0/1 run=100 rtt=20"),
            node("c2 cloud 0/1 rtt=30"),
        ];
        let request = Request {
            function: "f",
            placement: &Placement::Auto,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: 0,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let decision = choose(&nodes, &request, &mut rng).unwrap();
        assert!(
            decision.reason.starts_with("exploring"),
            "{}",
            decision.reason
        );
    }

    /// A run time that grows with the input is learnt as such: `a` is fast
    /// on small inputs and slow on large ones, `b` takes 500 ms whatever
    /// the size. A moving average of `a`'s runs (about 1.2 s) would send
    /// both sizes to `b`.
    #[test]
    fn run_time_follows_the_input_size() {
        let nodes = [
            "a cloud 0/1 rtt=5 runs=1:100,20:2000,1:100,20:2000",
            "b cloud 0/1 rtt=5 runs=1:500,20:500,1:500,20:500",
        ];
        check_inline(&nodes, 1, "a");
        check_inline(&nodes, 20, "b");
        // Between and beyond the sizes seen: the line, not the average.
        check_inline(&nodes, 4, "a");
        check_inline(&nodes, 100, "b");
    }

    #[test]
    fn a_run_fit_is_a_moving_average_until_sizes_vary() {
        let mut fit = RunFit::new(1_000, 10.0);
        fit.update(1_000, 20.0);
        assert!((fit.predict(1_000) - 13.0).abs() < 1e-9);
        assert_eq!(fit.ms_per_byte(), 0.0, "one size: no slope");
        assert!((fit.predict(50_000_000) - 13.0).abs() < 1e-9);

        // 100 ms per MB, no fixed cost, learnt from two sizes.
        let mut fit = RunFit::new(1_000_000, 100.0);
        for _ in 0..3 {
            fit.update(10_000_000, 1000.0);
            fit.update(1_000_000, 100.0);
        }
        assert!((fit.ms_per_byte() * 1e6 - 100.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.predict(30_000_000) - 3000.0).abs() < 1e-3, "{fit:?}");
        // Never free, never shrinking with the input.
        assert!(fit.predict(0) > 0.0);
        // A slope learnt is kept through many runs of one size.
        for _ in 0..40 {
            fit.update(1_000_000, 100.0);
        }
        assert!((fit.ms_per_byte() * 1e6 - 100.0).abs() < 1e-6, "{fit:?}");
        // Noise on inputs under a megabyte apart is not a slope.
        let mut flat = RunFit::new(0, 100.0);
        for i in 0..20 {
            flat.update(
                if i % 2 == 0 { 300_000 } else { 0 },
                if i % 3 == 0 { 120.0 } else { 80.0 },
            );
        }
        assert_eq!(flat.ms_per_byte(), 0.0);
        let mut falling = RunFit::new(1_000_000, 1000.0);
        falling.update(10_000_000, 100.0);
        assert_eq!(falling.ms_per_byte(), 0.0);
    }

    #[test]
    fn errors() {
        check(&[], "auto", 1, "error 503");
        check(&["e1 edge 0/2 dead"], "auto", 1, "error 503");
        check(&["e1 edge 0/2 missing"], "auto", 1, "error 503");
        check(&["e1 edge 0/2"], "cloud", 1, "error 503");
        check(&["e1 edge 0/2"], "node:nope", 1, "error 503");
        check(&["e1 edge 0/2 procs=4"], "auto", 16, "error 503");
        check(
            &["e1 edge 0/2 full", "c1 cloud 0/2 full"],
            "auto",
            1,
            "error 429",
        );
    }

    #[test]
    fn ties_are_broken_at_random() {
        let nodes = [node("a edge 0/2"), node("b edge 0/2")];
        let request = Request {
            function: "f",
            placement: &Placement::Auto,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: 0,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.insert(choose(&nodes, &request, &mut rng).unwrap().node);
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn errors_say_what_is_missing() {
        let nodes = [node("e1 edge 0/2 missing")];
        let placement = Placement::Cloud;
        let request = Request {
            function: "hello",
            placement: &placement,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: 0,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let err = choose(&nodes, &request, &mut rng).unwrap_err();
        assert_eq!(err.message, "no node matches (placement `cloud`)");
        let request = Request {
            placement: &Placement::Auto,
            ..request
        };
        let err = choose(&nodes, &request, &mut rng).unwrap_err();
        assert_eq!(err.message, "no live node has function `hello` installed");
    }
}
