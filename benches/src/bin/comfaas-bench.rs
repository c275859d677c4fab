//! `comfaas-bench`: the dispatch path against plain NATS, in one run.
//!
//! (a) plain NATS request/reply to an echo responder;
//! (b) the same payload through the dispatcher to a node that answers at once
//!     (a responder on its work subject that heartbeats like an executor);
//! (c) the full path to a real executor running a trivial Python function.
//! Each at 1 and at 64 requests in flight; latency p50/p99 and throughput.
//! With `--security both`, (b) and (c) run again in the same run on a
//! secure site (every role on its own NKey under its permissions, TLS on
//! the client port), compared with the open (a): what auth adds.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench`

use std::time::Duration;

use clap::Parser;
use comfaas_platform::auth::Role;
use comfaas_schemas::{encode, now_unix_ms, FunctionState, InstallState, NodeLoad, Tier};
use comfaas_tests::measure::cpu_seconds;
use comfaas_tests::{Platform, Process, Security};
use futures::StreamExt;

/// The allocator the services use (`comfaas-dispatch`, `comfaas-exec`),
/// for every path measured here alike: the instant node stands for an
/// executor, and the reference paths run in this process too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Requests per run at 1 in flight, for (a) and (b)
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests per run at 64 in flight, for (a) and (b)
    #[arg(long, default_value_t = 20000)]
    requests_parallel: usize,
    /// Requests per run for (c), which spawns a Python process per call
    #[arg(long, default_value_t = 300)]
    requests_exec: usize,
    /// open, secure (NKeys per role + TLS), or both in one run
    #[arg(long, default_value = "open", value_parser = ["open", "secure", "both"])]
    security: String,
    /// Leave out (c), the Python executor path (its calls are slow)
    #[arg(long)]
    no_exec: bool,
    /// Leave out the second table (the dispatcher in this process)
    #[arg(long)]
    no_in_process: bool,
}

/// The processes whose CPU time each run accounts for, by name.
type Watched = Vec<(&'static str, u32)>;

const PAYLOAD: &[u8] = br#"{"name":"bench","readings":[21.0,21.2,20.9,21.1]}"#;

struct Figures {
    p50_us: u64,
    p99_us: u64,
    per_s: f64,
    /// CPU µs per request of each watched process over the run.
    cpu_us: Vec<f64>,
}

/// Sends `total` requests on `subject`, `in_flight` at a time.
async fn measure(
    client: &async_nats::Client,
    subject: &str,
    in_flight: usize,
    total: usize,
) -> Figures {
    let l = comfaas_tests::measure::requests(client, subject, PAYLOAD, in_flight, total).await;
    Figures {
        p50_us: l.p50_us,
        p99_us: l.p99_us,
        per_s: l.per_s,
        cpu_us: Vec::new(),
    }
}

/// An echo responder on `subject`.
async fn echo(client: async_nats::Client, subject: &str) {
    let mut sub = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = client.publish(reply, m.payload).await;
            }
        }
    });
}

/// A forwarder: republishes every message on `from` to `to`, keeping the
/// reply subject. The cheapest possible dispatcher: one extra NATS hop and
/// no logic, to tell the hop's cost from the dispatcher's.
async fn forward(client: async_nats::Client, from: &str, to: &str) {
    let mut sub = client.subscribe(from.to_owned()).await.expect("subscribe");
    let to = to.to_owned();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = client
                    .publish_with_reply(to.clone(), reply, m.payload)
                    .await;
            }
        }
    });
}

