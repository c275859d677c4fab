//! The placement model: given a snapshot of the nodes a dispatcher knows
//! and one invocation, which node runs it.
//!
//! Architecture invariant: a pure function of its inputs (plus a random
//! source for tie-breaks). It knows nothing of NATS, processes or clocks,
//! so every decision can be replayed from data in a test.
//!
//! Today's model is "least loaded among eligible nodes"; the cost model of
//! the placement issue replaces [`choose`]'s ranking, not its interface.

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

    /// Backlog per slot: 0 idle, 1 every slot busy, above 1 queueing.
    fn occupancy(&self) -> f64 {
        f64::from(self.backlog()) / f64::from(self.slots.max(1))
    }
}

/// The invocation being placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Function name.
    pub function: &'a str,
    /// Where it must or may run.
    pub placement: &'a Placement,
    /// MPI processes it needs (1 for a plain run).
    pub procs: u32,
}

/// The chosen node and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Node id.
    pub node: String,
    /// The reason in words, for logs and metrics.
    pub reason: String,
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

/// Two occupancies closer than this are a tie, broken at random so that
/// several dispatchers do not all pick the same node.
const TIE: f64 = 1e-9;

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
    let best = roomy
        .iter()
        .map(|n| n.occupancy())
        .fold(f64::INFINITY, f64::min);
    let ties: Vec<&&NodeView> = roomy
        .iter()
        .filter(|n| n.occupancy() - best <= TIE)
        .collect();
    let pick = ties[rng.random_range(0..ties.len())];
    Ok(Decision {
        node: pick.node.clone(),
        reason: format!(
            "least loaded: {}/{} busy of {} candidate(s){}",
            pick.backlog(),
            pick.slots,
            roomy.len(),
            where_
        ),
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
        };
        for flag in parts {
            match flag {
                "dead" => view.alive = false,
                "missing" => view.serves = false,
                "full" => view.queued = view.slots + view.queue_capacity,
                f if f.starts_with("procs=") => view.max_procs = f[6..].parse().unwrap(),
                f if f.starts_with("inflight=") => view.in_flight = f[9..].parse().unwrap(),
                other => panic!("unknown flag {other}"),
            }
        }
        view
    }

    /// `expect` is a node id, or `error NNN` with the expected code.
    fn check(nodes: &[&str], placement: &str, procs: u32, expect: &str) {
        let nodes: Vec<NodeView> = nodes.iter().map(|l| node(l)).collect();
        let placement: Placement = placement.parse().unwrap();
        let request = Request {
            function: "f",
            placement: &placement,
            procs,
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
