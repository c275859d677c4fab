//! What the node tells observers besides its heartbeat: its NATS micro
//! service (`comfaas-exec`, id = node id, endpoints `work` and `ping`
//! with their counters) and, when `metrics_addr` is set, its Prometheus
//! series. Work and pings feed both through [`Observe`]; the gauges
//! (running, queued, input bytes fetched) are read at scrape time from
//! the admission and the input cache, so the hot path never touches them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use comfaas_platform::micro::{EndpointCounter, MicroEndpoint, MicroService};
use comfaas_platform::reply::{self, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::admission::Admission;
use crate::config::ExecConfig;
use crate::inputs::InputCache;

/// Counters of the node's work, shared by the worker and the responders.
pub struct Observe {
    /// The `work` endpoint's micro counters.
    pub work: Arc<EndpointCounter>,
    /// The `ping` endpoint's micro counters.
    pub ping: Arc<EndpointCounter>,
    /// Prometheus series, when they are served.
    metrics: Option<ExecMetrics>,
    node: String,
}

/// Labels of an answered work message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    function: String,
    node: String,
    /// `ok`, or the error code (`429`, `500`, …).
    status: String,
}

/// Labels of a run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ran {
    function: String,
}

type Timings = Family<Ran, Histogram, fn() -> Histogram>;

/// Seconds, from half a millisecond to about a minute (doubling).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

struct ExecMetrics {
    registry: Registry,
    invocations: Family<Answered, Counter>,
    run_seconds: Timings,
    queue_seconds: Timings,
    fetch_seconds: Timings,
    running: Gauge,
    queued: Gauge,
    input_bytes_fetched: Counter,
}

impl ExecMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("comfaas_exec");
        let invocations = Family::<Answered, Counter>::default();
        registry.register(
            "invocations",
            "Work messages answered, by function, node and status (ok or error code)",
            invocations.clone(),
        );
        let timings = |registry: &mut Registry, name: &str, help: &str| {
            let family: Timings = Family::new_with_constructor(seconds);
            registry.register(name, help, family.clone());
            family
        };
        let run_seconds = timings(&mut registry, "run_seconds", "Run time of functions");
        let queue_seconds = timings(
            &mut registry,
            "queue_seconds",
            "Time invocations waited in the node's queue for a slot",
        );
        let fetch_seconds = timings(
            &mut registry,
            "fetch_seconds",
            "Time spent getting large inputs before a run",
        );
        let running = Gauge::default();
        registry.register("running", "Runs holding a slot", running.clone());
        let queued = Gauge::default();
        registry.register("queued", "Invocations waiting for a slot", queued.clone());
        let input_bytes_fetched = Counter::default();
        registry.register(
            "input_bytes_fetched",
            "Bytes of large inputs fetched from the object store",
            input_bytes_fetched.clone(),
        );
        Self {
            registry,
            invocations,
            run_seconds,
            queue_seconds,
            fetch_seconds,
            running,
            queued,
            input_bytes_fetched,
        }
    }
}

/// The `function` label of work naming no function this node has.
pub const UNKNOWN_FUNCTION: &str = "_unknown";

impl Observe {
    /// Counters for `config`'s node; Prometheus series only when it serves them.
    pub fn new(config: &ExecConfig) -> Arc<Self> {
        Arc::new(Self {
            work: Arc::default(),
            ping: Arc::default(),
            metrics: (!config.metrics_addr.is_empty()).then(ExecMetrics::new),
            node: config.node.clone(),
        })
    }

    /// A work message for `function` was answered with `headers` after `took`.
    pub fn answered(&self, function: &str, headers: &async_nats::HeaderMap, took: Duration) {
        let status = match reply::outcome(Some(headers)) {
            Outcome::Error {
                raw_code, message, ..
            } => {
                let code = raw_code.parse().unwrap_or(0);
                self.work.error(took, code, &message);
                raw_code
            }
            _ => {
                self.work.ok(took);
                comfaas_schemas::names::headers::STATUS_OK.to_owned()
            }
        };
        if let Some(m) = &self.metrics {
            // Work for a function this node does not have (404) or that is
            // malformed (400) names whatever its sender chose: one label
            // for all of them, so the series stay bounded.
            let function = if matches!(status.as_str(), "400" | "404") {
                UNKNOWN_FUNCTION
            } else {
                function
            };
            m.invocations
                .get_or_create(&Answered {
                    function: function.to_owned(),
                    node: self.node.clone(),
                    status,
                })
                .inc();
        }
    }

    /// A run of `function` waited `queue` for its slot, `fetch` for its
    /// input, then ran for `run`.
    pub fn ran(&self, function: &str, queue: Duration, fetch: Duration, run: Duration) {
        let Some(m) = &self.metrics else { return };
        let labels = Ran {
            function: function.to_owned(),
        };
        m.queue_seconds
            .get_or_create(&labels)
            .observe(queue.as_secs_f64());
        m.fetch_seconds
            .get_or_create(&labels)
            .observe(fetch.as_secs_f64());
        m.run_seconds
            .get_or_create(&labels)
            .observe(run.as_secs_f64());
    }

    /// The Prometheus text now: gauges read from `admission` and `inputs`.
    pub fn render(&self, admission: &Admission, inputs: &InputCache) -> String {
        let Some(m) = &self.metrics else {
            return String::new();
        };
        let (running, queued) = admission.counts();
        m.running.set(i64::from(running));
        m.queued.set(i64::from(queued));
        let fetched = inputs.stats().fetched_bytes;
        m.input_bytes_fetched
            .inc_by(fetched.saturating_sub(m.input_bytes_fetched.get()));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        text
    }

    /// The node's micro service description, its endpoints fed by these counters.
    pub fn service(&self, config: &ExecConfig) -> MicroService {
        let subjects = config.nats.subjects();
        let endpoint =
            |name: &str, subject: String, counter: &Arc<EndpointCounter>| MicroEndpoint {
                name: name.to_owned(),
                subject,
                // Each node has its own work and ping subjects: no queue group.
                queue_group: String::new(),
                metadata: HashMap::new(),
                counter: counter.clone(),
            };
        MicroService {
            name: comfaas_schemas::names::micro::EXEC_SERVICE.to_owned(),
            id: config.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "comfaas executor: runs the invocations placed on its node".to_owned(),
            metadata: HashMap::from([
                ("node".to_owned(), config.node.clone()),
                ("tier".to_owned(), config.tier.to_string()),
                ("site".to_owned(), config.site.clone()),
                ("slots".to_owned(), config.slots().to_string()),
            ]),
            endpoints: vec![
                endpoint("work", subjects.work(&config.node), &self.work),
                endpoint("ping", subjects.node_ping(&config.node), &self.ping),
            ],
        }
    }
}
