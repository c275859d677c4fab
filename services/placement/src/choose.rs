//! The decision: [`choose`] filters the nodes down to those that can take
//! an invocation (each filter that leaves none says what is missing),
//! costs each, explores a node never tried when it may be the best, and
//! breaks near-ties at random.

use comfaas_schemas::{CandidateEstimate, EstimateParts, InvocationError, Placement, Procs, Tier};
use rand::Rng;

use crate::cost::Estimator;
use crate::view::NodeView;

/// Candidates a decision reports (the best, and the chosen one): a
/// decision among a thousand nodes does not copy a thousand estimates.
pub const REPORTED_CANDIDATES: usize = 16;
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
    /// The fetched input's digest (`InputObject.digest`): a node holding
    /// it in its cache fetches nothing. `None` when there is no input to
    /// fetch, or to place as if no node held any (a benchmark's ablation).
    pub input_digest: Option<&'a str>,
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
    /// The best eligible nodes' estimates and their parts, best first: at
    /// most [`REPORTED_CANDIDATES`], the chosen one always among them.
    pub candidates: Vec<CandidateEstimate>,
}

/// One eligible node, costed.
struct Costed<'a> {
    /// The node.
    view: &'a NodeView,
    /// Processes it would run the job with.
    procs: u32,
    /// Its estimated completion time, ms.
    estimate_ms: f64,
    /// What that estimate is made of.
    parts: EstimateParts,
    /// Never ran the function: a candidate for exploration.
    untried: bool,
}

/// Whether any of `nodes`, alive or not, matches the request's placement
/// and allows its fewest processes: when none does, no wait makes it
/// placeable (until such a node joins), and an event can say so at once
/// instead of being retried for minutes.
pub fn could_ever_take(nodes: &[NodeView], request: &Request<'_>) -> bool {
    nodes
        .iter()
        .filter(|n| matches_placement(n, request.placement))
        .any(|n| request.procs.fit(n.max_procs.max(1)).is_some())
}

fn matches_placement(node: &NodeView, placement: &Placement) -> bool {
    placement_allows(placement, &node.node, node.tier)
}

/// Whether `placement` lets the node `node` of tier `tier` run it.
pub fn placement_allows(placement: &Placement, node: &str, tier: Tier) -> bool {
    match placement {
        Placement::Auto => true,
        Placement::Edge => tier == Tier::Edge,
        Placement::Cloud => tier == Tier::Cloud,
        Placement::Node(id) => id == node,
    }
}

/// Nodes an error names one by one; the others are counted.
const NAMED_NODES: usize = 6;
/// Characters of the start of one node's reason (an install failure) an
/// error quotes: what failed.
const REASON_HEAD_CHARS: usize = 80;
/// Characters of the ends of all the install failures an error quotes,
/// shared among them: where a compiler's or a traceback's last lines, the
/// cause, are. With the rest it stays under the 2 KiB an error header
/// carries (`platform::reply`).
const REASON_TAIL_BUDGET: usize = 1200;
/// The least of that budget one install failure gets.
const REASON_TAIL_MIN: usize = 120;

/// `text` with its middle cut to fit `head` and `tail` characters.
fn quote(text: &str, head: usize, tail: usize) -> String {
    let chars = text.chars().count();
    if chars > head + tail {
        let start: String = text.chars().take(head).collect();
        let end: String = text.chars().skip(chars - tail).collect();
        format!("{start} … {end}")
    } else {
        text.to_owned()
    }
}

