//! `comfaas-bench-paper`: the paper's Tables 1 and 2 regenerated end to
//! end, side by side with its numbers, with the automatic placement the
//! paper lacks.
//!
//! Set-up (as `comfaas dev --sites`): a nats-server per site (edge,
//! chicago, los-angeles, new-york, miami), each cloud a hub the edge is a
//! leaf of, through an emulated WAN link; one executor per site (edge at
//! most 4 processes, clouds 16), the dispatcher at the edge; the device
//! uploads its input to the edge over a link of its own, and the clock
//! starts before the upload. The job is `tests/functions/paper-pi` (real
//! points, profiled compute time, see there and [`paper`]).
//!
//! Steps: the fit of the tables; calibration (each link's round trip and
//! bandwidth, this machine's Pi rate, and under `paper-fit` the platform's
//! own time per site, from which the fixed per-site delay is fitted);
//! rounds of every cell forced onto its site (sites taken in turns, up to
//! `--lanes` at once on different sites, each lane a device with its own
//! link), then automatic placement at each process count and `1-16`, one
//! at a time (round 1's forced runs are its learning pass); the report.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-paper --
//! [--profile paper-fit|stated|defaults] [--rounds N] [--quick] [--lanes N]
//! [--out DIR]`.

mod links;
mod paper;
mod plots;
mod report;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::HeaderMap;
use clap::Parser;
use comfaas_schemas::names::{headers as h, INPUTS_BUCKET};
use comfaas_testbed::link::{LinkSpec, WanLink};
use comfaas_testbed::sites::{Sites, SitesOptions};
use comfaas_tests::paper::{bundle, count_inside, BLOCKS};
use comfaas_tests::{header, repo_root, NodeSpec, Platform};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngCore, SeedableRng};

use links::{calibrate_links, Links, Profile};
use paper::Fit;
use report::{median, RunRecord};

