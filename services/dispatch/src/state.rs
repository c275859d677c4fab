//! What a dispatcher knows, shared by its tasks: the live node table, the
//! functions deployed, and its own counters. Every step of an invocation
//! is one method here (choose, begin, end, finish), each taking the lock
//! once, so `place.rs` reads as the story of one invocation and never
//! handles the lock itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use comfaas_placement::{Decision, NodeView, Request};
use comfaas_schemas::{
    now_unix_ms, Deployment, DispatchMetrics, ErrorCode, ErrorCount, InvocationError, NodeLoad,
    PlacementRecord, Tier, SCHEMA_VERSION,
};

use crate::nodes::{NodeTable, Observed};

/// Placement decisions kept for the metrics report.
const RECENT_DECISIONS: usize = 32;

/// How long after start a dispatcher trusts its node table to list every
/// node there is (a few heartbeats).
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// The dispatcher's shared state behind one lock.
pub struct State {
    inner: Mutex<Inner>,
    started: Instant,
    /// Signalled at every node report: requests waiting for an install
    /// look again at once instead of at their next poll.
    reported: tokio::sync::Notify,
}

struct Inner {
    nodes: NodeTable,
    functions: HashMap<String, Arc<Deployment>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    received: u64,
    succeeded: u64,
    failed: u64,
    in_flight: u32,
    errors: BTreeMap<u16, u64>,
    recent: VecDeque<PlacementRecord>,
    bad_reply_subjects: u64,
    forged_loads: u64,
    dead_lettered: u64,
    dlq_failures: u64,
    attached: u64,
}

/// What [`State::choose`] found for one try of an invocation.
pub enum Choice {
    /// Send it there (a node of this tier).
    Node(Decision, Tier),
    /// No node serves the function yet, but one is installing it (or a
    /// fresh deploy has not reached the nodes): look again shortly.
    Installing,
    /// No node can take it; the message says why, node by node when some
    /// failed to install it.
    Nowhere(InvocationError),
    /// No node this dispatcher knows, alive or not, matches the placement
    /// or allows the processes: waiting will not help (until such a node
    /// joins), so an event is dead-lettered at once.
    Never(InvocationError),
}

/// The function being placed and what may be waited for.
pub struct Wanted<'a> {
    /// The request as placement sees it.
    pub request: &'a Request<'a>,
    /// The deployment's bundle digest.
    pub digest: &'a str,
    /// Deployed moments ago: nodes not heard to have it may still be on their way.
    pub fresh: bool,
    /// Whether waiting for an install is still allowed.
    pub may_wait: bool,
    /// Whether an error must say why, node by node (not when the caller
    /// already holds a node's refusal to answer with instead).
    pub explain: bool,
}

/// How the node answered one try, as [`State::end`] records it.
pub enum Ended {
    /// It answered: what the run taught.
    Answered {
        /// Time from send to answer at the dispatcher, ms.
        took_ms: f64,
        /// The run time the node reported, ms.
        run_ms: Option<f64>,
    },
    /// Nobody listens on its work subject: stop choosing it until it is heard again.
    Unreachable,
    /// Anything else (timeout, payload too large, the node died): nothing to learn.
    Failed,
}

/// A try sent to a node and not yet over: what [`State::end`] needs to close it.
pub struct Pending<'a> {
    /// The invocation's id.
    pub invocation: &'a str,
    /// The function.
    pub function: &'a str,
    /// The decision that sent it.
    pub decision: &'a Decision,
    /// The input's size, however it travels (what run time depends on).
    pub input_bytes: u64,
    token: u64,
    death: tokio_util::sync::CancellationToken,
}

impl Pending<'_> {
    /// Completes when the node this try went to is declared dead (missed
    /// heartbeats); never for a node that said it is leaving.
    pub async fn node_died(&self) {
        self.death.cancelled().await;
    }
}

