//! The placement model: given a snapshot of the nodes a dispatcher knows
//! and one invocation, which node runs it.
//!
//! Architecture invariant: a pure function of its inputs (plus a random
//! source for tie-breaks). It knows nothing of NATS, processes or clocks,
//! so every decision can be replayed from data in a test.
//!
//! The model: among eligible nodes (placement filter, alive, serving the
//! function, `max_procs` covers the job, room in the queue), pick the
//! smallest estimated completion time
//!
//! ```text
//! queue wait + input transfer (bytes ÷ the node's fetch throughput)
//!            + round trip (measured) + run time (moving average per
//!              function and node, scaled by process count)
//! ```
//!
//! with a random pick among estimates within 2% of the best, so several
//! dispatchers do not herd onto one node. A function with no history yet
//! borrows the average of the nodes that have one, else a first guess.

use comfaas_schemas::{ErrorCode, Placement, Tier};
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
    /// One-minute load per core.
    pub cpu_load: f32,
    /// Most MPI processes one job may use.
    pub max_procs: u32,
    /// Round trip to the node as measured by the dispatcher, ms.
    pub rtt_ms: Option<f64>,
    /// The node's input fetch throughput, bytes per second.
    pub fetch_bytes_per_s: Option<f64>,
    /// Moving average of this function's run time on this node, ms, at
    /// `run_procs` processes.
    pub run_ms: Option<f64>,
    /// Process count of `run_ms`.
    pub run_procs: u32,
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

    /// Run time of a job of `procs` processes here, assuming it scales
    /// with the process count.
    fn run_ms(&self, procs: u32) -> Option<f64> {
        self.run_ms
            .map(|ms| ms * f64::from(self.run_procs.max(1)) / f64::from(procs.max(1)))
    }

    /// Estimated completion time of `request` here, given the run time to
    /// assume when this node has no history of the function.
    fn estimate_ms(&self, request: &Request<'_>, fallback_run_ms: f64) -> f64 {
        let run = self.run_ms(request.procs).unwrap_or(fallback_run_ms);
        let slots = f64::from(self.slots.max(1));
        let backlog = f64::from(self.backlog());
        // Jobs ahead beyond the free slots wait for slots to drain; busy
        // slots also share the cores a little.
        let wait = run * (backlog + 1.0 - slots).max(0.0) / slots;
        let contention = run * CONTENTION * backlog / slots;
        let transfer = request.input_bytes as f64
            / self
                .fetch_bytes_per_s
                .filter(|b| *b > 0.0)
                .unwrap_or(DEFAULT_FETCH_BYTES_PER_S)
            * 1000.0;
        wait + contention + transfer + self.rtt_ms.unwrap_or(DEFAULT_RTT_MS) + run
    }
}

/// Assumed round trip to a node not measured yet, ms.
const DEFAULT_RTT_MS: f64 = 1.0;
/// Assumed input fetch throughput of a node that has fetched nothing yet.
const DEFAULT_FETCH_BYTES_PER_S: f64 = 100e6;
/// Run time assumed for a function no node has a history of, ms.
const FIRST_RUN_MS: f64 = 100.0;
/// Slow-down of a run per busy slot sharing the node's cores.
const CONTENTION: f64 = 0.1;
/// Estimates within this fraction of the best are a tie.
const TIE: f64 = 0.02;

/// The invocation being placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Function name.
    pub function: &'a str,
    /// Where it must or may run.
    pub placement: &'a Placement,
    /// MPI processes it needs (1 for a plain run).
    pub procs: u32,
    /// Bytes of input the node must fetch (0 when it travels in the message).
    pub input_bytes: u64,
}

/// The chosen node and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Node id.
    pub node: String,
    /// The reason in words, for logs and metrics.
    pub reason: String,
    /// Its estimated completion time, ms.
    pub estimate_ms: f64,
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

/// Picks the node for `request` among `nodes`, least loaded first.
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
    let sized: Vec<&NodeView> = ready
        .into_iter()
        .filter(|n| request.procs <= n.max_procs.max(1))
        .collect();
    if sized.is_empty() {
        return Err(unavailable(format!(
            "no live node{where_} allows {} processes for `{function}`",
            request.procs
        )));
    }
    let roomy: Vec<&NodeView> = sized.into_iter().filter(|n| n.has_room()).collect();
    if roomy.is_empty() {
        return Err(PlacementError {
            code: ErrorCode::TooManyRequests,
            message: format!("every node{where_} serving `{function}` has a full queue"),
        });
    }
    // Nodes without history of the function borrow the others' average.
    let known: Vec<f64> = roomy
        .iter()
        .filter_map(|n| n.run_ms(request.procs))
        .collect();
    let fallback = if known.is_empty() {
        FIRST_RUN_MS
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let mut candidates: Vec<(String, f64)> = roomy
        .iter()
        .map(|n| (n.node.clone(), n.estimate_ms(request, fallback)))
        .collect();
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
    let best = candidates[0].1;
    let ties: Vec<&(String, f64)> = candidates
        .iter()
        .filter(|(_, e)| *e <= best * (1.0 + TIE))
        .collect();
    let (node, estimate_ms) = ties[rng.random_range(0..ties.len())].clone();
    Ok(Decision {
        reason: format!(
            "estimated {estimate_ms:.1} ms, best of {} candidate(s){where_}",
            candidates.len()
        ),
        node,
        estimate_ms,
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// A node from one line: `id tier running/slots [flags]`, where flags
    /// are `dead`, `missing` (function not installed), `full` (queue full),
    /// `procs=N`.
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
            cpu_load: 0.0,
            max_procs: 4,
            rtt_ms: None,
            fetch_bytes_per_s: None,
            run_ms: None,
            run_procs: 1,
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
                f if f.starts_with("run=") => view.run_ms = Some(f[4..].parse().unwrap()),
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
        let nodes: Vec<NodeView> = nodes.iter().map(|l| node(l)).collect();
        let placement: Placement = placement.parse().unwrap();
        let request = Request {
            function: "f",
            placement: &placement,
            procs,
            input_bytes: input_mb * 1_000_000,
        };
        // Several seeds: a decision must not depend on luck unless tied.
        for seed in 0..8 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let got = match choose(&nodes, &request, &mut rng) {
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
            procs: 1,
            input_bytes: 0,
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
            procs: 1,
            input_bytes: 0,
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
