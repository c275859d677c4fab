//! `comfaas-bench-runtimes`: the runtimes issue's figures, in one run.
//!
//! 1. Cold deploy to first result of a Python function with one dependency
//!    (a local wheel, so the figure is install work, not download), with uv
//!    against `python3 -m venv` + pip.
//! 2. Warm handler-mode invocations against script mode through the full
//!    path (dispatcher + executor): req/s, p50, p99.
//! 3. Points per second per process of the three Pi functions on the same
//!    input (1,000,000 points; the server's max payload is raised to 16 MB).
//! 4. What the sandbox adds: p50 of a script-mode and a warm handler-mode
//!    invocation through the full path on a node with `sandbox.isolation =
//!    "bwrap"` and on one with `"none"`, in the same run; and p50 of a bare
//!    process run (`/bin/true`, no NATS) with and without it.
//!
//! 5. Warm handlers of every runtime (issue 14): echo handlers in C (the
//!    runtime's header), Rust (an `exec` bundle of `comfaas-echo-handler`,
//!    built on `comfaas-handler`) and Python, through the full path with the
//!    dispatcher and the executor as separate processes, at 64 in flight,
//!    with one warm worker and with two.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-runtimes`
//! (`--only-sandbox` for part 4 alone, `--only-warm` for part 5 alone,
//! `--only-cold` for part 1 alone, which also prints where each cold
//! deploy's time went).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Parser;
use comfaas_schemas::names::headers as h;
use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
use comfaas_tests::{header, points, repo_root, write_wheel, NodeSpec, Platform};
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    /// Cold deploys per tool
    #[arg(long, default_value_t = 5)]
    deploys: usize,
    /// Invocations per mode and concurrency
    #[arg(long, default_value_t = 400)]
    invocations: usize,
    /// Pi runs per language and process count
    #[arg(long, default_value_t = 5)]
    pi_runs: usize,
    /// Measure only what the sandbox adds (part 4)
    #[arg(long)]
    only_sandbox: bool,
    /// Measure only the warm handlers of every runtime (part 5)
    #[arg(long)]
    only_warm: bool,
    /// Invocations per warm handler measurement (part 5)
    #[arg(long, default_value_t = 20_000)]
    warm_invocations: usize,
    /// Measure only the cold deploys (part 1)
    #[arg(long)]
    only_cold: bool,
}

/// One cold deploy, split (ms): the `deploy_dir` call, the registry watch
/// (deployment written until the node saw it), the node's install steps as
/// it reports them in its `FunctionState.install`, the report reaching us
/// (install ended until its heartbeat arrived), and from there to the first
/// ok answer (placement and the first run).
struct ColdSplit {
    total: u64,
    deploy: u64,
    watch: u64,
    fetch: u64,
    unpack: u64,
    steps: Vec<(String, u64)>,
    other: u64,
    report: u64,
    first_run: u64,
}

async fn cold_deploy(p: &Platform, name: &str, node: &str, body: &str) -> ColdSplit {
    use comfaas_schemas::{decode, now_unix_ms, InstallState, NodeLoad};
    use futures::StreamExt;
    let extra = format!("requirements = [\"comfaas-probe==1.0\"]\nplacement = \"node:{node}\"");
    let dir = p.function(name, &extra, &[("main.py", body)]);
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load(node))
        .await
        .expect("subscribe");
    p.client.flush().await.expect("flush");
    let (started, started_unix) = (Instant::now(), now_unix_ms());
    let deployment = comfaas::deploy::deploy_dir(&p.registry, &dir)
        .await
        .expect("deploy");
    let deployed = started.elapsed().as_millis() as u64;
    // The node's first report of the ended install, read beside the invocations.
    let function = name.to_owned();
    let report = tokio::spawn(async move {
        while let Some(message) = loads.next().await {
            let Ok(load) = decode::<NodeLoad>(&message.payload) else {
                continue;
            };
            let state = load.functions.into_iter().find(|f| {
                f.name == function && f.state != InstallState::Installing && f.install.is_some()
            });
            if let Some(state) = state {
                return (now_unix_ms(), state);
            }
        }
        panic!("no report");
    });
    // Until the first invocation answers: install + placement + run.
    loop {
        let reply = p.invoke(name, "").await;
        if header(&reply, h::STATUS) == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed().as_millis() as u64;
    let (heard_unix, state) = report.await.expect("report");
    let times = state.install.expect("install times");
    let steps: Vec<(String, u64)> = times.steps.iter().map(|s| (s.name.clone(), s.ms)).collect();
    let ended_unix = times.seen_unix_ms + times.total_ms;
    ColdSplit {
        total,
        deploy: deployed,
        watch: times
            .seen_unix_ms
            .saturating_sub(deployment.deployed_unix_ms),
        fetch: times.fetch_ms,
        unpack: times.unpack_ms,
        other: times.total_ms.saturating_sub(
            times.fetch_ms + times.unpack_ms + steps.iter().map(|s| s.1).sum::<u64>(),
        ),
        steps,
        report: heard_unix.saturating_sub(ended_unix),
        first_run: (started_unix + total).saturating_sub(heard_unix),
    }
}