impl State {
    /// An empty state where a node missing `dead_after` heartbeats is dead.
    pub fn new(dead_after: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                nodes: NodeTable::new(dead_after),
                functions: HashMap::new(),
                stats: Stats::default(),
            }),
            started: Instant::now(),
            reported: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data behind the lock: a panicked holder leaves nothing
        // half-done that matters more than staying up.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node's heartbeat arrived.
    pub fn heard(&self, load: NodeLoad) {
        self.lock().nodes.heard(load, Instant::now());
        self.reported.notify_waiters();
    }

    /// Resolves at the next node report (a node reports at once when an
    /// install ends).
    pub async fn reported(&self) {
        self.reported.notified().await;
    }

    /// A request was dropped: its reply subject is not an inbox.
    pub fn bad_reply_subject(&self) {
        self.lock().stats.bad_reply_subjects += 1;
    }

    /// A node load naming another node than its subject's was ignored.
    pub fn forged_load(&self) {
        self.lock().stats.forged_loads += 1;
    }

    /// An event went to the dead-letter queue.
    pub fn dead_lettered(&self) {
        self.lock().stats.dead_lettered += 1;
    }

    /// An event's dead letter could not be written.
    pub fn dlq_failed(&self) {
        self.lock().stats.dlq_failures += 1;
    }

    /// A redelivered event was sent to the node holding its run.
    pub fn attached(&self) {
        self.lock().stats.attached += 1;
    }

    /// Declares dead the nodes that missed their heartbeats, so the work in
    /// flight there ends at once ([`Pending::node_died`]); returns each
    /// newly dead node with how many invocations it had in flight.
    pub fn bury_dead(&self) -> Vec<(String, usize)> {
        self.lock().nodes.bury_dead(Instant::now())
    }

    /// A ping to `node` came back after `rtt_ms`.
    pub fn pinged(&self, node: &str, rtt_ms: f64) {
        self.lock().nodes.pinged(node, rtt_ms);
    }

    /// Nodes to ping: every live one.
    pub fn live_nodes(&self) -> Vec<String> {
        self.lock().nodes.live_nodes(Instant::now())
    }

    /// The registry announced a deployment.
    pub fn deployed(&self, deployment: Deployment) {
        self.lock()
            .functions
            .insert(deployment.manifest.name.clone(), Arc::new(deployment));
    }

    /// The registry announced a removal.
    pub fn removed(&self, function: &str) {
        self.lock().functions.remove(function);
    }

    /// The deployment of `function` as the registry watch last saw it.
    pub fn deployment(&self, function: &str) -> Option<Arc<Deployment>> {
        self.lock().functions.get(function).cloned()
    }

    /// An invocation arrived.
    pub fn start(&self) {
        let stats = &mut self.lock().stats;
        stats.received += 1;
        stats.in_flight += 1;
    }

    /// An invocation was answered, with `error` or not.
    pub fn finish(&self, error: Option<ErrorCode>) {
        let stats = &mut self.lock().stats;
        stats.in_flight = stats.in_flight.saturating_sub(1);
        match error {
            None => stats.succeeded += 1,
            Some(code) => {
                stats.failed += 1;
                *stats.errors.entry(code.as_u16()).or_default() += 1;
            }
        }
    }

    /// Chooses a node for `wanted`, skipping the nodes already `tried`.
    /// Placement runs on the views kept between decisions
    /// ([`NodeTable::current_views`]), under the lock: a decision copies
    /// nothing but what changed. A refusal is weighed (never, installing)
    /// under the same lock, on the same reports: a report heard in between
    /// (say, the install's end) could otherwise make a refusal written
    /// from the reports before it final.
    pub fn choose(&self, wanted: &Wanted<'_>, tried: &[String]) -> Choice {
        let now = Instant::now();
        let function = wanted.request.function;
        let mut inner = self.lock();
        let chosen = {
            let views = inner.nodes.current_views(function, now);
            let untried: Vec<NodeView>;
            let views = if tried.is_empty() {
                views
            } else {
                untried = views
                    .iter()
                    .filter(|v| !tried.contains(&v.node))
                    .cloned()
                    .collect();
                &untried
            };
            comfaas_placement::choose(views, wanted.request, &mut rand::rng()).map(|decision| {
                let tier = views
                    .iter()
                    .find(|v| v.node == decision.node)
                    .map_or(Tier::Edge, |v| v.tier);
                (decision, tier)
            })
        };
        let error = match chosen {
            Ok((decision, tier)) => return Choice::Node(decision, tier),
            Err(error) => error,
        };
        if !wanted.explain {
            return Choice::Nowhere(error);
        }
        // Only once every live node has had time to be heard (a dispatcher
        // that just started knows no node yet), and not while no node at
        // all is known (a site whose executors are all away may get them
        // back as they were).
        // A busy answer (429) had a node that could take it: only an
        // unavailable one (503) is worth a second look at every node.
        let never =
            error.code == ErrorCode::Unavailable && now.duration_since(self.started) > WARM_UP && {
                let known = inner.nodes.views(function, now);
                !known.is_empty() && !comfaas_placement::could_ever_take(&known, wanted.request)
            };
        if never {
            return Choice::Never(InvocationError::new(
                error.code,
                format!(
                    "{}; no node this dispatcher knows could ever take it",
                    error.message
                ),
            ));
        }
        if error.code == ErrorCode::Unavailable
            && wanted.may_wait
            && inner.nodes.coming(
                function,
                wanted.digest,
                wanted.fresh,
                wanted.request.placement,
                now,
            )
        {
            return Choice::Installing;
        }
        // The message already says, node by node, why none could take it
        // (installing, install failed, dead, too few processes).
        Choice::Nowhere(error)
    }

    /// The invocation is sent to the chosen node, expected to finish by the
    /// decision's estimate; the returned try names it to [`State::end`].
    pub fn begin<'a>(
        &self,
        invocation: &'a str,
        function: &'a str,
        decision: &'a Decision,
        input_bytes: u64,
    ) -> Pending<'a> {
        let done = Instant::now()
            + std::time::Duration::from_secs_f64(decision.estimate_ms.max(0.0) / 1000.0);
        let (token, death) = self.lock().nodes.sent(&decision.node, done);
        Pending {
            invocation,
            function,
            decision,
            input_bytes,
            token,
            death,
        }
    }

    /// A try is over: the node is no longer busy with it, what it taught is
    /// learnt, and the decision is kept for the metrics report.
    pub fn end(&self, sent: Pending<'_>, took_ms: u64, ended: Ended) {
        let decision = sent.decision;
        let node = decision.node.as_str();
        let record = PlacementRecord {
            invocation: sent.invocation.to_owned(),
            function: sent.function.to_owned(),
            node: node.to_owned(),
            procs: Some(decision.procs),
            reason: decision.reason.clone(),
            took_ms: Some(took_ms),
            estimate_ms: Some(decision.estimate_ms),
            candidates: decision.candidates.clone(),
            unix_ms: Some(now_unix_ms()),
        };
        let mut inner = self.lock();
        inner.nodes.answered(node, sent.token);
        match ended {
            Ended::Answered { took_ms, run_ms } => inner.nodes.observe(
                node,
                &Observed {
                    function: sent.function,
                    procs: decision.procs,
                    input_bytes: sent.input_bytes,
                    took_ms,
                    run_ms,
                },
            ),
            Ended::Unreachable => inner.nodes.unreachable(node),
            Ended::Failed => {}
        }
        let recent = &mut inner.stats.recent;
        if recent.len() == RECENT_DECISIONS {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Invocations and events received and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.lock().stats.in_flight
    }

    /// Each known node with its tier, runs and queue as it last reported.
    pub fn node_loads(&self) -> Vec<(String, Tier, u32, u32)> {
        self.lock().nodes.loads()
    }

    /// The metrics report of dispatcher `id`; forgets nodes long silent.
    pub fn metrics(&self, id: &str) -> DispatchMetrics {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.nodes.prune(now);
        let stats = &inner.stats;
        DispatchMetrics {
            schema: SCHEMA_VERSION,
            dispatcher: id.to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            received: stats.received,
            succeeded: stats.succeeded,
            failed: stats.failed,
            in_flight: stats.in_flight,
            errors: stats
                .errors
                .iter()
                .filter_map(|(code, count)| {
                    ErrorCode::from_u16(*code).map(|code| ErrorCount {
                        code,
                        count: *count,
                    })
                })
                .collect(),
            nodes: inner.nodes.metrics(now),
            recent: stats.recent.iter().cloned().collect(),
            sent_unix_ms: now_unix_ms(),
            bad_reply_subjects: stats.bad_reply_subjects,
            forged_loads: stats.forged_loads,
            dead_lettered: stats.dead_lettered,
            dlq_failures: stats.dlq_failures,
            attached: stats.attached,
        }
    }
}
