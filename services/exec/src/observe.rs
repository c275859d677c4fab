//! What the node tells observers besides its heartbeat: its NATS micro
//! service (`comfaas-exec`, id = node id, endpoints `work` and `ping`
//! with their counters) and, when `metrics_addr` is set, its Prometheus
//! series. Work and pings feed both through [`Observe`]; the gauges
//! (running, queued, input bytes fetched) are read at scrape time from
//! the admission and the input cache, so the hot path never touches them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use comfaas_platform::metrics::{
    self, function_label, seconds_by_function, Answered, ByFunction, SecondsByFunction,
};
use comfaas_platform::micro::{EndpointCounter, MicroEndpoint, MicroService};
use comfaas_platform::reply;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

struct ExecMetrics {
    registry: Registry,
    invocations: Family<Answered, Counter>,
    run_seconds: SecondsByFunction,
    queue_seconds: SecondsByFunction,
    fetch_seconds: SecondsByFunction,
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
            let family = seconds_by_function();
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
        let (code, message) = reply::error_of(headers);
        if code == 0 {
            self.work.ok(took);
        } else {
            self.work.error(took, code, &message);
        }
        if let Some(m) = &self.metrics {
            let status = if code == 0 {
                comfaas_schemas::names::headers::STATUS_OK.to_owned()
            } else {
                code.to_string()
            };
            let function = function_label(function, code);
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
        let labels = ByFunction::of(function);
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
        metrics::encode(&m.registry)
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
