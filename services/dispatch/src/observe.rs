//! What the dispatcher tells observers besides its metrics report: its
//! NATS micro service (`comfaas-dispatch`, id = dispatcher id, endpoints
//! `invoke` and `events` describing its existing subscriptions, with their
//! counters) and, when `metrics_addr` is set, its Prometheus series.
//! Placement and answers feed both through [`Observe`]; gauges (in
//! flight, each node's queue as it last reported) are read from the
//! [`State`] at scrape time, so the hot path never touches them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use comfaas_platform::micro::{EndpointCounter, MicroEndpoint, MicroService};
use comfaas_platform::reply;
use comfaas_schemas::names::{self, micro};
use comfaas_schemas::{ErrorCode, Tier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::DispatchConfig;
use crate::state::State;

/// Counters of the dispatcher's work, shared by its tasks.
pub struct Observe {
    /// The `invoke` endpoint's micro counters (requests on `<prefix>.invoke.>`).
    pub invoke: Arc<EndpointCounter>,
    /// The `events` endpoint's micro counters (events from `COMFAAS_EVENTS`).
    pub events: Arc<EndpointCounter>,
    metrics: Option<DispatchMetrics>,
}

/// Labels of an answered invocation or event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    function: String,
    /// The last node tried; empty when none was.
    node: String,
    /// `ok`, or the error code (`404`, `503`, …).
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByFunction {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByTier {
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByNode {
    node: String,
    tier: String,
}

type Latency = Family<ByFunction, Histogram, fn() -> Histogram>;

/// Seconds, from half a millisecond to about a minute (doubling).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

struct DispatchMetrics {
    registry: Registry,
    invocations: Family<Answered, Counter>,
    latency: Latency,
    placements: Family<ByTier, Counter>,
    retried: Family<ByFunction, Counter>,
    dead_lettered: Family<ByFunction, Counter>,
    in_flight: Gauge,
    node_queued: Family<ByNode, Gauge>,
    node_running: Family<ByNode, Gauge>,
}

impl DispatchMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("comfaas_dispatch");
        let invocations = Family::<Answered, Counter>::default();
        registry.register(
            "invocations",
            "Invocations and events answered, by function, last node tried and status (ok or error code)",
            invocations.clone(),
        );
        let latency: Latency = Family::new_with_constructor(seconds);
        registry.register(
            "latency_seconds",
            "Time from an invocation's arrival at the dispatcher to its answer",
            latency.clone(),
        );
        let placements = Family::<ByTier, Counter>::default();
        registry.register(
            "placements",
            "Placement decisions, by the chosen node's tier",
            placements.clone(),
        );
        let retried = Family::<ByFunction, Counter>::default();
        registry.register(
            "events_retried",
            "Events handed back to their stream for a later try",
            retried.clone(),
        );
        let dead_lettered = Family::<ByFunction, Counter>::default();
        registry.register(
            "events_dead_lettered",
            "Events written to the dead-letter queue",
            dead_lettered.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Invocations and events received and not yet answered",
            in_flight.clone(),
        );
        let node_queued = Family::<ByNode, Gauge>::default();
        registry.register(
            "node_queued",
            "Invocations waiting for a slot at each node, as it last reported",
            node_queued.clone(),
        );
        let node_running = Family::<ByNode, Gauge>::default();
        registry.register(
            "node_running",
            "Runs at each node, as it last reported",
            node_running.clone(),
        );
        Self {
            registry,
            invocations,
            latency,
            placements,
            retried,
            dead_lettered,
            in_flight,
            node_queued,
            node_running,
        }
    }
}

/// What [`Observe::answered`] counts of an answer (the dispatcher's
/// `place::Answer`, seen without depending on it).
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The function the request named, if it named one.
    pub function: Option<&'a str>,
    /// Its error, if it failed.
    pub error: Option<ErrorCode>,
    /// The answer's headers (an error's text).
    pub headers: &'a async_nats::HeaderMap,
    /// The node tried last, if any.
    pub node: Option<&'a str>,
}

/// The `function` label of answers to requests naming no deployed function.
pub const UNKNOWN_FUNCTION: &str = "_unknown";

fn by_function(function: &str) -> ByFunction {
    ByFunction {
        function: function.to_owned(),
    }
}