fn median(values: impl Iterator<Item = u64>) -> u64 {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

async fn cold_deploys(p: &Platform, rounds: usize) {
    println!("\n### Cold deploy to first result (one dependency, from a local wheel)\n");
    let body = "import comfaas_probe\nprint(comfaas_probe.VERSION)\n";
    let mut summary = Vec::new();
    for (tool, node) in [("uv", "uv-1"), ("python3 -m venv + pip", "pip-1")] {
        let mut splits = Vec::new();
        for round in 0..rounds {
            let name = format!("cold-{}-{round}", node.trim_end_matches("-1"));
            splits.push(cold_deploy(p, &name, node, body).await);
        }
        summary.push((tool, splits));
    }
    println!("| tool | deploys | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (tool, splits) in &summary {
        let mut times: Vec<u64> = splits.iter().map(|s| s.total).collect();
        times.sort_unstable();
        println!(
            "| {tool} | {} | {} | {} | {} |",
            times.len(),
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    println!("\n### Cold deploy, split (ms; each column's median over the deploys)\n");
    println!("| tool | total | deploy call | watch | fetch | unpack | runtime steps | other | report | placement + first run |");
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    for (tool, splits) in &summary {
        let m = |f: fn(&ColdSplit) -> u64| median(splits.iter().map(f));
        let names: Vec<String> = splits
            .first()
            .map(|s| s.steps.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let steps: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ms = median(splits.iter().filter_map(|s| s.steps.get(i).map(|x| x.1)));
                format!("{n} {ms}")
            })
            .collect();
        println!(
            "| {tool} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m(|s| s.total),
            m(|s| s.deploy),
            m(|s| s.watch),
            m(|s| s.fetch),
            m(|s| s.unpack),
            steps.join(", "),
            m(|s| s.other),
            m(|s| s.report),
            m(|s| s.first_run),
        );
    }
}

async fn measure(p: &Platform, function: &str, in_flight: usize, total: usize) -> (u64, u64, f64) {
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new(3).expect("histogram"),
    ));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let client = p.client.clone();
        let subject = p.subjects.invoke(function);
        let (hist, next) = (hist.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let reply = comfaas_tests::request(
                    &client,
                    &subject,
                    HeaderMap::new(),
                    Bytes::from_static(b"{\"readings\":[21.0,21.5,20.9,35.0]}"),
                )
                .await;
                assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
                hist.lock()
                    .expect("lock")
                    .record(t.elapsed().as_micros() as u64)
                    .expect("record");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let per_s = total as f64 / started.elapsed().as_secs_f64();
    let hist = hist.lock().expect("lock");
    (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        per_s,
    )
}

async fn warm_against_script(p: &Platform, total: usize) {
    println!("\n### Handler mode (warm workers) against script mode, full path\n");
    let source =
        std::fs::read_to_string(repo_root().join("functions/sensor-stats/main.py")).expect("read");
    p.deploy(
        &p.function(
            "stats-script",
            "placement = \"node:uv-1\"",
            &[("main.py", &source)],
        ),
        &["uv-1"],
    )
    .await;
    p.deploy(
        &p.function(
            "stats-handler",
            "placement = \"node:uv-1\"\nmode = \"handler\"\nworkers = 2",
            &[("main.py", &source)],
        ),
        &["uv-1"],
    )
    .await;
    println!("| mode | in flight | invocations | p50 µs | p99 µs | req/s | req/s ÷ script |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for in_flight in [1usize, 8] {
        let script_total = (total / 4).max(20);
        let _ = measure(p, "stats-script", in_flight, 10).await;
        let _ = measure(p, "stats-handler", in_flight, 50).await;
        let script = measure(p, "stats-script", in_flight, script_total).await;
        let handler = measure(p, "stats-handler", in_flight, total * 10).await;
        for (mode, n, (p50, p99, rate)) in [
            ("script", script_total, script),
            ("handler", total * 10, handler),
        ] {
            println!(
                "| {mode} | {in_flight} | {n} | {p50} | {p99} | {rate:.0} | {:.1} |",
                rate / script.2
            );
        }
    }
}

async fn pi_rates(p: &Platform, runs: usize) {
    println!("\n### Monte Carlo Pi: points per second per process, same input\n");
    for name in ["pi-mpi-c", "pi-mpi-rs", "pi-mpi-py"] {
        p.deploy(&repo_root().join("functions").join(name), &["uv-1"])
            .await;
    }
    let n = 1_000_000;
    let data = points(n, 42);
    println!("| function | procs | runs | best s (in-function) | points/s/process | ÷ C |");
    println!("|---|---:|---:|---:|---:|---:|");
    for procs in [1u32, 2] {
        let mut c_rate = 0.0;
        for name in ["pi-mpi-c", "pi-mpi-rs", "pi-mpi-py"] {
            let mut best = f64::INFINITY;
            for _ in 0..runs {
                let mut headers = HeaderMap::new();
                headers.insert(h::PROCS, procs.to_string().as_str());
                headers.insert(h::PLACEMENT, "node:uv-1");
                let reply = p.invoke_bytes(name, data.clone(), headers).await;
                assert_eq!(
                    header(&reply, h::STATUS),
                    "ok",
                    "{name}: {:?}",
                    reply.headers
                );
                let out: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
                best = best.min(out["seconds"].as_f64().expect("seconds"));
            }
            let rate = n as f64 / best / f64::from(procs);
            if name == "pi-mpi-c" {
                c_rate = rate;
            }
            println!(
                "| {name} | {procs} | {runs} | {best:.4} | {rate:.3e} | {:.2} |",
                rate / c_rate
            );
        }
    }
}

/// Part 4: the same functions on a sandboxed node and an unconfined one,
/// one invocation at a time, alternating rounds so both see the same
/// machine.
async fn sandbox_cost(p: &Platform, total: usize) {
    println!("\n### What the sandbox adds (p50, one in flight, same run)\n");
    let source =
        std::fs::read_to_string(repo_root().join("functions/sensor-stats/main.py")).expect("read");
    for node in ["boxed-1", "bare-1"] {
        for (mode, extra) in [("script", ""), ("handler", "mode = \"handler\"\n")] {
            let name = format!("{mode}-{}", node.trim_end_matches("-1"));
            let manifest = format!("{extra}placement = \"node:{node}\"");
            p.deploy(
                &p.function(&name, &manifest, &[("main.py", &source)]),
                &[node],
            )
            .await;
        }
    }
    println!("| mode | invocations | p50 µs, bwrap | p50 µs, none | added µs |");
    println!("|---|---:|---:|---:|---:|");
    for (mode, n) in [("script", (total / 2).max(20)), ("handler", total * 5)] {
        let (boxed, bare) = (format!("{mode}-boxed"), format!("{mode}-bare"));
        let _ = measure(p, &boxed, 1, 10).await;
        let _ = measure(p, &bare, 1, 10).await;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            on.push(measure(p, &boxed, 1, n / 5).await.0);
            off.push(measure(p, &bare, 1, n / 5).await.0);
        }
        on.sort_unstable();
        off.sort_unstable();
        let (on, off) = (on[2], off[2]);
        println!(
            "| {mode} | {n} | {on} | {off} | {} |",
            on as i64 - off as i64
        );
    }
    bare_process_cost(p, total).await;
}

