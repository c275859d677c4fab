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
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-runtimes`
//! (`--only-sandbox` for part 4 alone).

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
}

async fn cold_deploys(p: &Platform, rounds: usize) {
    println!("\n### Cold deploy to first result (one dependency, from a local wheel)\n");
    println!("| tool | deploys | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let body = "import comfaas_probe\nprint(comfaas_probe.VERSION)\n";
    for (tool, node) in [("uv", "uv-1"), ("python3 -m venv + pip", "pip-1")] {
        let mut times = Vec::new();
        for round in 0..rounds {
            let name = format!("cold-{}-{round}", node.trim_end_matches("-1"));
            let extra =
                format!("requirements = [\"comfaas-probe==1.0\"]\nplacement = \"node:{node}\"");
            let dir = p.function(&name, &extra, &[("main.py", body)]);
            let started = Instant::now();
            comfaas::deploy::deploy_dir(&p.registry, &dir)
                .await
                .expect("deploy");
            // Until the first invocation answers: install + placement + run.
            loop {
                let reply = p.invoke(&name, "").await;
                if header(&reply, h::STATUS) == "ok" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            times.push(started.elapsed().as_millis() as u64);
        }
        times.sort_unstable();
        println!(
            "| {tool} | {rounds} | {} | {} | {} |",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
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

#[tokio::main]
async fn main() {
    let args = Args::parse();
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
    warm_against_script(&p, args.invocations).await;
    pi_rates(&p, args.pi_runs).await;
    sandbox_cost(&p, args.invocations).await;
}