/// Why no node of `nodes` takes `request`, node by node and bounded:
/// `2 of 3 alive; e1: allows 2 processes, 4 asked; c1: install failed: …;
/// 1 excluded by placement `edge``. Each node is named with the first
/// condition it fails, in the order [`choose`] filters.
fn why_none(nodes: &[NodeView], request: &Request<'_>) -> String {
    let alive = nodes.iter().filter(|n| n.alive).count();
    let mut parts = vec![if nodes.is_empty() {
        "no node heard from".to_owned()
    } else {
        format!("{alive} of {} alive", nodes.len())
    }];
    let mut excluded = 0;
    // Each node's first failed condition; an install failure's text is
    // quoted once it is known how many share the budget.
    let mut reasons: Vec<(&str, Result<String, &str>)> = Vec::new();
    for node in nodes {
        let reason = if !matches_placement(node, request.placement) {
            excluded += 1;
            continue;
        } else if !node.alive {
            Ok("not alive".to_owned())
        } else if !node.serves {
            Err(node.install.as_deref().unwrap_or("function not installed"))
        } else if request.procs.fit(node.max_procs.max(1)).is_none() {
            Ok(format!(
                "allows {} processes, {} asked",
                node.max_procs.max(1),
                request.procs.min
            ))
        } else if !node.has_room() {
            Ok(format!(
                "queue full ({} running, {} queued, room for {})",
                node.running,
                node.queued,
                node.slots.saturating_add(node.queue_capacity)
            ))
        } else {
            continue;
        };
        reasons.push((&node.node, reason));
    }
    let unnamed = reasons.len().saturating_sub(NAMED_NODES);
    reasons.truncate(NAMED_NODES);
    let installs = reasons.iter().filter(|(_, r)| r.is_err()).count().max(1);
    let tail = (REASON_TAIL_BUDGET / installs).max(REASON_TAIL_MIN);
    for (node, reason) in reasons {
        let reason = reason.unwrap_or_else(|text| quote(text, REASON_HEAD_CHARS, tail));
        parts.push(format!("{node}: {reason}"));
    }
    if unnamed > 0 {
        parts.push(format!("{unnamed} more"));
    }
    if excluded > 0 {
        parts.push(format!(
            "{excluded} excluded by placement `{}`",
            request.placement
        ));
    }
    parts.join("; ")
}

/// ` (placement `edge`)`, or nothing for automatic placement: for messages.
fn placement_words(placement: &Placement) -> String {
    match placement {
        Placement::Auto => String::new(),
        p => format!(" (placement `{p}`)"),
    }
}

/// Why no node of `nodes` can take `request`: the first filter of
/// [`choose`]'s that leaves none, and each node's reason.
fn refusal(nodes: &[NodeView], request: &Request<'_>) -> InvocationError {
    let function = request.function;
    let where_ = placement_words(request.placement);
    // Each refusal says why each node could not take it.
    let unavailable = |what: String| {
        InvocationError::unavailable(format!("{what}: {}", why_none(nodes, request)))
    };
    let placed: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| matches_placement(n, request.placement))
        .collect();
    if placed.is_empty() {
        return unavailable(format!("no node matches{where_}"));
    }
    let live: Vec<&NodeView> = placed.into_iter().filter(|n| n.alive).collect();
    if live.is_empty() {
        return unavailable(format!("no live node{where_}"));
    }
    let ready: Vec<&NodeView> = live.into_iter().filter(|n| n.serves).collect();
    if ready.is_empty() {
        return unavailable(format!(
            "no live node{where_} has function `{function}` installed"
        ));
    }
    if !ready
        .iter()
        .any(|n| request.procs.fit(n.max_procs.max(1)).is_some())
    {
        return unavailable(format!(
            "no live node{where_} allows {} processes for `{function}`",
            request.procs.min
        ));
    }
    InvocationError::busy(format!(
        "every node{where_} serving `{function}` has a full queue: {}",
        why_none(nodes, request)
    ))
}