/// p50 of running `/bin/true` as a run, with the sandbox and without.
async fn bare_process_cost(p: &Platform, total: usize) {
    use comfaas_runtime::{RunInput, RunSpec, SandboxConfig, Sandboxes};
    let data = p.scratch.path().join("bare-process");
    let manifest = comfaas_schemas::Manifest::from_toml(
        "name = \"truth\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"true\"\n",
    )
    .expect("manifest");
    let installation = comfaas_runtime::Installation {
        runtime: comfaas_schemas::Runtime::Exec,
        bundle_dir: data.join("bundle"),
        env_dir: data.join("env"),
        program: "/bin/true".into(),
        args: Vec::new(),
        path: Vec::new(),
    };
    std::fs::create_dir_all(&installation.bundle_dir).expect("mkdir");
    let limits = comfaas_exec::default_limits();
    let mut rows = Vec::new();
    for config in [SandboxConfig::default(), SandboxConfig::none()] {
        let sandboxes = Sandboxes::open(&config, limits, &data, "bench").expect("sandbox opens");
        let sandbox = sandboxes
            .sandbox(&installation, &manifest, "bench")
            .expect("sandbox");
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for i in 0..total.max(50) {
            let started = Instant::now();
            let dir = sandbox
                .enter(data.join("runs").join(i.to_string()), "bench")
                .await
                .expect("run dir");
            let outcome = comfaas_runtime::run(RunSpec {
                program: "/bin/true".into(),
                args: Vec::new(),
                cwd: dir.dir().to_owned(),
                env: dir.env().to_vec(),
                input: RunInput::Bytes(Bytes::new()),
                timeout: Duration::from_secs(10),
                max_output: 1 << 20,
                spill: None,
                jail: dir.jail().clone(),
                log_bytes: 64 * 1024,
            })
            .await;
            dir.remove().await;
            assert_eq!(outcome.exit, comfaas_runtime::process::Exit::Success);
            hist.record(started.elapsed().as_micros() as u64)
                .expect("record");
        }
        rows.push(hist.value_at_quantile(0.5));
    }
    println!(
        "| bare process (/bin/true, no NATS) | {} | {} | {} | {} |",
        total.max(50),
        rows[0],
        rows[1],
        rows[0] as i64 - rows[1] as i64
    );
}