/// The function the benchmark deploys, and the probe it calibrates with
/// (the same code under another name, so that its runs do not teach the
/// dispatcher the real job's run times).
const FUNCTION: &str = "paper-pi";
const PROBE: &str = "paper-pi-probe";
/// Share of the shortest profiled compute time that real counting may take
/// (the rest is waited out), so that it never overruns the profile.
const REAL_SHARE: f64 = 0.3;
/// Devices uploading at once, whatever the lanes.
const UPLOADS_AT_ONCE: usize = 2;
#[derive(Debug, Parser)]
#[command(about = "The paper's Tables 1 and 2, regenerated end to end")]
struct Args {
    /// Link profile.
    #[arg(long, value_enum, default_value_t = Profile::PaperFit)]
    profile: Profile,
    /// Runs of every cell.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A smaller run, for seeing that everything works (one round; 4 and
    /// 16 processes; Table 2 on the edge and Chicago only; automatic
    /// placement for Table 1; no transfer fit, so its 500 MB cells keep
    /// the platform's own time on top of the paper's).
    #[arg(long)]
    quick: bool,
    /// Forced runs at once, each on its own site with its own device link
    /// (default: 4 without a shared uplink, else 1, where they would share
    /// it).
    #[arg(long)]
    lanes: Option<usize>,
    /// Where the report, the CSV and the plots go
    /// (default `target/paper/<profile>`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A cell forced onto its site: (table, site, processes).
type Cell = (u8, &'static str, u32);

/// What runs: the cells, the automatic ones, the rounds.
struct Plan {
    rounds: usize,
    /// The cells forced onto their site.
    cells: Vec<Cell>,
    /// (table, procs header) placed automatically.
    auto: Vec<(u8, String)>,
}

impl Plan {
    fn new(quick: bool, rounds: usize) -> Self {
        let procs: &[u32] = if quick { &[4, 16] } else { &paper::PROCS };
        let mut cells = Vec::new();
        let mut auto = Vec::new();
        for table in [1u8, 2] {
            for &p in procs {
                // Sites in turns: every site at this count before the next.
                for site in paper::SITES {
                    let wanted = !quick || table == 1 || matches!(site, "edge" | "chicago");
                    if wanted && p <= paper::max_procs(site) {
                        cells.push((table, site, p));
                    }
                }
                if !quick || table == 1 {
                    auto.push((table, p.to_string()));
                }
            }
            if !quick || table == 1 {
                auto.push((table, "1-16".to_owned()));
            }
        }
        Self {
            rounds: if quick { 1 } else { rounds.max(1) },
            cells,
            auto,
        }
    }

    fn runs(&self) -> u64 {
        (self.rounds * (self.cells.len() + self.auto.len())) as u64
    }
}

/// A device: its own link to the edge and a client through it.
struct Lane {
    client: async_nats::Client,
    /// JetStream through the lane's link (its inputs store made).
    js: async_nats::jetstream::Context,
    _link: WanLink,
    dir: PathBuf,
}

/// Everything a run needs.
struct Bench {
    p: Platform,
    /// The edge's own input store (to delete inputs after their run).
    store: ObjectStore,
    expected_inside: u64,
    points: u64,
    progress: ProgressBar,
    uploads: tokio::sync::Semaphore,
}

/// One run to make.
#[derive(Debug, Clone)]
struct RunSpec {
    round: usize,
    table: u8,
    /// `node:<id>` or `auto`.
    placement: String,
    /// The site asked for (`auto` for automatic placement).
    site: String,
    procs: String,
    function: &'static str,
}

fn node_of(site: &str) -> String {
    format!("{site}-1")
}

fn site_of(node: &str) -> &str {
    node.strip_suffix("-1").unwrap_or(node)
}

/// An input the device uploaded.
struct Input {
    name: String,
    bytes: u64,
    crc32: u32,
    /// When the clock started (before the upload).
    started: Instant,
    upload_s: f64,
}

impl Bench {
    /// A fresh input of `bytes` written (before the clock) and uploaded
    /// by the device of `lane`.
    async fn upload(&self, lane: &Lane, bytes: u64) -> anyhow::Result<Input> {
        let file = lane.dir.join("input");
        let crc32 = {
            // A fast generator: lanes write their inputs while others are
            // being timed.
            let mut data = vec![0u8; bytes as usize];
            rand::rngs::SmallRng::from_rng(&mut rand::rng()).fill_bytes(&mut data);
            tokio::fs::write(&file, &data).await?;
            crc32fast::hash(&data)
        };
        let started = Instant::now();
        let uploaded = comfaas_platform::objects::upload_file(&lane.js, INPUTS_BUCKET, &file)
            .await
            .context("upload the input")?;
        let upload_s = started.elapsed().as_secs_f64();
        let _ = tokio::fs::remove_file(&file).await;
        Ok(Input {
            name: uploaded.name,
            bytes,
            crc32,
            started,
            upload_s,
        })
    }

    /// One run: a fresh input uploaded, the function invoked, the input
    /// deleted; checked and timed.
    async fn run(&self, lane: &Lane, spec: &RunSpec) -> anyhow::Result<RunRecord> {
        let input = {
            // At most UPLOADS_AT_ONCE lanes upload at a time (the others
            // wait before their clock starts): more would share this
            // machine's cores and slow each other's hashing and copying.
            let _slot = self.uploads.acquire().await?;
            self.upload(lane, paper::INPUT_BYTES[spec.table as usize - 1])
                .await?
        };
        let record = self.invoke(lane, spec, &input).await;
        let _ = self.store.delete(&input.name).await;
        record
    }

    /// Invokes the function on `input`, timed from the clock of `input`.
    async fn invoke(
        &self,
        lane: &Lane,
        spec: &RunSpec,
        input: &Input,
    ) -> anyhow::Result<RunRecord> {
        let mut headers = HeaderMap::new();
        headers.insert(h::PLACEMENT, spec.placement.as_str());
        headers.insert(h::PROCS, spec.procs.as_str());
        headers.insert(h::INPUT_OBJECT, input.name.as_str());
        let reply = lane
            .client
            .send_request(
                self.p.subjects.invoke(spec.function),
                async_nats::Request::new()
                    .headers(headers)
                    .timeout(Some(Duration::from_secs(900))),
            )
            .await
            .with_context(|| format!("invoke {spec:?}"))?;
        let total_s = input.started.elapsed().as_secs_f64();
        let upload_s = input.upload_s;
        if header(&reply, h::STATUS) != "ok" {
            bail!(
                "{spec:?}: {} {}",
                header(&reply, h::ERROR),
                String::from_utf8_lossy(&reply.payload)
            );
        }
        let ms = |name: &str| header(&reply, name).parse::<f64>().unwrap_or(0.0) / 1000.0;
        let out: serde_json::Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("output {}", String::from_utf8_lossy(&reply.payload)))?;
        let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
        let node = header(&reply, h::NODE);
        let inside = out["inside"].as_u64().unwrap_or(u64::MAX);
        let points = out["points"].as_u64().unwrap_or(0);
        let pi = f("pi");
        let pi_ok = inside == self.expected_inside
            && points == self.points
            && (points == 0 || (pi - std::f64::consts::PI).abs() < 0.01);
        let input_ok = out["input_bytes"].as_u64() == Some(input.bytes)
            && out["crc32"].as_u64() == Some(u64::from(input.crc32));
        if !pi_ok || !input_ok {
            bail!(
                "{spec:?} on {node}: wrong answer {out} (expected {} inside of {}, input CRC-32 {})",
                self.expected_inside,
                self.points,
                input.crc32
            );
        }
        let (fetch_s, queue_s, duration_s) = (ms(h::FETCH_MS), ms(h::QUEUE_MS), ms(h::DURATION_MS));
        let elapsed_s = f("elapsed_s");
        let compute_s = f("computed_s") + f("waited_s");
        Ok(RunRecord {
            round: spec.round,
            table: spec.table,
            placement: spec.placement.clone(),
            site: spec.site.clone(),
            procs_asked: spec.procs.clone(),
            node: node.clone(),
            ran_site: site_of(&node).to_owned(),
            procs: out["procs"].as_u64().unwrap_or(0) as u32,
            input_bytes: input.bytes,
            total_s,
            upload_s,
            fetch_s,
            queue_s,
            round_trip_s: (total_s - upload_s - fetch_s - queue_s - duration_s).max(0.0),
            launch_s: (duration_s - elapsed_s).max(0.0),
            site_delay_s: f("site_delay_s"),
            read_s: f("read_s"),
            compute_s,
            computed_s: f("computed_s"),
            waited_s: f("waited_s"),
            over_s: f("over_s"),
            pi,
        })
    }
}

/// The job's profile: per node, the compute seconds per process count
/// (none with `compute` off) and the fixed per-site delay.
fn profile(
    fit: &Fit,
    delays: &BTreeMap<String, f64>,
    compute: bool,
    per_block: u64,
) -> serde_json::Value {
    let nodes: serde_json::Map<String, serde_json::Value> = paper::SITES
        .iter()
        .map(|site| {
            let host = fit.host(site);
            let compute_s: serde_json::Map<String, serde_json::Value> =
                (1..=paper::max_procs(site))
                    .map(|p| {
                        let s = if compute { host.seconds(p) } else { 0.0 };
                        (p.to_string(), serde_json::json!(s))
                    })
                    .collect();
            (
                node_of(site),
                serde_json::json!({
                    "compute_s": compute_s,
                    "site_delay_s": delays.get(*site).copied().unwrap_or(0.0),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "blocks": BLOCKS,
        "points_per_block": per_block,
        "nodes": nodes,
    })
}

fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ~{eta} left  {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The forced cells of a round, `lanes` at once, never two on one site.
async fn forced_round(
    bench: &Arc<Bench>,
    lanes: &[Arc<Lane>],
    round: usize,
    cells: &[Cell],
) -> anyhow::Result<Vec<RunRecord>> {
    let pending: Arc<Mutex<VecDeque<Cell>>> = Arc::new(Mutex::new(cells.iter().copied().collect()));
    let busy: Arc<Mutex<BTreeSet<&'static str>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let (bench, lane, pending, busy) =
            (bench.clone(), lane.clone(), pending.clone(), busy.clone());
        tasks.spawn(async move {
            let mut records = Vec::new();
            loop {
                let next = {
                    let mut queue = pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let mut busy = busy.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    if queue.is_empty() {
                        break;
                    }
                    let free = queue.iter().position(|(_, site, _)| !busy.contains(site));
                    free.and_then(|i| queue.remove(i)).inspect(|c| {
                        busy.insert(c.1);
                    })
                };
                let Some((table, site, procs)) = next else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                bench
                    .progress
                    .set_message(format!("Table {table} {site} {procs}p, round {round}"));
                let spec = RunSpec {
                    round,
                    table,
                    placement: format!("node:{}", node_of(site)),
                    site: site.to_owned(),
                    procs: procs.to_string(),
                    function: FUNCTION,
                };
                let record = bench.run(&lane, &spec).await;
                busy.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .remove(site);
                bench.progress.inc(1);
                records.push(record?);
            }
            anyhow::Ok(records)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// The sites, the services, the devices' lanes: everything started.
struct Env {
    bench: Bench,
    services: Vec<comfaas_tests::Service>,
    clouds: Vec<comfaas_testbed::sites::Site>,
    lanes: Vec<Arc<Lane>>,
    edge_url: String,
    nodes: Vec<String>,
}

impl Env {
    /// Starts the five sites on `links`, the dispatcher, an executor per
    /// site and `lanes` devices, each with its own link to the edge.
    async fn start(links: &Links, lanes: usize) -> anyhow::Result<Self> {
        let clouds: Vec<String> = paper::SITES
            .iter()
            .filter(|s| !paper::is_edge(s))
            .map(|s| s.to_string())
            .collect();
        let sites = Sites::start(SitesOptions {
            configs: repo_root().join("nats"),
            clouds,
            links: links.clouds.clone(),
            uplink: links.uplink,
            edge_port: None,
            security: None,
            edge_mqtt: None,
            max_file_store: None,
        })
        .await
        .context("start the sites")?;
        let edge_url = sites.edge.server.url().to_owned();
        let edge_addr: SocketAddr = format!("127.0.0.1:{}", sites.edge.server.port()).parse()?;
        let Sites {
            edge,
            clouds: cloud_sites,
            uplink,
            ..
        } = sites;
        let p = Platform::on(edge.server).await;
        let mut services = vec![p.dispatcher().await];
        services.push(
            p.executor(NodeSpec {
                slots: 1,
                queue: 64,
                max_procs: paper::EDGE_MAX_PROCS,
                input_cache_bytes: 2 << 30,
                ..NodeSpec::edge(&node_of("edge"))
            })
            .await,
        );
        for site in &cloud_sites {
            services.push(
                p.executor(NodeSpec {
                    slots: 1,
                    queue: 64,
                    max_procs: paper::CLOUD_MAX_PROCS,
                    input_cache_bytes: 2 << 30,
                    ..NodeSpec::cloud_at(&node_of(&site.name), site.server.url())
                })
                .await,
            );
        }
        let mut devices = Vec::new();
        for i in 0..lanes {
            let link = WanLink::start(links.device, edge_addr, uplink.clone()).await?;
            let client = async_nats::connect(format!("127.0.0.1:{}", link.port())).await?;
            let js = async_nats::jetstream::new(client.clone());
            comfaas_platform::resources::inputs_store(&js).await?;
            let dir = p.scratch.path().join(format!("lane-{i}"));
            std::fs::create_dir_all(&dir)?;
            devices.push(Arc::new(Lane {
                client,
                js,
                _link: link,
                dir,
            }));
        }
        let store = comfaas_platform::resources::inputs_store(&async_nats::jetstream::new(
            p.client.clone(),
        ))
        .await?;
        Ok(Self {
            bench: Bench {
                p,
                store,
                expected_inside: 0,
                points: 0,
                progress: ProgressBar::hidden(),
                uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
            },
            services,
            clouds: cloud_sites,
            lanes: devices,
            edge_url,
            nodes: paper::SITES.iter().map(|s| node_of(s)).collect(),
        })
    }

    fn node_refs(&self) -> Vec<&str> {
        self.nodes.iter().map(String::as_str).collect()
    }

    /// Deploys `profile` as `name` `version` on every node; sets the
    /// answer every run must give.
    async fn deploy(
        &mut self,
        name: &str,
        version: &str,
        profile: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let dir = self
            .bench
            .p
            .scratch
            .path()
            .join("bundles")
            .join(format!("{name}-{version}"));
        let bundle = bundle(&dir, name, version, profile)?;
        self.bench.p.deploy(&bundle, &self.node_refs()).await;
        let per_block = profile["points_per_block"].as_u64().unwrap_or(0);
        self.bench.expected_inside = count_inside(BLOCKS, per_block);
        self.bench.points = BLOCKS * per_block;
        Ok(())
    }

    async fn stop(self) {
        for s in self.services {
            s.stop().await;
        }
        drop(self.lanes);
        drop(self.clouds);
    }
}

fn probe_spec(site: &str) -> RunSpec {
    RunSpec {
        round: 0,
        table: 1,
        placement: format!("node:{}", node_of(site)),
        site: site.to_owned(),
        procs: "2".to_owned(),
        function: PROBE,
    }
}

/// Under `paper-fit`: the bandwidths that make the platform's own time
/// for the extra 499 MB what the paper's was. The first fit takes the
/// tables' extra seconds as pure transfer; this platform adds its own
/// (hashing the input before the upload, an acknowledgement per chunk, the
/// node's fetch and cache write, rank 0's read), measured here once per
/// site with 1 MB and 500 MB, no compute and no delay, and taken off the
/// time left for the link.
async fn fit_transfers(
    env: &mut Env,
    fit: &Fit,
    links: &Links,
) -> anyhow::Result<(Links, Vec<report::TransferFit>)> {
    env.deploy(PROBE, "1.0.0", &profile(fit, &BTreeMap::new(), false, 0))
        .await?;
    let lane = env.lanes[0].clone();
    let mut measured: BTreeMap<(&str, u64), RunRecord> = BTreeMap::new();
    for bytes in paper::INPUT_BYTES {
        let input = env.bench.upload(&lane, bytes).await?;
        for site in paper::SITES {
            let record = env.bench.invoke(&lane, &probe_spec(site), &input).await?;
            measured.insert((site, bytes), record);
        }
        let _ = env.bench.store.delete(&input.name).await;
    }
    let [small, large] = paper::INPUT_BYTES;
    let delta = |site: &str, f: fn(&RunRecord) -> f64| -> f64 {
        measured
            .get(&(site, large))
            .zip(measured.get(&(site, small)))
            .map_or(f64::NAN, |(l, s)| f(l) - f(s))
    };
    let bits = (large - small) as f64 * 8.0;
    let first = |spec: &LinkSpec| spec.bits_per_s.map_or(f64::INFINITY, |b| b as f64);
    let mut rows = Vec::new();
    let mut fitted = links.clone();
    // The device: the edge row's extra less the edge's own fetch and read.
    let upload = delta("edge", |r| r.upload_s);
    let device_overhead = upload - bits / first(&links.device);
    let device_target =
        fit.extra_s["edge"] - delta("edge", |r| r.fetch_s) - delta("edge", |r| r.read_s);
    let mut correct =
        |path: &str, target: f64, overhead: f64, spec: &mut LinkSpec, measured: f64| {
            let left = target - overhead;
            let reachable = left > 0.0;
            let first_mbit = first(spec) / 1e6;
            if reachable {
                spec.bits_per_s = Some((bits / left).round() as u64);
            }
            rows.push(report::TransferFit {
                path: path.to_owned(),
                target_s: target,
                measured_s: measured,
                overhead_s: overhead,
                first_mbit,
                fitted_mbit: spec.bits_per_s.map_or(f64::INFINITY, |b| b as f64 / 1e6),
                reachable,
            });
        };
    correct(
        "device → edge",
        device_target,
        device_overhead,
        &mut fitted.device,
        upload,
    );
    for site in paper::SITES.iter().filter(|s| !paper::is_edge(s)) {
        let fetch = delta(site, |r| r.fetch_s);
        let Some(spec) = fitted.clouds.get_mut(*site) else {
            continue;
        };
        let overhead = fetch - bits / first(spec);
        let target = fit.extra_s[site] - device_target - delta(site, |r| r.read_s);
        correct(&format!("edge → {site}"), target, overhead, spec, fetch);
    }
    Ok((fitted, rows))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let fit = Fit::from_tables();
    let first_links = links::links(args.profile, &fit)?;
    let lanes_n = args
        .lanes
        .unwrap_or(if first_links.uplink.is_some() { 1 } else { 4 })
        .max(1);
    let plan = Plan::new(args.quick, args.rounds);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("target/paper").join(args.profile.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    println!("{}", report::fit_text(&fit));

    // Under paper-fit, the transfers are fitted on a first set of sites,
    // and everything is started again on the fitted links.
    let (links, transfer_fit) = if first_links.site_delay && !args.quick {
        let mut env = Env::start(&first_links, 1).await?;
        let (links, rows) = fit_transfers(&mut env, &fit, &first_links).await?;
        env.stop().await;
        println!("{}", report::transfer_fit_text(&rows));
        (links, rows)
    } else {
        (first_links, Vec::new())
    };
    let mut env = Env::start(&links, lanes_n).await?;

    // Calibration: links.
    println!(
        "## Calibration ({})\n\nlinks: {}\n",
        args.profile.name(),
        links.source
    );
    let calibration = calibrate_links(&env.edge_url, &env.clouds, &env.lanes[0], &links).await?;
    println!("{}", report::calibration_text(&calibration));

    // Calibration: this machine's Pi rate (2 ranks on the edge, each
    // counting half the blocks).
    let rate_points: u64 = BLOCKS * 20_000;
    env.deploy(
        PROBE,
        "1.0.0",
        &profile(&fit, &BTreeMap::new(), false, rate_points / BLOCKS),
    )
    .await?;
    let lane = env.lanes[0].clone();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let r = env.bench.run(&lane, &probe_spec("edge")).await?;
        rates.push(rate_points as f64 / 2.0 / r.computed_s);
    }
    let rate = median(&rates);
    // Real counting takes a share of the shortest profiled compute, with
    // the most ranks sharing this machine's cores and the lanes at once.
    let shortest = fit.cloud.seconds(paper::CLOUD_MAX_PROCS);
    let cores = f64::from(comfaas_exec::cores().max(1));
    let per_block =
        ((REAL_SHARE * shortest * rate * cores / lanes_n as f64) / BLOCKS as f64).floor() as u64;
    let points = per_block * BLOCKS;
    println!(
        "Pi rate of this machine: {:.2} M points/s per process (median of 3); each run counts {} points for real ({:.1} s of one process), the rest of its compute time is the profile's\n",
        rate / 1e6,
        points,
        points as f64 / rate
    );

    // The platform's own time per site: no compute, no delay, 1 MB, 2
    // ranks (a new version of the probe, with no points).
    env.deploy(PROBE, "1.0.1", &profile(&fit, &BTreeMap::new(), false, 0))
        .await?;
    let mut own = BTreeMap::new();
    for _ in 0..3 {
        for site in paper::SITES {
            let r = env.bench.run(&lane, &probe_spec(site)).await?;
            own.entry(site.to_owned())
                .or_insert_with(Vec::new)
                .push(r.total_s);
        }
    }
    let own: BTreeMap<String, f64> = own.into_iter().map(|(s, v)| (s, median(&v))).collect();
    let delays: BTreeMap<String, f64> = if links.site_delay {
        paper::SITES
            .iter()
            .map(|s| (s.to_string(), (fit.site_part[s][0] - own[*s]).max(0.0)))
            .collect()
    } else {
        BTreeMap::new()
    };
    println!("{}", report::own_time_text(&own, &delays, &fit));

    // The job.
    env.deploy(FUNCTION, "1.0.0", &profile(&fit, &delays, true, per_block))
        .await?;
    let Env {
        mut bench,
        services,
        clouds,
        lanes,
        ..
    } = env;
    bench.progress = bar(plan.runs());
    let bench = Arc::new(bench);
    let mut records = Vec::new();
    for round in 1..=plan.rounds {
        records.extend(forced_round(&bench, &lanes, round, &plan.cells).await?);
        for (table, procs) in &plan.auto {
            bench
                .progress
                .set_message(format!("Table {table} auto {procs}p, round {round}"));
            let spec = RunSpec {
                round,
                table: *table,
                placement: "auto".to_owned(),
                site: "auto".to_owned(),
                procs: procs.clone(),
                function: FUNCTION,
            };
            records.push(bench.run(&lanes[0], &spec).await?);
            bench.progress.inc(1);
        }
    }
    bench.progress.finish_and_clear();

    let header = report::Header {
        profile: args.profile.name().to_owned(),
        links: links.source.clone(),
        rounds: plan.rounds,
        lanes: lanes_n,
        rate_per_s: rate,
        points,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let written = report::write(
        &out,
        &header,
        &fit,
        &report::Calibrated {
            transfers: &transfer_fit,
            links: &calibration,
            own: &own,
            delays: &delays,
        },
        &records,
    )?;
    println!("{}", written.text);
    for path in written.files {
        println!("wrote {}", path.display());
    }
    for s in services {
        s.stop().await;
    }
    drop(lanes);
    drop(clouds);
    Ok(())
}
