//! What a dispatcher knows of one node when it places an invocation,
//! [`NodeView`], and what follows from that view alone: the work at the
//! node, whether its queue has room, and how long a new job waits for a
//! slot.

use std::sync::Arc;

use comfaas_schemas::{CachedInputs, Tier};

use crate::fit::RunFit;

/// What the dispatcher knows of one node at decision time.
///
/// `Default` is a dead node with no slots, for tests and callers to fill
/// in with `NodeView { node: .., ..Default::default() }`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    /// Node id.
    pub node: String,
    /// Edge or cloud.
    pub tier: Tier,
    /// Heartbeat seen recently and not marked unreachable.
    pub alive: bool,
    /// The function is installed and served there.
    pub serves: bool,
    /// Why it is not served there when the node knows the function
    /// (`installing`, `install failed: …`), for errors that say why no
    /// node could take an invocation.
    pub install: Option<String>,
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
    /// Most MPI processes one job may use.
    pub max_procs: u32,
    /// Round trip to the node as measured by the dispatcher, ms.
    pub rtt_ms: Option<f64>,
    /// The node's input fetch throughput, bytes per second.
    pub fetch_bytes_per_s: Option<f64>,
    /// An input fetch failed there lately (stalled, or the pull broke):
    /// inputs go to other nodes while one can take them.
    pub fetch_failing: bool,
    /// This function's run time here, per process count it ran with:
    /// `(procs, fit)`.
    pub runs: Vec<(u32, RunFit)>,
    /// The inputs in the node's cache, as last reported (shared, not
    /// copied, by every decision until the next report).
    pub cached_inputs: Arc<CachedInputs>,
}

impl NodeView {
    /// Work at the node as best known: its report or our own count, whichever is larger
    /// (a report is up to a heartbeat old; our count is current but only ours).
    pub(crate) fn backlog(&self) -> u32 {
        self.running.saturating_add(self.queued).max(self.in_flight)
    }

    /// Whether the node holds the input of digest `digest` in its cache
    /// (surely, or per its filter; never for a job without one).
    pub(crate) fn holds(&self, digest: Option<&str>) -> bool {
        digest.is_some_and(|d| self.cached_inputs.holds(d))
    }

    /// Whether one more job fits in the slots and the queue.
    pub(crate) fn has_room(&self) -> bool {
        self.backlog() < self.slots.saturating_add(self.queue_capacity)
    }

    /// Time until a slot is free for one more job, given `run` ms as the
    /// length of jobs ahead that this dispatcher did not place.
    pub(crate) fn wait_ms(&self, run: f64) -> f64 {
        let slots = self.slots.max(1) as usize;
        let backlog = self.backlog() as usize;
        if backlog < slots {
            return 0.0;
        }
        // Ours: we know when each should finish. A slot frees when all but
        // `slots - 1` of the jobs ahead are done (first in, first out).
        let others = backlog.saturating_sub(self.ahead_ms.len());
        let ours_wait = if self.ahead_ms.len() >= slots {
            let mut ours = self.ahead_ms.clone();
            let at = ours.len() - slots;
            *ours.select_nth_unstable_by(at, f64::total_cmp).1
        } else {
            0.0
        };
        // Others': each holds a slot for about one run, shared by the slots.
        ours_wait + run * others as f64 / slots as f64
    }
}
