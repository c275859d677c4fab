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

use comfaas_platform::metrics::{
    self, function_label, seconds_by_function, Answered, ByFunction, SecondsByFunction,
};
use comfaas_platform::micro::{EndpointCounter, MicroEndpoint, MicroService};
use comfaas_platform::reply;
use comfaas_schemas::names::{self, micro};
use comfaas_schemas::{ErrorCode, Tier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByTier {
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByNode {
    node: String,
    tier: String,
}

struct DispatchMetrics {
    registry: Registry,
    invocations: Family<Answered, Counter>,
    latency: SecondsByFunction,
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
        let latency = seconds_by_function();
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
        let code = answer.error.map_or(0, ErrorCode::as_u16);
        if code == 0 {
            counter.ok(took);
        } else {
            counter.error(took, code, &reply::error_of(answer.headers).1);
        }
        let Some(m) = &self.metrics else { return };
        let status = if code == 0 {
            names::headers::STATUS_OK.to_owned()
        } else {
            code.to_string()
        };
        let function = function_label(answer.function.unwrap_or_default(), code);
        m.invocations
            .get_or_create(&Answered {
                function: function.to_owned(),
                node: answer.node.unwrap_or_default().to_owned(),
                status,
            })
            .inc();
        m.latency
            .get_or_create(&ByFunction::of(function))
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
            m.retried.get_or_create(&ByFunction::of(function)).inc();
        }
    }

    /// An event of `function` was dead-lettered.
    pub fn dead_lettered(&self, function: &str) {
        if let Some(m) = &self.metrics {
            m.dead_lettered
                .get_or_create(&ByFunction::of(function))
                .inc();
        }
    }

    /// The Prometheus text now, gauges read from `state`.
    pub fn render(&self, state: &State) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        m.in_flight.set(i64::from(state.in_flight()));
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
        metrics::encode(&m.registry)
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
