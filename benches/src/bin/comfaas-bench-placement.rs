//! `comfaas-bench-placement`: how good the automatic placement is, on the
//! paper's five sites emulated on one machine.
//!
//! Set-up: one `nats-server` per site (edge, chicago, new-york,
//! los-angeles, miami), the edge a leaf node of each cloud site through an
//! emulated WAN link (`comfaas_testbed::sites::DEFAULT_LINKS`, all behind
//! the edge's shared uplink, `DEFAULT_UPLINK_BITS_PER_S`), one
//! executor per site (edge: 1 slot, 4 processes per job; clouds: 1 slot, 16
//! processes), and the dispatcher at the edge. The job is
//! `tests/functions/emulated-work`: rank 0 reads the input, then 3.2 s
//! plus 0.1 s per MB of input of emulated compute shared by the ranks (see
//! its source for why emulated).
//!
//! 1. Learning: every node runs the job once at 1, 4 and its most
//!    processes, with a 16 MB input (teaching run times and fetch
//!    throughput), and the edge runs the background load once.
//! 2. The matrix: input size × process count × edge load. Each scenario
//!    runs with automatic placement and forced onto every site that can take
//!    it, in turns, `--repeat` times (3 by default), and the medians are
//!    compared. Every run gets a fresh input (no cache hits). A case is good
//!    when the automatic runs' median is at most 10% above the best site's.
//! 3. A mixed workload: jobs of several kinds arriving every 300 ms, run
//!    always at the edge, always in the cloud, and placed automatically;
//!    the total time (first request to last answer) of each.
//! 4. Repeated inputs (issue 14): a few inputs, each sent several times,
//!    interleaved, one job a second, placed automatically by the
//!    dispatcher, which knows what each node's input cache holds; then the
//!    same workload (fresh inputs of the same sizes, so both start cold)
//!    with a dispatcher that ignores it (`ignore_cached_inputs`, after the
//!    same learning runs). The total time, the fetches (distinct node and
//!    input pairs) and where the jobs went, side by side.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-placement`
//! (`-- --quick` for a smaller matrix, `-- --repeat N` for N runs of each,
//! `-- --mixed-only` for learning and the mixed workload alone,
//! `-- --repeats-only` for learning and the repeated inputs alone).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_testbed::link::LinkSpec;
use comfaas_testbed::sites::{Sites, SitesOptions, DEFAULT_LINKS, DEFAULT_UPLINK_BITS_PER_S};
use comfaas_tests::{header, repo_root, NodeSpec, Platform};
use rand::RngCore;

const MB: u64 = 1_000_000;
/// The background load's length, ms: one job holding the edge's slot.
const LOAD_MS: u64 = 2500;
/// Time the background load runs before the measured job is sent.
const LOAD_HEAD_START: Duration = Duration::from_millis(150);
const EDGE: &str = "edge-1";

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    node: String,
    procs: u32,
    ms: f64,
}

struct Bench {
    p: Platform,
    rng: rand::rngs::ThreadRng,
}

impl Bench {
    /// Uploads `bytes` of fresh random data as an input object; its name.
    async fn input(&mut self, bytes: u64) -> String {
        let mut data = vec![0u8; bytes as usize];
        self.rng.fill_bytes(&mut data);
        self.p.upload_input(&data).await
    }

    /// Runs `emulated-work` once, `placement` and `procs` as the headers
    /// say, with a fresh input of `bytes` (none when 0).
    async fn run(&mut self, placement: &str, procs: &str, bytes: u64) -> Run {
        let mut headers = HeaderMap::new();
        headers.insert(h::PLACEMENT, placement);
        headers.insert(h::PROCS, procs);
        if bytes > 0 {
            let object = self.input(bytes).await;
            headers.insert(h::INPUT_OBJECT, object.as_str());
        }
        let started = Instant::now();
        let reply = self
            .p
            .invoke_bytes("emulated-work", Vec::new(), headers)
            .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "{placement} {procs} {bytes}: {:?}",
            reply.headers
        );
        let out: serde_json::Value = serde_json::from_slice(&reply.payload).expect("output");
        assert_eq!(out["input_bytes"].as_u64(), Some(bytes), "{out}");
        Run {
            node: header(&reply, h::NODE),
            procs: out["procs"].as_u64().unwrap_or(0) as u32,
            ms,
        }
    }

    /// Every node runs the job once at 1, 4 and its most processes, with
    /// a fresh 16 MB input, and the edge runs the background load once:
    /// what a dispatcher learns run times and fetch throughputs from.
    async fn learn(&mut self, nodes: &[String]) {
        let started = Instant::now();
        for node in nodes {
            let max = if node == EDGE { 4 } else { 16 };
            for procs in [1, 4, max] {
                self.run(&format!("node:{node}"), &procs.to_string(), 16 * MB)
                    .await;
            }
        }
        drop(self.load_edge().await.await);
        println!(
            "\nlearning: {} runs in {:.0} s",
            nodes.len() * 3 + 1,
            started.elapsed().as_secs_f64()
        );
    }

    /// Starts the background load on the edge; await the handle to join it.
    async fn load_edge(&self) -> tokio::task::JoinHandle<()> {
        let client = self.p.client.clone();
        let subject = self.p.subjects.invoke("edge-load");
        let handle = tokio::spawn(async move {
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, format!("node:{EDGE}").as_str());
            let reply =
                comfaas_tests::request(&client, &subject, headers, LOAD_MS.to_string().into())
                    .await;
            assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        });
        tokio::time::sleep(LOAD_HEAD_START).await;
        handle
    }

    /// A run of a scenario, with the edge loaded or not.
    async fn scenario_run(&mut self, placement: &str, procs: &str, bytes: u64, busy: bool) -> Run {
        let load = if busy {
            Some(self.load_edge().await)
        } else {
            None
        };
        let run = self.run(placement, procs, bytes).await;
        if let Some(load) = load {
            load.await.expect("load");
        }
        run
    }
}