/// Picks the node for `request` among `nodes`, or says why none can take
/// it: 503 (unavailable) when no node matches the placement, is alive,
/// serves the function or allows its processes; 429 (busy) when every
/// one that could has a full queue.
pub fn choose(
    nodes: &[NodeView],
    request: &Request<'_>,
    rng: &mut impl Rng,
) -> Result<Decision, InvocationError> {
    let where_ = placement_words(request.placement);
    // One pass over the nodes; only when none is left do the filters run
    // one by one, to say which condition left none.
    let roomy: Vec<(&NodeView, u32)> = nodes
        .iter()
        .filter(|n| matches_placement(n, request.placement) && n.alive && n.serves)
        .filter(|n| n.has_room())
        .filter_map(|n| Some((n, request.procs.fit(n.max_procs.max(1))?)))
        .collect();
    if roomy.is_empty() {
        return Err(refusal(nodes, request));
    }
    // A node whose input fetches failed lately is the last resort for a
    // job with an input to fetch: it would likely fail again, and keep a
    // slot while it does.
    // (One that holds the input in its cache fetches nothing.)
    let fetches_well = |n: &NodeView| !n.fetch_failing || n.holds(request.input_digest);
    let roomy: Vec<(&NodeView, u32)> =
        if request.input_bytes > 0 && roomy.iter().any(|(n, _)| fetches_well(n)) {
            roomy.into_iter().filter(|(n, _)| fetches_well(n)).collect()
        } else {
            roomy
        };
    let estimator = Estimator::new(
        nodes,
        &roomy,
        request.input_bytes,
        request.run_input_bytes(),
        request.input_digest,
    );
    let mut costed: Vec<Costed<'_>> = roomy
        .iter()
        .map(|&(view, procs)| {
            let parts = estimator.parts(view, procs);
            Costed {
                view,
                procs,
                estimate_ms: parts.total_ms(),
                parts,
                untried: view.runs.is_empty(),
            }
        })
        .collect();
    // No full sort: at a thousand nodes it was a good part of a decision,
    // which needs only the best, the near-ties and a few to report.
    let by_estimate = |a: &Costed<'_>, b: &Costed<'_>| a.estimate_ms.total_cmp(&b.estimate_ms);
    let best = costed
        .iter()
        .map(|c| c.estimate_ms)
        .min_by(f64::total_cmp)
        .unwrap_or_default();
    // Learn: try a node never tried (and not being tried now) when it may
    // well be the best, once another node has taught a run time; the most
    // promising first.
    let explore = estimator
        .knows_a_run_time()
        .then(|| {
            costed
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.untried && c.view.in_flight == 0 && c.estimate_ms <= best * (1.0 + EXPLORE)
                })
                .min_by(|(_, a), (_, b)| by_estimate(a, b))
                .map(|(i, _)| i)
        })
        .flatten();
    let (index, why) = match explore {
        Some(i) => (i, "exploring: never ran it yet, "),
        _ => {
            let tied = |c: &&Costed<'_>| c.estimate_ms <= best * (1.0 + TIE);
            let ties = costed.iter().filter(tied).count();
            let pick = rng.random_range(0..ties.max(1));
            let index = costed
                .iter()
                .enumerate()
                .filter(|(_, c)| tied(c))
                .nth(pick)
                .map_or(0, |(i, _)| i);
            (index, "")
        }
    };
    let eligible = costed.len();
    let chosen = costed.swap_remove(index);
    let cached = if request.input_bytes > 0 && chosen.view.holds(request.input_digest) {
        ", input cached there"
    } else {
        ""
    };
    // The best few are reported (and the chosen one, best or explored).
    let others = REPORTED_CANDIDATES.saturating_sub(1).min(costed.len());
    if others < costed.len() && others > 0 {
        costed.select_nth_unstable_by(others - 1, by_estimate);
    }
    costed.truncate(others);
    let chosen_view = chosen.view;
    costed.push(chosen);
    costed.sort_by(by_estimate);
    let chosen = costed
        .iter()
        .find(|c| std::ptr::eq(c.view, chosen_view))
        .unwrap_or(&costed[0]);
    let candidates: Vec<CandidateEstimate> = costed
        .iter()
        .map(|c| CandidateEstimate {
            node: c.view.node.clone(),
            estimate_ms: c.estimate_ms,
            parts: Some(c.parts),
        })
        .collect();
    Ok(Decision {
        reason: format!(
            "{why}estimated {:.1} ms with {} process(es){cached}, best of {eligible} candidate(s){where_}",
            chosen.estimate_ms, chosen.procs,
        ),
        node: chosen.view.node.clone(),
        procs: chosen.procs,
        estimate_ms: chosen.estimate_ms,
        candidates,
    })
}

