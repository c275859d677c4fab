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
//! queue wait (when the jobs ahead free a slot) + contention (each job at
//! the node, running or waiting, slows the run by a tenth of its run time
//! shared among the slots: run × 0.1 × backlog ÷ slots) + input transfer
//! (two round trips, then bytes ÷ the node's fetch throughput; none at a
//! node whose report says it holds the input in its cache) + round
//! trip (measured) + run time (per function, node and process count, a
//! line in the input's size fitted to recent runs, see [`RunFit`]; from
//! the nearest count, scaled, when this one was never run there)
//! ```
//!
//! with a random pick among estimates within 2% of the best, so several
//! dispatchers do not herd onto one node. A job with a process range runs
//! on each node with as many processes as the node allows.
//!
//! A node whose input fetches failed lately is left out for a job with an
//! input to fetch while another node can take it.
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
//!
//! The code, one concern a module, each using only those before it:
//! `fit` (run time against input size), `view` (one node's state), `cost`
//! (the completion-time estimate), `choose` (filters, exploration, ties).

mod choose;
mod cost;
mod fit;
mod view;

pub use choose::{
    choose, could_ever_take, placement_allows, Decision, Request, REPORTED_CANDIDATES,
};
pub use fit::RunFit;
pub use view::NodeView;