/// Can `procs` run on a node allowing `max_procs`?
fn fits(procs: &str, max_procs: u32) -> bool {
    procs
        .parse::<comfaas_schemas::Procs>()
        .ok()
        .and_then(|p| p.fit(max_procs))
        .is_some()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mixed_only = args.iter().any(|a| a == "--mixed-only");
    let repeats_only = args.iter().any(|a| a == "--repeats-only");
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3)
        .max(1);
    let clouds: Vec<String> = DEFAULT_LINKS.iter().map(|(s, _)| s.to_string()).collect();
    let links: BTreeMap<String, LinkSpec> = DEFAULT_LINKS
        .iter()
        .map(|(s, l)| (s.to_string(), l.parse().expect("default link")))
        .collect();
    let sites = Sites::start(SitesOptions {
        configs: repo_root().join("nats"),
        clouds: clouds.clone(),
        links: links.clone(),
        uplink: Some(DEFAULT_UPLINK_BITS_PER_S),
        edge_port: None,
        security: None,
        edge_mqtt: None,
        max_file_store: None,
    })
    .await
    .expect("start sites");
    let Sites {
        edge,
        clouds: cloud_sites,
        uplink,
        ..
    } = sites;
    let p = Platform::on(edge.server).await;
    // Always-edge queues many jobs: let them wait as long as they need.
    let mut services = vec![
        p.dispatcher_with(comfaas_dispatch::DispatchConfig {
            queue_wait_ms: 600_000,
            ..Default::default()
        })
        .await,
    ];
    services.push(
        p.executor(NodeSpec {
            slots: 1,
            queue: 64,
            max_procs: 4,
            ..NodeSpec::edge(EDGE)
        })
        .await,
    );
    for site in &cloud_sites {
        services.push(
            p.executor(NodeSpec {
                slots: 1,
                queue: 64,
                max_procs: 16,
                ..NodeSpec::cloud_at(&format!("{}-1", site.name), site.server.url())
            })
            .await,
        );
    }
    let nodes: Vec<String> = std::iter::once(EDGE.to_owned())
        .chain(clouds.iter().map(|c| format!("{c}-1")))
        .collect();
    let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let functions = repo_root().join("tests/functions");
    p.deploy(&functions.join("emulated-work"), &node_refs).await;
    p.deploy(&functions.join("edge-load"), &[EDGE]).await;
    let mut bench = Bench {
        p,
        rng: rand::rng(),
    };

    println!("## Links (one-way latency / bandwidth, edge to site)\n");
    for (site, spec) in &links {
        println!("- {site}: {spec}");
    }
    if let Some(uplink) = &uplink {
        println!("- all of them behind the edge's uplink: {uplink} each way");
    }

    // 1. Learning.
    bench.learn(&nodes).await;

    // 2. The matrix.
    if !mixed_only && !repeats_only {
        let sizes: &[u64] = if quick { &[0, 16] } else { &[0, 2, 16] };
        let procs_list: &[&str] = if quick {
            &["4", "1-16"]
        } else {
            &["1", "4", "16", "1-16"]
        };
        println!(
            "\n## Matrix: median seconds of {repeat} runs each (taken in turns); auto = automatic placement\n"
        );
        let mut header_row = String::from("| input MB | procs | edge load | auto → node/procs |");
        for node in &nodes {
            header_row.push_str(&format!(" {node} |"));
        }
        header_row.push_str(" best | auto ÷ best |");
        println!("{header_row}");
        println!("|{}", "---|".repeat(nodes.len() + 6));
        let (mut good, mut cases) = (0, 0);
        let (mut good_runs, mut auto_runs) = (0, 0);
        for &mb in sizes {
            for &procs in procs_list {
                for busy in [false, true] {
                    // Round robin over auto and the sites, `repeat` times: the
                    // median of each, so one slow MPI start does not decide.
                    let targets: Vec<String> = std::iter::once("auto".to_owned())
                        .chain(
                            nodes
                                .iter()
                                .filter(|n| fits(procs, if *n == EDGE { 4 } else { 16 }))
                                .map(|n| format!("node:{n}")),
                        )
                        .collect();
                    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
                    for _ in 0..repeat {
                        for target in &targets {
                            let run = bench.scenario_run(target, procs, mb * MB, busy).await;
                            runs.entry(target.clone()).or_default().push(run);
                        }
                    }
                    let median = |target: &str| -> f64 {
                        let mut ms: Vec<f64> = runs[target].iter().map(|r| r.ms).collect();
                        ms.sort_by(f64::total_cmp);
                        ms[ms.len() / 2]
                    };
                    let mut chosen: BTreeMap<String, u32> = BTreeMap::new();
                    for run in &runs["auto"] {
                        *chosen
                            .entry(format!("{}/{}", run.node, run.procs))
                            .or_default() += 1;
                    }
                    let auto_ms = median("auto");
                    let mut row = format!(
                        "| {mb} | {procs} | {} | {:.2} → {} |",
                        if busy { "busy" } else { "idle" },
                        auto_ms / 1000.0,
                        chosen
                            .iter()
                            .map(|(n, c)| if *c == 1 {
                                n.clone()
                            } else {
                                format!("{n} ×{c}")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    let mut best: Option<(String, f64)> = None;
                    for node in &nodes {
                        let target = format!("node:{node}");
                        if !runs.contains_key(&target) {
                            row.push_str(" – |");
                            continue;
                        }
                        let ms = median(&target);
                        row.push_str(&format!(" {:.2} |", ms / 1000.0));
                        if best.as_ref().is_none_or(|b| ms < b.1) {
                            best = Some((node.clone(), ms));
                        }
                    }
                    let (best_node, best_ms) = best.expect("some site fits");
                    let ratio = auto_ms / best_ms;
                    for run in &runs["auto"] {
                        auto_runs += 1;
                        if run.ms <= 1.10 * best_ms {
                            good_runs += 1;
                        }
                    }
                    cases += 1;
                    if ratio <= 1.10 {
                        good += 1;
                    }
                    row.push_str(&format!(" {best_node} | {ratio:.2} |"));
                    println!("{row}");
                }
            }
        }
        println!(
            "\nautomatic placement within 10% of the best site: {good} of {cases} cases ({:.0}%)",
            100.0 * f64::from(good) / f64::from(cases)
        );
        println!(
            "single automatic runs within 10% of the best site's median: {good_runs} of {auto_runs} ({:.0}%)",
            100.0 * f64::from(good_runs) / f64::from(auto_runs)
        );
    }

    // 3. The mixed workload.
    if !repeats_only {
        mixed(&mut bench, quick).await;
    }

    // 4. Repeated inputs: with the nodes' cache reports, then without.
    let distinct = if quick { 3 } else { 4 };
    let sends = 3;
    let with_cache = repeated(&mut bench, distinct, sends).await;
    services.remove(0).stop().await;
    services.push(
        bench
            .p
            .dispatcher_with(comfaas_dispatch::DispatchConfig {
                queue_wait_ms: 600_000,
                ignore_cached_inputs: true,
                ..Default::default()
            })
            .await,
    );
    // Its first heartbeats, before the first forced run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bench.learn(&nodes).await;
    let without = repeated(&mut bench, distinct, sends).await;
    println!(
        "\n## Repeated inputs: {distinct} inputs of {} MB, each sent {sends} times, interleaved, one job a second, procs 1-16, placed automatically\n",
        REPEATED_BYTES / MB
    );
    println!("| dispatcher | total s | mean job s | median job s | fetches (node, input) | cache hits | jobs per node |");
    println!("|---|---|---|---|---|---|---|");
    for (name, r) in [
        ("sees the nodes' input caches", &with_cache),
        ("ignores them (`ignore_cached_inputs`)", &without),
    ] {
        println!(
            "| {name} | {:.1} | {:.2} | {:.2} | {} | {} | {} |",
            r.total_s,
            r.mean_s,
            r.median_s,
            r.fetches,
            r.jobs - r.fetches,
            r.per_node
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "\nwith the cache signal ÷ without: mean job time {:.2}, median {:.2}, total time {:.2}, fetches {:.2}",
        with_cache.mean_s / without.mean_s,
        with_cache.median_s / without.median_s,
        with_cache.total_s / without.total_s,
        with_cache.fetches as f64 / without.fetches.max(1) as f64
    );
    for s in services {
        s.stop().await;
    }
    drop(cloud_sites);
}

/// Input size of the repeated-inputs workload.
const REPEATED_BYTES: u64 = 8 * MB;

/// What one run of the repeated-inputs workload did.
struct Repeated {
    /// First request to last answer (at least the arrivals' span).
    total_s: f64,
    /// Request to answer, per job.
    mean_s: f64,
    median_s: f64,
    jobs: usize,
    /// Distinct (node, input) pairs: each a fetch into that node's cache.
    fetches: usize,
    per_node: BTreeMap<String, u32>,
}

/// `distinct` fresh inputs, each sent `sends` times, interleaved, one job
/// a second, placed automatically; uploaded before the clock starts.
async fn repeated(bench: &mut Bench, distinct: usize, sends: usize) -> Repeated {
    let mut inputs = Vec::new();
    for _ in 0..distinct {
        inputs.push(bench.input(REPEATED_BYTES).await);
    }
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..sends {
        for object in &inputs {
            let client = bench.p.client.clone();
            let subject = bench.p.subjects.invoke("emulated-work");
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, "auto");
            headers.insert(h::PROCS, "1-16");
            headers.insert(h::INPUT_OBJECT, object.as_str());
            let object = object.clone();
            running.push(tokio::spawn(async move {
                let sent = Instant::now();
                let reply =
                    comfaas_tests::request(&client, &subject, headers, Vec::new().into()).await;
                assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
                (
                    header(&reply, h::NODE),
                    object,
                    sent.elapsed().as_secs_f64(),
                )
            }));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    let mut pairs = std::collections::BTreeSet::new();
    let jobs = running.len();
    let mut times = Vec::new();
    for job in running {
        let (node, object, took_s) = job.await.expect("job");
        *per_node.entry(node.clone()).or_default() += 1;
        pairs.insert((node, object));
        times.push(took_s);
    }
    times.sort_by(f64::total_cmp);
    Repeated {
        mean_s: times.iter().sum::<f64>() / times.len().max(1) as f64,
        median_s: times.get(times.len() / 2).copied().unwrap_or_default(),
        total_s: started.elapsed().as_secs_f64(),
        jobs,
        fetches: pairs.len(),
        per_node,
    }
}

/// The mixed workload: jobs of several kinds, always at the edge, always
/// in the cloud, then placed automatically.
async fn mixed(bench: &mut Bench, quick: bool) {
    let kinds: [(u64, &str); 4] = [(16 * MB, "1-16"), (0, "1-16"), (2 * MB, "4"), (0, "1")];
    let jobs: usize = if quick { 12 } else { 24 };
    println!(
        "\n## Mixed workload: {jobs} jobs, one every 300 ms, kinds (input MB, procs) {}\n",
        kinds
            .iter()
            .map(|(b, p)| format!("({}, {p})", b / MB))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| placement | total s | jobs per node |");
    println!("|---|---|---|");
    let mut totals = BTreeMap::new();
    for placement in ["edge", "cloud", "auto"] {
        // Inputs are uploaded before the clock starts.
        let mut prepared = Vec::new();
        for i in 0..jobs {
            let (bytes, procs) = kinds[i % kinds.len()];
            let object = if bytes > 0 {
                Some(bench.input(bytes).await)
            } else {
                None
            };
            prepared.push((procs, object));
        }
        let started = Instant::now();
        let mut running = Vec::new();
        for (procs, object) in prepared {
            let client = bench.p.client.clone();
            let subject = bench.p.subjects.invoke("emulated-work");
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, placement);
            headers.insert(h::PROCS, procs);
            if let Some(object) = &object {
                headers.insert(h::INPUT_OBJECT, object.as_str());
            }
            running.push(tokio::spawn(async move {
                let reply =
                    comfaas_tests::request(&client, &subject, headers, Vec::new().into()).await;
                assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
                header(&reply, h::NODE)
            }));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
        for job in running {
            *per_node.entry(job.await.expect("job")).or_default() += 1;
        }
        let total = started.elapsed().as_secs_f64();
        totals.insert(placement, total);
        println!(
            "| {placement} | {total:.1} | {} |",
            per_node
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let better = totals["edge"].min(totals["cloud"]);
    println!(
        "\nautomatic placement total ÷ the better of always-edge and always-cloud: {:.2} ({:.0}% faster)",
        totals["auto"] / better,
        100.0 * (1.0 - totals["auto"] / better)
    );
}
