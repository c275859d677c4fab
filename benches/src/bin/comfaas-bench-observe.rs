//! `comfaas-bench-observe`: what observability costs on the hot path, on
//! and off in the same run.
//!
//! Each arm is a site of its own (a nats-server, an in-process dispatcher
//! and an executor serving a trivial warm handler-mode function) whose
//! services are configured by the arm's [`Toggles`]. Two paths are
//! measured on each arm:
//! (1) the dispatch path: invoke → dispatcher → executor → reply;
//! (2) a warm handler call at the node alone: an invocation sent straight
//!     to the executor's work subject, as a dispatcher sends it.
//! Rounds interleave the arms (off, on, on, off, …), so drift on a shared
//! machine falls on both alike; the figures are over all rounds.
//!
//! Toggles: Prometheus metrics (dispatcher and executor) and function
//! logs (the executor's `[logs] enabled`; the handler prints one line per
//! call, so every call has a log to publish). The arms: both off (the
//! baseline of the ratios), metrics only, logs only, both on. A new toggle
//! is one field of [`Toggles`], one line where [`Arm::start`] configures
//! the services, and more entries in [`arms`].
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-observe`

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use comfaas_dispatch::DispatchConfig;
use comfaas_schemas::encode;
use comfaas_tests::{NodeSpec, Platform};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Rounds; each measures every arm on every path once
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Requests per arm, path and round at 1 in flight
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests per arm, path and round at 16 in flight
    #[arg(long, default_value_t = 1600)]
    requests_parallel: usize,
}

/// What an arm turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Toggles {
    /// Prometheus metrics on the dispatcher and the executor.
    metrics: bool,
    /// Function logs: each run's stderr published to `COMFAAS_LOGS`.
    logs: bool,
}

/// The arms compared: the first is the baseline of the ratios.
fn arms() -> Vec<(&'static str, Toggles)> {
    vec![
        (
            "both off",
            Toggles {
                metrics: false,
                logs: false,
            },
        ),
        (
            "metrics on",
            Toggles {
                metrics: true,
                logs: false,
            },
        ),
        (
            "logs on",
            Toggles {
                metrics: false,
                logs: true,
            },
        ),
        (
            "both on",
            Toggles {
                metrics: true,
                logs: true,
            },
        ),
    ]
}

const PAYLOAD: &[u8] = br#"{"name":"bench","readings":[21.0,21.2,20.9,21.1]}"#;
const NODE: &str = "edge-1";
const FUNCTION: &str = "warm";

/// One arm's site.
struct Arm {
    name: &'static str,
    platform: Platform,
    metrics_addr: Option<String>,
}

/// A free loopback address for a metrics endpoint.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

impl Arm {
    async fn start(name: &'static str, toggles: Toggles) -> Self {
        let platform = Platform::start().await;
        let (dispatch_metrics, exec_metrics) = if toggles.metrics {
            (free_addr(), free_addr())
        } else {
            (String::new(), String::new())
        };
        drop(
            platform
                .dispatcher_with(DispatchConfig {
                    metrics_addr: dispatch_metrics.clone(),
                    ..DispatchConfig::default()
                })
                .await,
        );
        drop(
            platform
                .executor(NodeSpec {
                    slots: 2,
                    queue: 128,
                    metrics_addr: exec_metrics,
                    logs: comfaas_exec::LogsConfig {
                        enabled: toggles.logs,
                        ..comfaas_exec::LogsConfig::default()
                    },
                    ..NodeSpec::edge(NODE)
                })
                .await,
        );
        let function = platform.function(
            FUNCTION,
            "mode = \"handler\"\nworkers = 2",
            &[(
                "main.py",
                "import sys\n\ndef handle(data: bytes) -> bytes:\n    print(f\"handled {len(data)} bytes\", file=sys.stderr)\n    return data\n",
            )],
        );
        platform.deploy(&function, &[NODE]).await;
        Self {
            name,
            platform,
            metrics_addr: Some(dispatch_metrics).filter(|a| !a.is_empty()),
        }
    }
}

/// The paths measured, each a request subject and a payload.
#[derive(Clone, Copy)]
enum Path {
    Dispatch,
    Handler,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Self::Dispatch => "(1) invoke → dispatcher → executor (warm handler)",
            Self::Handler => "(2) warm handler call at the node",
        }
    }

    fn request(self, p: &Platform) -> (String, Bytes) {
        match self {
            Self::Dispatch => (p.subjects.invoke(FUNCTION), Bytes::from_static(PAYLOAD)),
            Self::Handler => {
                let mut invocation = comfaas_tests::invocation("bench", FUNCTION);
                invocation.input = PAYLOAD.to_vec();
                (
                    p.subjects.work(NODE),
                    encode(&invocation).expect("encode").into(),
                )
            }
        }
    }
}

/// Latencies (µs) and wall time of requests of one arm and path, over rounds.
struct Figures {
    hist: Histogram<u64>,
    requests: usize,
    wall: Duration,
}

impl Figures {
    fn new() -> Self {
        Self {
            hist: comfaas_tests::measure::histogram(),
            requests: 0,
            wall: Duration::ZERO,
        }
    }

    fn per_s(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
}

/// Sends `total` requests of `path` to `p`, `in_flight` at a time, into `figures`.
async fn measure(p: &Platform, path: Path, in_flight: usize, total: usize, figures: &mut Figures) {
    let (subject, payload) = path.request(p);
    let (hist, wall) =
        comfaas_tests::measure::round_trips(&p.client, &subject, payload, in_flight, total).await;
    figures.wall += wall;
    figures.requests += total;
    figures.hist.add(&hist).expect("merge");
}

/// One scrape of `addr`, as Prometheus would every so often: its size.
async fn scrape(addr: &str) -> usize {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text.len()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut sites = Vec::new();
    for (name, toggles) in arms() {
        eprintln!("starting arm `{name}`");
        sites.push(Arm::start(name, toggles).await);
    }
    let paths = [Path::Dispatch, Path::Handler];
    let flights = [(1, args.requests), (16, args.requests_parallel)];
    // Warm-up: workers started, connections and caches warm, on every arm.
    for arm in &sites {
        for path in paths {
            measure(&arm.platform, path, 4, 100, &mut Figures::new()).await;
        }
    }
    // figures[arm][path][flight]
    let mut figures: Vec<Vec<Vec<Figures>>> = sites
        .iter()
        .map(|_| {
            paths
                .iter()
                .map(|_| flights.iter().map(|_| Figures::new()).collect())
                .collect()
        })
        .collect();
    for round in 0..args.rounds {
        // Alternate the order, so neither arm always goes first.
        let mut order: Vec<usize> = (0..sites.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (pi, path) in paths.iter().enumerate() {
            for (fi, (in_flight, total)) in flights.iter().enumerate() {
                for &ai in &order {
                    let arm = &sites[ai];
                    measure(
                        &arm.platform,
                        *path,
                        *in_flight,
                        *total,
                        &mut figures[ai][pi][fi],
                    )
                    .await;
                    if let Some(addr) = &arm.metrics_addr {
                        scrape(addr).await;
                    }
                }
            }
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    for arm in &sites {
        if let Some(addr) = &arm.metrics_addr {
            eprintln!(
                "`{}`: a scrape of the dispatcher is {} bytes",
                arm.name,
                scrape(addr).await
            );
        }
    }

    println!(
        "\n{} rounds, arms interleaved; each cell over all rounds. Ratios are to `{}`.\n",
        args.rounds, sites[0].name
    );
    println!("| path | in flight | arm | requests | p50 µs | p99 µs | req/s | p50 ÷ base | req/s ÷ base |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for (pi, path) in paths.iter().enumerate() {
        for (fi, (in_flight, _)) in flights.iter().enumerate() {
            let base = &figures[0][pi][fi];
            for (ai, arm) in sites.iter().enumerate() {
                let f = &figures[ai][pi][fi];
                println!(
                    "| {} | {in_flight} | {} | {} | {} | {} | {:.0} | {:.3} | {:.3} |",
                    path.name(),
                    arm.name,
                    f.requests,
                    f.hist.value_at_quantile(0.5),
                    f.hist.value_at_quantile(0.99),
                    f.per_s(),
                    f.hist.value_at_quantile(0.5) as f64 / base.hist.value_at_quantile(0.5) as f64,
                    f.per_s() / base.per_s(),
                );
            }
        }
    }
}
