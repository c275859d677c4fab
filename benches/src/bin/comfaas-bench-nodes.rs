//! `comfaas-bench-nodes`: does a dispatcher keep up with many nodes?
//! (issue 14, target 7). One real `comfaas-dispatch` process, one real
//! `comfaas-exec` running a Python echo, and one instant node (answers
//! each invocation at once, as `comfaas-bench`'s (b), so the dispatcher's
//! own time shows), first alone (2 nodes), then with 200 simulated
//! executors added, in the same run.
//!
//! The simulated executors live in this process: each publishes its
//! `NodeLoad` every second (spread over the second) and answers the
//! dispatcher's pings on `node.<id>.ping`, as a real executor does. Each
//! reports both functions installed, with a history-free full queue, so the
//! dispatcher tracks, pings and costs every one of them on every decision,
//! and sends them nothing.
//!
//! Measured, for each phase: the dispatcher's CPU (utime + stime from
//! `/proc/<pid>/stat`) while idle for `--idle-s` (heartbeats and pings
//! alone) and per invocation to the instant node (its idle share taken
//! off), and the p50/p99 of the dispatch path at 1 in flight (instant node
//! and Python executor) and the req/s at 16 in flight (instant node). The ratios of
//! the 202-node phase to the 2-node phase are the figures of the issue
//! (goal: within 20%).
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-nodes`

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use comfaas_schemas::{
    encode, now_unix_ms, Deployment, FunctionState, InstallState, NodeLoad, Tier,
};
use comfaas_tests::Platform;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    /// Simulated executors added in the second phase
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Requests at 1 in flight to the instant node, per phase
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Requests at 16 in flight to the instant node, per phase
    #[arg(long, default_value_t = 10000)]
    requests_parallel: usize,
    /// Requests at 1 in flight to the Python executor, per phase
    #[arg(long, default_value_t = 200)]
    requests_exec: usize,
    /// Seconds the dispatcher's idle CPU is measured, per phase
    #[arg(long, default_value_t = 10)]
    idle_s: u64,
}

const PAYLOAD: &[u8] = br#"{"name":"bench","readings":[21.0,21.2,20.9,21.1]}"#;

/// Latency and rate of one run of requests.
type Figures = comfaas_tests::measure::Latency;

/// Sends `total` requests on `subject`, `in_flight` at a time.
async fn measure(
    client: &async_nats::Client,
    subject: &str,
    in_flight: usize,
    total: usize,
) -> Figures {
    comfaas_tests::measure::requests(client, subject, PAYLOAD, in_flight, total).await
}

/// CPU time of process `pid` so far (user + system), seconds (0 when it
/// cannot be read).
fn cpu_s(pid: u32) -> f64 {
    comfaas_tests::measure::cpu_seconds(pid).unwrap_or(0.0)
}

/// The load report of a node serving `deployments`.
fn load_of(node: &str, deployments: &[&Deployment], full: bool) -> NodeLoad {
    let (slots, queue) = (4, 64);
    NodeLoad {
        node: node.to_owned(),
        instance: format!("{node}-bench"),
        tier: if full { Tier::Cloud } else { Tier::Edge },
        site: "bench".to_owned(),
        cores: 2,
        slots,
        queue_capacity: queue,
        running: if full { slots } else { 0 },
        queued: if full { queue } else { 0 },
        max_procs: 1,
        runtimes: vec!["python".to_owned()],
        functions: deployments
            .iter()
            .map(|d| FunctionState {
                name: d.manifest.name.clone(),
                version: d.manifest.version.clone(),
                digest: d.bundle.digest.clone(),
                state: InstallState::Ready,
                reason: None,
                serving: Some(d.manifest.version.clone()),
                install: None,
            })
            .collect(),
        heartbeat_ms: 1000,
        sent_unix_ms: now_unix_ms(),
        ..NodeLoad::default()
    }
}

/// Publishes `load` every second, `offset` into each second.
fn heartbeat(client: async_nats::Client, subject: String, load: NodeLoad, offset: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let report = NodeLoad {
                sent_unix_ms: now_unix_ms(),
                ..load.clone()
            };
            if let Ok(bytes) = encode(&report) {
                let _ = client.publish(subject.clone(), bytes.into()).await;
            }
        }
    });
}

/// The instant node: answers every invocation at once with its input
/// (`comfaas_tests::instant`), heartbeats `load` and answers pings.
async fn instant_node(client: async_nats::Client, p: &Platform, node: &str, load: NodeLoad) {
    comfaas_tests::instant::answer_work(client.clone(), p.subjects.work(node), node).await;
    let ping = client
        .subscribe(p.subjects.node_ping(node))
        .await
        .expect("subscribe");
    answer_pings(client.clone(), ping);
    heartbeat(
        client,
        p.subjects.node_load(node),
        load,
        Duration::from_millis(0),
    );
}

/// Answers every ping arriving on `pings` at once, as an executor does.
fn answer_pings(client: async_nats::Client, mut pings: async_nats::Subscriber) {
    tokio::spawn(async move {
        while let Some(m) = pings.next().await {
            if let Some(reply) = m.reply {
                let _ = client.publish(reply, Bytes::new()).await;
            }
        }
    });
}

/// One phase's figures.
struct Phase {
    nodes: usize,
    idle_cpu: f64,
    per_call_us: f64,
    instant: Figures,
    instant_parallel: Figures,
    exec: Figures,
}

/// Measures the dispatcher (`pid`) idle, then under each load.
async fn phase(args: &Args, p: &Platform, pid: u32, nodes: usize) -> Phase {
    let client = p.device.clone();
    let (instant, echo) = (p.subjects.invoke("instant"), p.subjects.invoke("echo"));
    // Warm up: round trips and run times learnt, connections warm.
    let _ = measure(&client, &instant, 4, 500).await;
    let _ = measure(&client, &echo, 1, 10).await;
    let (cpu, t) = (cpu_s(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let idle_cpu = (cpu_s(pid) - cpu) / t.elapsed().as_secs_f64();
    let cpu = cpu_s(pid);
    let one = measure(&client, &instant, 1, args.requests).await;
    let many = measure(&client, &instant, 16, args.requests_parallel).await;
    // Per invocation: what the dispatcher spent on the instant node's
    // calls, less what it spends idle (heartbeats, pings) meanwhile.
    let spent = cpu_s(pid) - cpu;
    let busy_s = args.requests as f64 / one.per_s + args.requests_parallel as f64 / many.per_s;
    let per_call_us = (spent - idle_cpu * busy_s).max(0.0) * 1e6
        / (args.requests + args.requests_parallel) as f64;
    let exec = measure(&client, &echo, 1, args.requests_exec).await;
    eprintln!(
        "{nodes} nodes: idle CPU {:.2}%, {:.1} µs CPU per invocation; instant p50 {} µs, {:.0} req/s at 16; python p50 {} µs",
        idle_cpu * 100.0,
        per_call_us,
        one.p50_us,
        many.per_s,
        exec.p50_us
    );
    Phase {
        nodes,
        idle_cpu,
        per_call_us,
        instant: one,
        instant_parallel: many,
        exec,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let p = Platform::start().await;
    let dispatcher = p.dispatch_process().await;
    let pid = dispatcher.child.id().expect("dispatcher pid");
    let _executor = p.exec_process("exec-1", &["--slots", "2", "--queue", "128"]);
    let echo_script = [(
        "main.py",
        "import sys\nsys.stdout.write(sys.stdin.read())\n",
    )];
    // Placed automatically: every node is a candidate of every decision.
    let instant_fn = p.function("instant", "", &echo_script);
    let instant = comfaas::deploy::deploy_dir(&p.registry, &instant_fn)
        .await
        .expect("deploy");
    let echo_fn = p.function("echo", "", &echo_script);
    let echo = p.deploy(&echo_fn, &["exec-1"]).await;
    instant_node(
        p.nats.client().await,
        &p,
        "instant-1",
        load_of("instant-1", &[&instant], false),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let alone = phase(&args, &p, pid, 2).await;

    // The simulated executors: one connection, as one process of them.
    let sim = p.nats.client().await;
    answer_pings(
        sim.clone(),
        sim.subscribe(p.subjects.node_ping_all())
            .await
            .expect("subscribe"),
    );
    // (The wildcard also hears the two real nodes' pings: they answer
    // first, and the second answer is dropped as a late reply.)
    for i in 0..args.nodes {
        let node = format!("sim-{i:03}");
        let offset = Duration::from_millis((i * 1000 / args.nodes.max(1)) as u64);
        heartbeat(
            sim.clone(),
            p.subjects.node_load(&node),
            load_of(&node, &[&instant, &echo], true),
            offset,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let many = phase(&args, &p, pid, 2 + args.nodes).await;

    println!(
        "\nDispatcher with 2 nodes, then with {} simulated executors added (same run):\n",
        args.nodes
    );
    println!("| nodes | idle CPU % | CPU µs per invocation | instant p50 µs | instant p99 µs | instant req/s at 16 | python p50 µs | python p99 µs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in [&alone, &many] {
        println!(
            "| {} | {:.2} | {:.1} | {} | {} | {:.0} | {} | {} |",
            f.nodes,
            f.idle_cpu * 100.0,
            f.per_call_us,
            f.instant.p50_us,
            f.instant.p99_us,
            f.instant_parallel.per_s,
            f.exec.p50_us,
            f.exec.p99_us
        );
    }
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
    println!(
        "\nratios {} ÷ 2 nodes: idle CPU {:.2}, CPU per invocation {:.2}, instant p50 {:.2}, instant req/s {:.2}, python p50 {:.2}",
        many.nodes,
        ratio(alone.idle_cpu, many.idle_cpu),
        ratio(alone.per_call_us, many.per_call_us),
        ratio(alone.instant.p50_us as f64, many.instant.p50_us as f64),
        ratio(alone.instant_parallel.per_s, many.instant_parallel.per_s),
        ratio(alone.exec.p50_us as f64, many.exec.p50_us as f64),
    );
    drop(dispatcher);
}