/// The C echo handler of part 5: the runtime's header, nothing else.
const C_ECHO: &str = r#"#include <comfaas_handler.h>
static int handle(const uint8_t *in, size_t n, comfaas_out *out) { return comfaas_write(out, in, n); }
int main(void) { return comfaas_serve(handle); }
"#;

/// Part 5: warm echo handlers of each runtime at 64 in flight, through a
/// dispatcher and an executor that are processes of their own (the
/// deployed shape), on a platform of its own.
async fn warm_every_runtime(total: usize) {
    use comfaas_tests::binary;
    println!("\n### Warm handlers of every runtime, full path, separate processes\n");
    let p = Platform::start().await;
    p.nats.identity_for("warm-1").await;
    let _dispatcher = p.dispatch_process().await;
    let _executor = p.exec_process("warm-1", &["--slots", "4", "--queue", "128"]);
    let mut functions = Vec::new();
    for workers in [1u32, 2] {
        let extra = format!(
            "placement = \"node:warm-1\"\nmode = \"handler\"\nworkers = {workers}\ntimeout = \"10s\"\n"
        );
        let manifest = |name: &str, runtime: &str, entry: &str| {
            format!("name = \"{name}\"\nversion = \"1\"\nruntime = \"{runtime}\"\nentry = \"{entry}\"\n{extra}")
        };
        let c = format!("warm-c-{workers}");
        let dir = p.function(&c, "", &[("main.c", C_ECHO)]);
        std::fs::write(dir.join("comfaas.toml"), manifest(&c, "c", "main.c")).expect("write");
        functions.push(("C (comfaas_handler.h)", workers, c, dir));
        let rs = format!("warm-rs-{workers}");
        let dir = p.function(&rs, "", &[]);
        std::fs::copy(binary("comfaas-echo-handler"), dir.join("handler")).expect("copy");
        std::fs::write(dir.join("comfaas.toml"), manifest(&rs, "exec", "handler")).expect("write");
        functions.push(("Rust (exec, comfaas-handler)", workers, rs, dir));
        let py = format!("warm-py-{workers}");
        let dir = p.function(
            &py,
            &extra,
            &[("main.py", "def handle(data):\n    return data\n")],
        );
        functions.push(("Python", workers, py, dir));
    }
    for (_, _, _, dir) in &functions {
        p.deploy(dir, &["warm-1"]).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // heartbeats reach the dispatcher
    println!("| handler | workers | in flight | invocations | p50 µs | p99 µs | inv/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, workers, name, _) in &functions {
        let _ = measure(&p, name, 64, 2_000).await;
        let (p50, p99, rate) = measure(&p, name, 64, total).await;
        println!("| {label} | {workers} | 64 | {total} | {p50} | {p99} | {rate:.0} |");
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.only_warm {
        warm_every_runtime(args.warm_invocations).await;
        return;
    }
    // A server that takes 8 MB inputs for the Pi runs.
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "max_payload: 16MB\n").expect("write config");
    let server = EmbeddedServer::start(ServerOptions {
        config_file: Some(config.path().to_path_buf()),
        ..ServerOptions::default()
    })
    .await
    .expect("nats-server");
    let p = Platform::on(server).await;
    let wheels = p.scratch.path().join("wheels");
    write_wheel(&wheels, "comfaas-probe", "comfaas_probe", "1.0");
    drop(p.dispatcher().await);
    for (node, use_uv) in [("uv-1", true), ("pip-1", false)] {
        drop(
            p.executor(NodeSpec {
                use_uv,
                slots: 2,
                queue: 64,
                max_procs: 2,
                extra_wheels: vec![wheels.clone()],
                ..NodeSpec::edge(node)
            })
            .await,
        );
    }
    for (node, isolation) in [
        ("boxed-1", comfaas_runtime::SandboxConfig::default()),
        ("bare-1", comfaas_runtime::SandboxConfig::none()),
    ] {
        drop(
            p.executor(NodeSpec {
                slots: 2,
                queue: 64,
                sandbox: isolation,
                ..NodeSpec::edge(node)
            })
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if args.only_sandbox {
        sandbox_cost(&p, args.invocations).await;
        return;
    }
    cold_deploys(&p, args.deploys).await;
    if args.only_cold {
        return;
    }
    warm_against_script(&p, args.invocations).await;
    pi_rates(&p, args.pi_runs).await;
    sandbox_cost(&p, args.invocations).await;
    warm_every_runtime(args.warm_invocations).await;
}