impl Observe {
    /// Counters for `config`; Prometheus series only when it serves them.
    pub fn new(config: &DispatchConfig) -> Self {
        Self {
            invoke: Arc::default(),
            events: Arc::default(),
            metrics: (!config.metrics_addr.is_empty()).then(DispatchMetrics::new),
        }
    }

    /// An invocation (or, when `event`, one try of an event) got `answer`
    /// `took` after it arrived.
    pub fn answered(&self, answer: &Counted<'_>, took: Duration, event: bool) {
        let counter = if event { &self.events } else { &self.invoke };
        let status = match answer.error {
            Some(code) => {
                let (_, text) = reply::error_of(answer.headers);
                counter.error(took, code.as_u16(), &text);
                code.as_u16().to_string()
            }
            None => {
                counter.ok(took);
                names::headers::STATUS_OK.to_owned()
            }
        };
        let Some(m) = &self.metrics else { return };
        // A request for a function that is not deployed (404) or a
        // malformed one (400) names whatever its sender chose: one label
        // for all of them, so no sender can grow the series without bound.
        let function = match answer.error {
            Some(ErrorCode::NotFound | ErrorCode::BadRequest) => UNKNOWN_FUNCTION,
            _ => answer.function.unwrap_or_default(),
        };
        m.invocations
            .get_or_create(&Answered {
                function: function.to_owned(),
                node: answer.node.unwrap_or_default().to_owned(),
                status,
            })
            .inc();
        m.latency
            .get_or_create(&by_function(function))
            .observe(took.as_secs_f64());
    }

    /// A node of `tier` was chosen for a try.
    pub fn placed(&self, tier: Tier) {
        if let Some(m) = &self.metrics {
            m.placements
                .get_or_create(&ByTier {
                    tier: tier.to_string(),
                })
                .inc();
        }
    }

    /// An event of `function` was handed back for a later try.
    pub fn retried(&self, function: &str) {
        if let Some(m) = &self.metrics {
            m.retried.get_or_create(&by_function(function)).inc();
        }
    }

    /// An event of `function` was dead-lettered.
    pub fn dead_lettered(&self, function: &str) {
        if let Some(m) = &self.metrics {
            m.dead_lettered.get_or_create(&by_function(function)).inc();
        }
    }

    /// The Prometheus text now, gauges read from `state`.
    pub fn render(&self, state: &State, id: &str) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        let report = state.metrics(id);
        m.in_flight.set(i64::from(report.in_flight));
        // Nodes come and go: only those known now are reported.
        m.node_queued.clear();
        m.node_running.clear();
        for (node, tier, running, queued) in state.node_loads() {
            let labels = ByNode {
                node,
                tier: tier.to_string(),
            };
            m.node_queued.get_or_create(&labels).set(i64::from(queued));
            m.node_running
                .get_or_create(&labels)
                .set(i64::from(running));
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        text
    }

    /// The dispatcher's micro service description: its invocation
    /// subscription and its events consumer as endpoints, fed by these
    /// counters.
    pub fn service(&self, config: &DispatchConfig) -> MicroService {
        let subjects = config.nats.subjects();
        MicroService {
            name: micro::DISPATCH_SERVICE.to_owned(),
            id: config.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "comfaas dispatcher: places invocations and events on live nodes"
                .to_owned(),
            metadata: HashMap::from([
                ("dispatcher".to_owned(), config.id.clone()),
                ("prefix".to_owned(), subjects.prefix().to_owned()),
            ]),
            endpoints: vec![
                MicroEndpoint {
                    name: "invoke".to_owned(),
                    subject: subjects.invoke_all(),
                    queue_group: names::DISPATCH_QUEUE_GROUP.to_owned(),
                    metadata: HashMap::new(),
                    counter: self.invoke.clone(),
                },
                MicroEndpoint {
                    name: "events".to_owned(),
                    subject: subjects.event_all(),
                    // Not a subscription: a durable JetStream consumer
                    // all dispatchers share, which is what the queue
                    // group stands for here.
                    queue_group: names::DISPATCH_EVENTS_CONSUMER.to_owned(),
                    metadata: HashMap::from([(
                        "consumer".to_owned(),
                        format!(
                            "{}/{}",
                            names::EVENTS_STREAM,
                            names::DISPATCH_EVENTS_CONSUMER
                        ),
                    )]),
                    counter: self.events.clone(),
                },
            ],
        }
    }
}