#[cfg(test)]
mod tests {
    use comfaas_schemas::CachedInputs;
    use rand::SeedableRng;

    use super::*;
    use crate::fit::RunFit;

    /// A node from one line: `id tier running/slots [flags]`, where flags
    /// are `dead`, `missing` (function not installed), `full` (queue full),
    /// `fetchfail` (an input fetch failed there lately), `holds=D,D…`
    /// (digests of the inputs in its cache),
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
            queue_capacity: 4,
            max_procs: 4,
            ..Default::default()
        };
        for flag in parts {
            match flag {
                "dead" => view.alive = false,
                "missing" => view.serves = false,
                "full" => view.queued = view.slots + view.queue_capacity,
                "fetchfail" => view.fetch_failing = true,
                f if f.starts_with("holds=") => {
                    let digests: Vec<&str> = f[6..].split(',').collect();
                    view.cached_inputs = std::sync::Arc::new(CachedInputs::of(&digests));
                }
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

    /// One decision: `nodes` as for [`node`]; `request` is `PLACEMENT
    /// [procs=N|N-M] [input=NMB] [inline=NMB] [digest=D]`, one process and
    /// no input unless said (`input` is fetched by the node, of digest `D`
    /// when said; `inline` travels in the message); `expect` is a node id, `node/N` (N the processes it must
    /// run with), or `error NNN` with the expected code.
    fn check(nodes: &[&str], request: &str, expect: &str) {
        let nodes: Vec<NodeView> = nodes.iter().map(|l| node(l)).collect();
        let line = request;
        let mut words = line.split_whitespace();
        let placement: Placement = words.next().unwrap().parse().unwrap();
        let mut request = Request {
            function: "f",
            placement: &placement,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: 0,
            input_digest: None,
        };
        let megabytes =
            |mb: &str| mb.strip_suffix("MB").unwrap().parse::<u64>().unwrap() * 1_000_000;
        for word in words {
            match word.split_once('=') {
                Some(("procs", procs)) => request.procs = procs.parse().unwrap(),
                Some(("input", mb)) => request.input_bytes = megabytes(mb),
                Some(("inline", mb)) => request.inline_bytes = megabytes(mb),
                Some(("digest", digest)) => request.input_digest = Some(digest),
                _ => panic!("unknown request word {word}"),
            }
        }
        // Several seeds: a decision must not depend on luck unless tied.
        for seed in 0..8 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let got = match choose(&nodes, &request, &mut rng) {
                Ok(d) if expect.contains('/') => format!("{}/{}", d.node, d.procs),
                Ok(d) => d.node,
                Err(e) => format!("error {}", e.code),
            };
            assert_eq!(got, expect, "nodes {nodes:?}, request `{line}`");
        }
    }

    #[test]
    fn decisions() {
        check(&["e1 edge 0/2", "c1 cloud 1/2"], "auto", "e1");
        check(&["e1 edge 2/2", "c1 cloud 0/2"], "auto", "c1");
        check(&["e1 edge 0/2 dead", "c1 cloud 1/2"], "auto", "c1");
        check(&["e1 edge 0/2 missing", "c1 cloud 1/2"], "auto", "c1");
        check(&["e1 edge 0/2 full", "c1 cloud 1/2"], "auto", "c1");
        check(&["e1 edge 0/2 inflight=2", "c1 cloud 1/2"], "auto", "c1");
        check(&["e1 edge 0/2", "c1 cloud 0/2"], "cloud", "c1");
        check(&["e1 edge 2/2", "c1 cloud 0/2"], "edge", "e1");
        check(&["e1 edge 0/2", "c1 cloud 0/2"], "node:c1", "c1");
        check(
            &["e1 edge 0/2 procs=4", "c1 cloud 1/2 procs=16"],
            "auto procs=16",
            "c1",
        );
    }

    /// Inputs keep away from a node whose fetches failed lately, unless
    /// no other node can take them; work without an input does not care.
    #[test]
    fn inputs_avoid_a_node_whose_fetches_fail() {
        let failing = ["e1 edge 0/2 fetchfail", "c1 cloud 1/2"];
        check(&failing, "auto input=100MB", "c1");
        check(&failing, "auto", "e1");
        check(&failing, "auto inline=1MB", "e1");
        check(&["e1 edge 0/2 fetchfail"], "auto input=100MB", "e1");
        check(
            &["e1 edge 0/2 fetchfail", "c1 cloud 0/2 full"],
            "auto input=100MB",
            "e1",
        );
        check(
            &["e1 edge 0/2 fetchfail", "c1 cloud 0/2 dead"],
            "auto input=100MB",
            "e1",
        );
        check(&failing, "node:e1 input=100MB", "e1");
    }

    /// The cases of the placement issue: `node tier running/slots` plus
    /// `rtt=` ms, `mbps=` fetch MB/s, `run=` ms of history.
    #[test]
    fn cost_model_decisions() {
        // An overloaded edge spills to the cloud despite the round trip.
        check(
            &["e1 edge 6/2 run=200", "c1 cloud 0/16 run=200 rtt=40"],
            "auto",
            "c1",
        );
        // A lightly loaded edge keeps the work: the cloud's round trip costs more.
        check(
            &["e1 edge 1/2 run=200", "c1 cloud 0/16 run=200 rtt=40"],
            "auto",
            "e1",
        );
        // A large input over a slow link stays at the edge, even a busy one...
        let slow_link = [
            "e1 edge 3/2 run=2000 mbps=500",
            "c1 cloud 0/16 run=500 rtt=40 mbps=10",
        ];
        check(&slow_link, "auto input=500MB", "e1");
        // ...while a small one goes where the run is fastest.
        check(&slow_link, "auto input=1MB", "c1");
        // A 16-process job needs a cloud site.
        check(
            &["e1 edge 0/2 procs=4", "c1 cloud 3/16 procs=16 rtt=60"],
            "auto procs=16",
            "c1",
        );
        // A slow node (by its history) is avoided; so is a far one.
        check(
            &["e1 edge 0/2 run=5000", "c1 cloud 0/2 run=100 rtt=30"],
            "auto",
            "c1",
        );
        check(
            &["c1 cloud 0/2 rtt=80", "c2 cloud 0/2 rtt=10"],
            "auto",
            "c2",
        );
        // More processes shorten a known run: 4 procs on a node whose history is at 1.
        let e1 = "e1 edge 0/2 run=1000 procs=4";
        check(
            &[e1, "c1 cloud 0/16 run=300 rtt=200 procs=16"],
            "auto procs=4",
            "e1",
        );
        check(
            &[e1, "c1 cloud 0/16 run=300 rtt=100 procs=16"],
            "auto procs=4",
            "c1",
        );
        // No history: the first guess, plus what is measured.
        check(&["e1 edge 0/2", "c1 cloud 0/2 rtt=40"], "auto", "e1");
    }

    /// A node holding the input in its cache is costed without its
    /// transfer: the cloud node `c1`, behind a slow link, wins a 50 MB
    /// input it holds, where the edge wins a fresh one of the same size
    /// (and wins when the cache signal is not given, `digest` unsaid).
    #[test]
    fn a_node_holding_the_input_pays_no_transfer() {
        let sites = [
            "e1 edge 0/1 run=1000 mbps=100",
            "c1 cloud 0/1 run=900 rtt=20 mbps=5 holds=SHA-256=old",
        ];
        check(&sites, "auto input=50MB digest=SHA-256=old", "c1");
        check(&sites, "auto input=50MB digest=SHA-256=new", "e1");
        check(&sites, "auto input=50MB", "e1");
        // Without the input to fetch, the cache is no reason.
        check(&sites, "auto", "c1");
        check(
            &[
                "e1 edge 0/1 run=1000",
                "c1 cloud 0/1 run=1100 rtt=20 holds=SHA-256=old",
            ],
            "auto inline=50MB",
            "e1",
        );
        // Held inputs are not fetched: a node whose fetches fail still gets them.
        check(
            &[
                "e1 edge 0/1 run=1000 mbps=100",
                "c1 cloud 0/1 run=900 rtt=20 fetchfail holds=SHA-256=old",
            ],
            "auto input=50MB digest=SHA-256=old",
            "c1",
        );
        // The estimate's parts say so: no transfer at c1, one at e1.
        let nodes: Vec<NodeView> = sites.iter().map(|l| node(l)).collect();
        let request = Request {
            function: "f",
            placement: &Placement::Auto,
            procs: Procs::exactly(1),
            input_bytes: 50_000_000,
            inline_bytes: 0,
            input_digest: Some("SHA-256=old"),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let decision = choose(&nodes, &request, &mut rng).unwrap();
        let transfer = |node: &str| {
            let c = decision.candidates.iter().find(|c| c.node == node).unwrap();
            c.parts.unwrap().transfer_ms
        };
        assert_eq!(transfer("c1"), 0.0);
        assert!(transfer("e1") > 400.0, "{}", transfer("e1"));
        assert!(
            decision.reason.contains("input cached there"),
            "{}",
            decision.reason
        );
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
        check(&sites, "auto procs=1-16", "c1/16");
        check(&sites, "auto procs=1-16 input=1MB", "c1/16");
        check(&sites, "auto procs=1-16 input=50MB", "e1/4");
        check(&sites, "edge procs=1-16", "e1/4");
        check(&sites, "auto procs=8-16 input=50MB", "c1/16");
        check(&sites, "auto procs=8", "c1/8");
        // The history at the job's own count counts, not another scaled
        // (1000 ms at 1 process would make 250 ms at 4, and the edge win).
        let sites = [
            "e1 edge 0/1 procs=4 run=1000@1 run=300@4",
            "c1 cloud 0/1 procs=4 run=260@4 rtt=20",
        ];
        check(&sites, "auto procs=4", "c1/4");
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
        check(&nodes, "auto procs=1-16 input=16MB", "e1/4");
        // With no measure anywhere in the cloud, a WAN default still keeps it at the edge.
        check(&[nodes[0], nodes[2]], "auto procs=1-16 input=16MB", "e1/4");
        check(&[nodes[0], nodes[2]], "auto procs=1-16", "c2/16");
    }

    /// The wait at a node whose slots are taken by jobs this dispatcher
    /// sent is when the first of them should finish.
    #[test]
    fn queue_wait_counts_the_jobs_ahead() {
        let c1 = "c1 cloud 0/1 run=200 rtt=300";
        // The edge frees its slot in 100 ms: wait for it rather than pay 300 ms away.
        check(&["e1 edge 0/1 run=200 ahead=100", c1], "auto", "e1");
        // ...but not for 2 s.
        check(&["e1 edge 0/1 run=200 ahead=2000", c1], "auto", "c1");
        // Two slots, two jobs ahead: the sooner one frees a slot.
        check(&["e1 edge 0/2 run=200 ahead=5000,50", c1], "auto", "e1");
    }

    /// A node never tried is tried once when it may be the best; a node
    /// whose optimistic estimate is far off is not; one being tried is not
    /// tried twice at once.
    #[test]
    fn untried_nodes_are_explored() {
        check(
            &["c1 cloud 0/1 run=100 rtt=20", "c2 cloud 0/1 rtt=30"],
            "auto",
            "c2",
        );
        check(
            &["c1 cloud 0/1 run=100 rtt=20", "c2 cloud 0/1 rtt=500"],
            "auto",
            "c1",
        );
        check(
            &[
                "c1 cloud 0/2 run=100 rtt=20",
                "c2 cloud 0/2 rtt=30 inflight=1",
            ],
            "auto",
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
            input_digest: None,
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
        check(&nodes, "auto inline=1MB", "a");
        check(&nodes, "auto inline=20MB", "b");
        // Between and beyond the sizes seen: the line, not the average.
        check(&nodes, "auto inline=4MB", "a");
        check(&nodes, "auto inline=100MB", "b");
    }

    /// Among many nodes a decision reports the best few, best first, and
    /// always the chosen one, even an explored one that is not among them.
    #[test]
    fn a_decision_reports_the_best_few_candidates_and_the_chosen_one() {
        let mut lines: Vec<String> = (0..40)
            .map(|i| format!("n{i:02} cloud 0/1 run=100 rtt={}", 10 + 3 * i))
            .collect();
        let placement = Placement::Auto;
        let request = Request {
            function: "f",
            placement: &placement,
            procs: Procs::exactly(1),
            input_bytes: 0,
            inline_bytes: 0,
            input_digest: None,
        };
        let decide = |lines: &[String]| {
            let nodes: Vec<NodeView> = lines.iter().map(|l| node(l)).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(0);
            choose(&nodes, &request, &mut rng).unwrap()
        };
        let decision = decide(&lines);
        let names: Vec<&str> = decision
            .candidates
            .iter()
            .map(|c| c.node.as_str())
            .collect();
        let best: Vec<String> = (0..REPORTED_CANDIDATES)
            .map(|i| format!("n{i:02}"))
            .collect();
        assert_eq!(names, best);
        assert_eq!(decision.node, "n00");
        assert!(
            decision.reason.contains("best of 40 candidate(s)"),
            "{}",
            decision.reason
        );
        // n39, never tried, is explored (within half again of the best):
        // reported after the best fifteen, although n15 to n17 are better.
        lines[39] = "n39 cloud 0/1 rtt=62".to_owned();
        let decision = decide(&lines);
        assert_eq!(decision.node, "n39", "{}", decision.reason);
        let names: Vec<&str> = decision
            .candidates
            .iter()
            .map(|c| c.node.as_str())
            .collect();
        assert_eq!(names.len(), REPORTED_CANDIDATES);
        assert_eq!(names.last(), Some(&"n39"));
        assert_eq!(
            names[..REPORTED_CANDIDATES - 1],
            best[..REPORTED_CANDIDATES - 1]
        );
    }

    #[test]
    fn errors() {
        check(&[], "auto", "error 503");
        check(&["e1 edge 0/2 dead"], "auto", "error 503");
        check(&["e1 edge 0/2 missing"], "auto", "error 503");
        check(&["e1 edge 0/2"], "cloud", "error 503");
        check(&["e1 edge 0/2"], "node:nope", "error 503");
        check(&["e1 edge 0/2 procs=4"], "auto procs=16", "error 503");
        check(
            &["e1 edge 0/2 full", "c1 cloud 0/2 full"],
            "auto",
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
            input_digest: None,
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
            input_digest: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let err = choose(&nodes, &request, &mut rng).unwrap_err();
        assert_eq!(
            err.message,
            "no node matches (placement `cloud`): 1 of 1 alive; 1 excluded by placement `cloud`"
        );
        let request = Request {
            placement: &Placement::Auto,
            ..request
        };
        let err = choose(&nodes, &request, &mut rng).unwrap_err();
        assert_eq!(
            err.message,
            "no live node has function `hello` installed: 1 of 1 alive; e1: function not installed"
        );
    }

    /// The message of a refusal: `nodes` as for [`node`] (plus `installing`
    /// and `failed` flags here), `request` as for [`check`].
    fn refusal(nodes: &[&str], request: &str) -> String {
        let nodes: Vec<NodeView> = nodes
            .iter()
            .map(|line| {
                let plain: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| !matches!(*w, "installing" | "failed"))
                    .collect();
                let mut view = node(&plain.join(" "));
                if line.contains(" installing") {
                    view.serves = false;
                    view.install = Some("installing".to_owned());
                }
                if line.contains(" failed") {
                    view.serves = false;
                    view.install = Some(format!(
                        "install failed: {}the cause",
                        "no wheel ".repeat(200)
                    ));
                }
                view
            })
            .collect();
        let mut words = request.split_whitespace();
        let placement: Placement = words.next().unwrap().parse().unwrap();
        let procs = words
            .next()
            .and_then(|w| w.strip_prefix("procs="))
            .map_or(Procs::exactly(1), |p| p.parse().unwrap());
        let request = Request {
            function: "f",
            placement: &placement,
            procs,
            input_bytes: 0,
            inline_bytes: 0,
            input_digest: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        choose(&nodes, &request, &mut rng).unwrap_err().message
    }

    /// A refusal says how many nodes are alive and why each one could not
    /// take the invocation, in a bounded length.
    #[test]
    fn refusals_say_why_each_node_is_not_eligible() {
        assert_eq!(refusal(&[], "auto"), "no node matches: no node heard from");
        assert_eq!(
            refusal(
                &[
                    "edge-1 edge 0/2 missing",
                    "cloud-1 cloud 0/2 procs=2",
                    "cloud-2 cloud 0/2 dead"
                ],
                "auto procs=4"
            ),
            "no live node allows 4 processes for `f`: 2 of 3 alive; \
             edge-1: function not installed; cloud-1: allows 2 processes, 4 asked; \
             cloud-2: not alive"
        );
        assert_eq!(
            refusal(&["e1 edge 0/2 installing", "c1 cloud 0/2 dead"], "auto"),
            "no live node has function `f` installed: 1 of 2 alive; e1: installing; c1: not alive"
        );
        assert_eq!(
            refusal(&["e1 edge 0/2 dead", "c1 cloud 0/2"], "edge"),
            "no live node (placement `edge`): 1 of 2 alive; e1: not alive; \
             1 excluded by placement `edge`"
        );
        assert_eq!(
            refusal(&["e1 edge 2/2 full", "c1 cloud 0/2 missing"], "auto"),
            "every node serving `f` has a full queue: 2 of 2 alive; \
             e1: queue full (2 running, 6 queued, room for 6); c1: function not installed"
        );
        // An install failure is quoted, its middle cut: what failed and the
        // cause at its end are kept.
        let failed = refusal(&["e1 edge 0/2 failed"], "auto");
        assert!(
            failed.contains("e1: install failed: no wheel no wheel"),
            "{failed}"
        );
        assert!(
            failed.contains(" … ") && failed.ends_with("no wheel the cause") && failed.len() < 1400,
            "{failed}"
        );
        // Many nodes: six named, the rest counted.
        let many: Vec<String> = (0..40).map(|i| format!("n{i} edge 0/2 dead")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let text = refusal(&many, "auto");
        assert!(
            text.starts_with("no live node: 0 of 40 alive; n0: not alive;"),
            "{text}"
        );
        assert!(text.ends_with("n5: not alive; 34 more"), "{text}");
        // Many long install failures share the budget: each keeps its
        // cause, and the whole fits an error header (2 KiB).
        let failing: Vec<String> = (0..8).map(|i| format!("f{i} edge 0/2 failed")).collect();
        let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
        let text = refusal(&failing, "auto");
        assert_eq!(text.matches("the cause").count(), 6, "{text}");
        assert!(
            text.ends_with("2 more") && text.len() < 2048,
            "{}: {text}",
            text.len()
        );
    }
}