/// A node that answers every invocation at once with its input, and
/// heartbeats like an executor serving `function`.
async fn instant_node(
    client: async_nats::Client,
    p: &Platform,
    node: &str,
    function: &str,
    digest: &str,
) {
    comfaas_tests::instant::answer_work(client.clone(), p.subjects.work(node), node).await;
    let load = NodeLoad {
        node: node.to_owned(),
        tier: Tier::Edge,
        site: "bench".to_owned(),
        cores: 2,
        slots: 1024,
        queue_capacity: 1024,
        max_procs: 1,
        runtimes: vec!["python".to_owned()],
        functions: vec![FunctionState {
            name: function.to_owned(),
            version: "1".to_owned(),
            digest: digest.to_owned(),
            state: InstallState::Ready,
            reason: None,
            serving: Some("1".to_owned()),
            install: None,
        }],
        heartbeat_ms: 1000,
        sent_unix_ms: now_unix_ms(),
        ..NodeLoad::default()
    };
    let subject = p.subjects.node_load(node);
    tokio::spawn(async move {
        loop {
            let bytes = encode(&NodeLoad {
                sent_unix_ms: now_unix_ms(),
                ..load.clone()
            })
            .expect("encode");
            let _ = client.publish(subject.clone(), bytes.into()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// One measured configuration.
struct Run {
    name: &'static str,
    subject: String,
    in_flight: usize,
    total: usize,
}

/// Measures `runs`, prints a table with ratios to the (a) row of the same
/// in-flight count, and returns nothing: the table is the output.
/// Prints the table of `runs`, each compared with the (a) of the same
/// number in flight: from these runs, else from `base` (the open run's, for
/// a secure site where no role may run a bare echo). Returns the (a)
/// figures measured.
async fn table(
    client: &async_nats::Client,
    title: &str,
    runs: &[Run],
    warmup: usize,
    base: &[(usize, Figures)],
    watched: &Watched,
) -> Vec<(usize, Figures)> {
    for run in runs {
        let _ = measure(client, &run.subject, 4, warmup).await;
    }
    let mut results = Vec::new();
    for run in runs {
        let before: Vec<Option<f64>> = watched.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
        let mut f = measure(client, &run.subject, run.in_flight, run.total).await;
        f.cpu_us = watched
            .iter()
            .zip(before)
            .map(|((_, pid), before)| match (before, cpu_seconds(*pid)) {
                (Some(b), Some(a)) => (a - b) * 1e6 / run.total as f64,
                _ => f64::NAN,
            })
            .collect();
        eprintln!(
            "{:<40} in flight {:>2}: p50 {:>7} µs p99 {:>7} µs {:>9.0} req/s",
            run.name, run.in_flight, f.p50_us, f.p99_us, f.per_s
        );
        results.push((run, f));
    }
    println!("\n{title}\n");
    println!("| path | in flight | requests | p50 µs | p99 µs | req/s | p50 ÷ (a) | p99 ÷ (a) | req/s ÷ (a) | p50 added to (a) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (run, f) in &results {
        let Some(base) = results
            .iter()
            .find(|(r, _)| r.name.starts_with("(a)") && r.in_flight == run.in_flight)
            .map(|(_, f)| f)
            .or_else(|| {
                base.iter()
                    .find(|(n, _)| *n == run.in_flight)
                    .map(|(_, f)| f)
            })
        else {
            continue;
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {} µs |",
            run.name,
            run.in_flight,
            run.total,
            f.p50_us,
            f.p99_us,
            f.per_s,
            f.p50_us as f64 / base.p50_us as f64,
            f.p99_us as f64 / base.p99_us as f64,
            f.per_s / base.per_s,
            f.p50_us as i64 - base.p50_us as i64
        );
    }
    // Where the CPU went, per request, and each path against the bare hop
    // (the measure issue 14 sets a dispatcher).
    let names: Vec<&str> = watched.iter().map(|(n, _)| *n).collect();
    println!(
        "\n| path | in flight | req/s ÷ (a+hop) | CPU µs per request: {} |",
        names.join(" | ")
    );
    println!("|---|---:|---:|{}", "---:|".repeat(names.len()));
    for (run, f) in &results {
        let hop = results
            .iter()
            .find(|(r, _)| r.name.starts_with("(a+hop)") && r.in_flight == run.in_flight)
            .map(|(_, h)| f.per_s / h.per_s);
        let cpu: Vec<String> = f.cpu_us.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "| {} | {} | {} | {} |",
            run.name,
            run.in_flight,
            hop.map_or("–".to_owned(), |r| format!("{r:.3}")),
            cpu.join(" | ")
        );
    }
    results
        .into_iter()
        .filter(|(r, _)| r.name.starts_with("(a)"))
        .map(|(r, f)| (r.in_flight, f))
        .collect()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut base = Vec::new();
    if args.security != "secure" {
        base = run(&args, Security::Open, &base).await;
    }
    if args.security != "open" {
        run(&args, Security::Secure, &base).await;
    }
}

/// The flags that give a binary `role`'s identity on `p` (none when open).
fn identity_args(
    p: &Platform,
    seed: impl FnOnce(&comfaas::auth::AuthDir) -> std::path::PathBuf,
) -> Vec<String> {
    match &p.nats.auth {
        None => Vec::new(),
        Some(auth) => {
            let auth = auth.snapshot();
            let mut args = vec!["--nkey".to_owned(), seed(&auth).display().to_string()];
            if let Some(ca) = auth.tls_ca() {
                args.push("--tls-ca".to_owned());
                args.push(ca.display().to_string());
            }
            args
        }
    }
}

/// One run of every path on an open or a secure site; returns its (a).
async fn run(args: &Args, security: Security, base: &[(usize, Figures)]) -> Vec<(usize, Figures)> {
    let secure = security == Security::Secure;
    let label = if secure { " [secure: NKeys + TLS]" } else { "" };
    let p = Platform::start_with(security).await;
    p.nats.identity_for("exec-1").await;
    p.nats.identity_for("instant-1").await;
    let url = p.nats.url().to_owned();
    let data_dir = p
        .scratch
        .path()
        .join("exec-1")
        .to_string_lossy()
        .into_owned();
    // Deployed shape first: every service a process of its own.
    let dispatcher_args: Vec<String> = ["--nats-url".to_owned(), url.clone()]
        .into_iter()
        .chain(identity_args(&p, |a| a.role_file("dispatcher")))
        .collect();
    let dispatcher_args: Vec<&str> = dispatcher_args.iter().map(String::as_str).collect();
    let mut dispatcher = Process::spawn("comfaas-dispatch", &dispatcher_args);
    // The dispatcher creates the streams and stores the executor uses (on
    // a secure site an executor may not).
    p.nats.wait_for_dispatcher().await;
    let exec_identity = identity_args(&p, |a| a.node_file("exec-1"));
    let exec_args: Vec<&str> = exec_identity
        .iter()
        .map(String::as_str)
        .chain([
            "--nats-url",
            &url,
            "--node",
            "exec-1",
            "--slots",
            "2",
            "--queue",
            "128",
            "--data-dir",
            &data_dir,
        ])
        .collect();
    let executor = Process::spawn("comfaas-exec", &exec_args);
    let echo_script = [(
        "main.py",
        "import sys\nsys.stdout.write(sys.stdin.read())\n",
    )];
    let instant_fn = p.function("instant", "placement = \"node:instant-1\"", &echo_script);
    let instant = comfaas::deploy::deploy_dir(&p.registry, &instant_fn)
        .await
        .expect("deploy");
    let echo_fn = p.function("echo", "placement = \"node:exec-1\"", &echo_script);
    p.deploy(&echo_fn, &["exec-1"]).await;

    // The responders get a connection of their own, as separate processes
    // would; on a secure site the instant node has a node's identity, and
    // no role may run a bare echo (its (a) is the open run's).
    if !secure {
        let responder = p.nats.client().await;
        echo(responder.clone(), "bench.echo").await;
        forward(p.nats.client().await, "bench.forward", "bench.echo").await;
    }
    let responder = p
        .nats
        .client_as(&Role::Executor {
            node: "instant-1".to_owned(),
        })
        .await;
    instant_node(
        responder,
        &p,
        "instant-1",
        "instant",
        &instant.bundle.digest,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // heartbeats reach the dispatcher
    let client = p.device.clone();

    // (name, subject, requests at 1 in flight, requests at 64 in flight)
    let mut paths: Vec<(&'static str, String, usize, usize)> = vec![
        (
            "(a) plain NATS echo",
            "bench.echo".to_owned(),
            args.requests,
            args.requests_parallel,
        ),
        (
            "(a+hop) echo behind a bare forwarder",
            "bench.forward".to_owned(),
            args.requests,
            args.requests_parallel,
        ),
        (
            "(b) dispatcher → instant node",
            p.subjects.invoke("instant"),
            args.requests,
            args.requests_parallel,
        ),
        (
            "(c) dispatcher → executor (python)",
            p.subjects.invoke("echo"),
            args.requests_exec,
            args.requests_exec,
        ),
    ];
    if secure {
        paths.drain(..2);
    }
    let bare = if secure { 0 } else { 2 };
    // Every path at 1 then at 64 in flight; `take` keeps the first paths.
    let runs = |take: usize| -> Vec<Run> {
        [1usize, 64]
            .into_iter()
            .flat_map(|in_flight| {
                paths
                    .iter()
                    .take(take)
                    .map(move |(name, subject, one, many)| Run {
                        name,
                        subject: subject.clone(),
                        in_flight,
                        total: if in_flight == 1 { *one } else { *many },
                    })
            })
            .collect()
    };
    let warmup = 50.min(args.requests_exec);
    let server = p.nats.server.pid().unwrap_or(0);
    let bench = std::process::id();
    let watched: Watched = vec![
        ("nats-server", server),
        ("comfaas-dispatch", dispatcher.child.id().unwrap_or(0)),
        ("comfaas-exec", executor.child.id().unwrap_or(0)),
        ("bench (client, responders)", bench),
    ];
    let take = if args.no_exec { bare + 1 } else { bare + 2 };
    let measured = table(
        &client,
        &format!("Dispatcher and executor as separate processes (`comfaas-dispatch`, `comfaas-exec`){label}:"),
        &runs(take),
        warmup,
        base,
        &watched,
    )
    .await;
    if args.no_in_process {
        return measured;
    }

    // The embedded shape of `comfaas dev`: the dispatcher in this process.
    dispatcher.kill().await;
    drop(p.dispatcher().await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    table(
        &client,
        &format!("Dispatcher in-process, as `comfaas dev` runs it{label}:"),
        &runs(bare + 1),
        warmup,
        base,
        &vec![
            ("nats-server", server),
            ("bench (client, responders, dispatcher)", bench),
        ],
    )
    .await;
    measured
}
