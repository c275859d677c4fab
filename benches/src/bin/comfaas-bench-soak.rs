//! `comfaas-bench-soak`: minutes of mixed load while components die.
//!
//! A file-backed `nats-server`, the real `comfaas-dispatch` and two
//! `comfaas-exec` binaries as child processes, and three Python functions
//! (`soak-quick`, `soak-slow` sleeping 1–3 s, `soak-large` reading a large
//! input). For `--minutes` it keeps a few requests in flight, publishes
//! events at `--events-per-s` (each with its own `Nats-Msg-Id`; the
//! function prints a fresh nonce per run, so a run done twice shows as two
//! nonces for one event) and every `--large-every` seconds uploads a 20–100
//! MB input to the object store and invokes `soak-large` on it. After a
//! warm-up, every `--fault-every` seconds one component is killed with
//! SIGKILL and restarted, in turn: an executor (alternating between the
//! two), the dispatcher, the nats-server (restarted on the same store and
//! port). There is no clustered site to kill a node of yet, so the server's
//! death stands in for a cluster node's.
//!
//! At the end it waits for the events to drain and accounts for every
//! accepted event: exactly one result in `COMFAAS_RESULTS` (by
//! `Nats-Msg-Id`) or one dead letter in `COMFAAS_DLQ`. It prints each
//! service's resident memory after the warm-up and at the end, request
//! latencies, and per fault how many requests failed and why; it exits
//! non-zero when an event was lost or duplicated.
//!
//! Run (service binaries are found beside the bench):
//! `cargo build --release -j2 --bins && target/release/comfaas-bench-soak`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::Parser;
use comfaas_platform::dlq::Dlq;
use comfaas_schemas::names::{headers as h, Subjects, INPUTS_BUCKET, RESULTS_STREAM};
use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
use comfaas_tests::{header, Platform, Process};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "Mixed load for minutes while components are killed -9 and restarted")]
struct Args {
    /// Length of the loaded run, minutes (warm-up included).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 30)]
    fault_every: u64,
    /// Seconds of load before the first fault; memory is first read then.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Events published per second.
    #[arg(long, default_value_t = 12.0)]
    events_per_s: f64,
    /// Requesters, each keeping one request in flight.
    #[arg(long, default_value_t = 3)]
    requesters: usize,
    /// Pause of a requester between two requests, milliseconds.
    #[arg(long, default_value_t = 300)]
    request_pause_ms: u64,
    /// A requester's own limit on waiting for an answer, seconds.
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    /// Seconds between two large-input invocations.
    #[arg(long, default_value_t = 20)]
    large_every: u64,
    /// Smallest large input, MB.
    #[arg(long, default_value_t = 20)]
    large_min_mb: u64,
    /// Largest large input, MB.
    #[arg(long, default_value_t = 100)]
    large_max_mb: u64,
    /// Seconds the nats-server stays down when killed.
    #[arg(long, default_value_t = 3)]
    server_down: u64,
    /// Seconds a killed dispatcher or executor stays down.
    #[arg(long, default_value_t = 1)]
    service_down: u64,
    /// The components killed in turn: `exec` (the two executors
    /// alternate), `dispatcher`, `server`.
    #[arg(long, value_delimiter = ',', default_value = "exec,dispatcher,server", value_parser = ["exec", "dispatcher", "server"])]
    order: Vec<String>,
    /// Seconds to wait at the end for every event to be accounted for.
    #[arg(long, default_value_t = 300)]
    drain_timeout: u64,
}

/// Writes one fresh nonce per run, so two runs of one event differ.
const QUICK: &str = r#"
import json, sys, uuid
event = json.loads(sys.stdin.read() or "{}")
print(json.dumps({"id": event.get("id"), "nonce": uuid.uuid4().hex}))
"#;

/// As [`QUICK`], after sleeping as long as the input says (1–3 s).
const SLOW: &str = r#"
import json, sys, time, uuid
event = json.loads(sys.stdin.read() or "{}")
time.sleep(float(event.get("sleep", 2)))
print(json.dumps({"id": event.get("id"), "nonce": uuid.uuid4().hex}))
"#;

/// Reads its whole (large) input and says how long it was.
const LARGE: &str = r#"
import sys
n = 0
while True:
    block = sys.stdin.buffer.read(1 << 20)
    if not block:
        break
    n += len(block)
print(n)
"#;

const MB: u64 = 1 << 20;

/// JetStream reserves every stream's and store's full `max_bytes`
/// against its storage limit, by default three quarters of the free disk;
/// the inputs store alone asks 16 GiB, and on a disk with some 25 GB free
/// `COMFAAS_DLQ` could then not be created and the dispatcher exited at
/// start. The soak writes a few GB at most, so it lifts the limit instead
/// of depending on the machine's free space.
const SERVER_CONF: &str = "jetstream {\n  max_file_store: 200GB\n}\n";

/// The components killed in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Exec(usize),
    Dispatcher,
    Server,
}

impl Component {
    /// The `k`-th fault's victim in `order` (by default executor,
    /// dispatcher, server, the other executor, dispatcher, server, …).
    fn nth(order: &[String], k: usize) -> Self {
        let turn = |i: usize| {
            order
                .get(i % order.len().max(1))
                .map_or("exec", String::as_str)
        };
        match turn(k) {
            "dispatcher" => Self::Dispatcher,
            "server" => Self::Server,
            _ => Self::Exec((0..k).filter(|i| turn(*i) == "exec").count() % 2),
        }
    }

    fn name(self) -> String {
        match self {
            Self::Exec(i) => exec_node(i),
            Self::Dispatcher => "dispatcher".to_owned(),
            Self::Server => "nats-server".to_owned(),
        }
    }
}

fn exec_node(i: usize) -> String {
    format!("exec-{}", i + 1)
}

/// One request (small or large) as its sender saw it.
#[derive(Debug, Clone)]
struct Call {
    large: bool,
    started: Instant,
    ended: Instant,
    latency: Duration,
    /// `None` when it succeeded, else the error code and message.
    failure: Option<String>,
}

/// Every component's resident memory (KiB) at a time into the run.
type Sample = (Duration, Vec<(Component, u64)>);

/// One fault as done.
#[derive(Debug, Clone)]
struct Fault {
    component: Component,
    at: Instant,
    /// From the kill until the component reported again (the server:
    /// until it was ready; a service: its first load report or metrics).
    back_after: Option<Duration>,
    /// Resident memory of the victim just before it was killed, KiB.
    rss_before_kib: u64,
}

/// What the load tasks record, shared with the fault loop.
#[derive(Default)]
struct Stats {
    stop: AtomicBool,
    calls: Mutex<Vec<Call>>,
    events_sent: AtomicU64,
    /// Events JetStream acknowledged, by `Nats-Msg-Id`.
    accepted: Mutex<Vec<String>>,
    /// Events whose publication was never acknowledged, by why.
    refused: Mutex<BTreeMap<String, u64>>,
    /// Per event id, the nonces of every result seen on the result
    /// subjects (a run done twice: two nonces), and error results.
    seen: Mutex<HashMap<String, HashSet<String>>>,
    large_bytes: AtomicU64,
}

impl Stats {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

/// Resident memory of `pid`, KiB (0 when it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The live (not zombie) nats-server process started with `-sd <store>`:
/// the testbed keeps its child to itself, and the store directory, made
/// by this program, names exactly one server.
fn server_pid(store: &Path) -> Option<u32> {
    let store = store.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let started_on_store = args
                .windows(2)
                .any(|pair| pair[0] == b"-sd" && pair[1] == store);
            started_on_store && !is_zombie(*pid)
        })
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

/// Waits (at most 10 s) until `pid` has exited.
async fn wait_gone(pid: u32) {
    for _ in 0..200 {
        if is_zombie(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes of the site.
struct Site {
    work: PathBuf,
    store: PathBuf,
    port: u16,
    dispatcher: Process,
    execs: Vec<Process>,
}

impl Site {
    fn spawn_dispatcher(url: &str) -> Process {
        Process::spawn("comfaas-dispatch", &["--nats-url", url])
    }

    fn spawn_exec(&self, url: &str, i: usize) -> Process {
        spawn_exec(&self.work, url, i)
    }

    fn pid(&self, component: Component) -> Option<u32> {
        match component {
            Component::Exec(i) => self.execs.get(i).and_then(|p| p.child.id()),
            Component::Dispatcher => self.dispatcher.child.id(),
            Component::Server => server_pid(&self.store),
        }
    }

    fn components() -> [Component; 4] {
        [
            Component::Server,
            Component::Dispatcher,
            Component::Exec(0),
            Component::Exec(1),
        ]
    }

    /// Resident memory of every component, KiB.
    fn rss(&self) -> Vec<(Component, u64)> {
        Self::components()
            .into_iter()
            .map(|c| (c, self.pid(c).map(rss_kib).unwrap_or(0)))
            .collect()
    }
}

fn spawn_exec(work: &Path, url: &str, i: usize) -> Process {
    let node = exec_node(i);
    let data_dir = work.join(&node).to_string_lossy().into_owned();
    Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            url,
            "--node",
            &node,
            "--tier",
            if i == 0 { "edge" } else { "cloud" },
            "--slots",
            "4",
            "--data-dir",
            &data_dir,
        ],
    )
}

/// Waits at most `limit` for a first message on `subject`.
async fn first_on(client: &async_nats::Client, subject: String, limit: Duration) -> bool {
    let Ok(mut sub) = client.subscribe(subject).await else {
        return false;
    };
    matches!(tokio::time::timeout(limit, sub.next()).await, Ok(Some(_)))
}

/// Why a reply or a request failed, in a few words: the error code and
/// message, numbers folded so alike failures group together.
fn failure_of(reply: &Result<async_nats::Message, async_nats::RequestError>) -> Option<String> {
    match reply {
        Err(e) => Some(format!("transport: {e}")),
        Ok(m) if header(m, h::STATUS) == h::STATUS_OK => None,
        Ok(m) => {
            let message: String = header(m, h::ERROR)
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect::<String>()
                .split_whitespace()
                .take(12)
                .collect::<Vec<_>>()
                .join(" ");
            let message = fold_ids(&message);
            Some(format!("{} {message}", header(m, h::ERROR_CODE)))
        }
    }
}

/// Replaces long hex-ish words (ids) by `…`.
fn fold_ids(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let hexish = w
                .chars()
                .filter(|c| c.is_ascii_hexdigit() || *c == '#' || *c == '-')
                .count();
            if w.len() >= 12 && hexish * 10 >= w.len() * 8 {
                "…"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn requester(
    client: async_nats::Client,
    subjects: Subjects,
    stats: Arc<Stats>,
    id: usize,
    (pause, timeout): (Duration, Duration),
) {
    let mut n = 0u64;
    while !stats.stopped() {
        n += 1;
        let (function, sleep) = {
            let mut rng = rand::rng();
            if rng.random_bool(0.25) {
                ("soak-slow", rng.random_range(1.0..3.0))
            } else {
                ("soak-quick", 0.0)
            }
        };
        let body = serde_json::json!({"id": format!("r{id}-{n}"), "sleep": sleep}).to_string();
        let started = Instant::now();
        let reply = client
            .send_request(
                subjects.invoke(function),
                async_nats::Request::new()
                    .payload(Bytes::from(body))
                    .timeout(Some(timeout)),
            )
            .await;
        stats.record(Call {
            large: false,
            started,
            ended: Instant::now(),
            latency: started.elapsed(),
            failure: failure_of(&reply),
        });
        tokio::time::sleep(pause).await;
    }
}

async fn publish_event(
    js: jetstream::Context,
    subjects: Subjects,
    stats: Arc<Stats>,
    id: String,
    n: u64,
) {
    let (function, body) = if n.is_multiple_of(5) {
        let sleep = rand::rng().random_range(1.0..3.0);
        ("soak-slow", serde_json::json!({"id": id, "sleep": sleep}))
    } else {
        ("soak-quick", serde_json::json!({"id": id}))
    };
    let payload = Bytes::from(body.to_string());
    // The same id on every try: JetStream keeps one copy however many
    // tries reach it, so retrying through a server restart is safe.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let mut headers = HeaderMap::new();
        headers.insert(h::MSG_ID, id.as_str());
        let acked = match js
            .publish_with_headers(subjects.event(function), headers, payload.clone())
            .await
        {
            Ok(ack) => ack.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(_) => {
                if let Ok(mut accepted) = stats.accepted.lock() {
                    accepted.push(id);
                }
                return;
            }
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Ok(mut refused) = stats.refused.lock() {
        *refused.entry(fold_ids(&last_error)).or_default() += 1;
    }
}

async fn publisher(
    js: jetstream::Context,
    subjects: Subjects,
    stats: Arc<Stats>,
    prefix: String,
    per_s: f64,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stats.stopped() {
        tick.tick().await;
        n += 1;
        stats.events_sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(publish_event(
            js.clone(),
            subjects.clone(),
            stats.clone(),
            format!("{prefix}{n}"),
            n,
        ));
    }
}

/// Records the nonce of every event result seen on the result subjects.
async fn watch_results(mut sub: async_nats::Subscriber, stats: Arc<Stats>, prefix: String) {
    while let Some(message) = sub.next().await {
        let id = header(&message, h::MSG_ID);
        if !id.starts_with(&prefix) {
            continue;
        }
        let run = run_mark(&message);
        if let Ok(mut seen) = stats.seen.lock() {
            seen.entry(id).or_default().insert(run);
        }
    }
}

/// What tells one run of an event from another: its nonce, or its error.
fn run_mark(message: &async_nats::Message) -> String {
    serde_json::from_slice::<serde_json::Value>(&message.payload)
        .ok()
        .and_then(|v| v.get("nonce").and_then(|n| n.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("error {}", header(message, h::ERROR_CODE)))
}

/// Every `every`, uploads a fresh 20–100 MB input and invokes `soak-large`
/// on it, then deletes it.
async fn large_inputs(
    client: async_nats::Client,
    subjects: Subjects,
    stats: Arc<Stats>,
    scratch: PathBuf,
    every: Duration,
    (min_mb, max_mb): (u64, u64),
) {
    let js = jetstream::new(client.clone());
    let mut n = 0u64;
    while !stats.stopped() {
        n += 1;
        let started = Instant::now();
        let size = rand::rng().random_range(min_mb..=max_mb.max(min_mb)) * MB;
        let failure = match large_once(&client, &js, &subjects, &scratch, size, n).await {
            Ok(None) => {
                stats.large_bytes.fetch_add(size, Ordering::Relaxed);
                None
            }
            Ok(Some(why)) => Some(why),
            Err(e) => Some(format!("upload: {}", fold_ids(&format!("{e:#}")))),
        };
        stats.record(Call {
            large: true,
            started,
            ended: Instant::now(),
            latency: started.elapsed(),
            failure,
        });
        let rest = every.saturating_sub(started.elapsed());
        let until = Instant::now() + rest;
        while Instant::now() < until && !stats.stopped() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One large invocation: `Ok(None)` when it answered with the input's
/// length, `Ok(Some(why))` when it failed.
async fn large_once(
    client: &async_nats::Client,
    js: &jetstream::Context,
    subjects: &Subjects,
    scratch: &Path,
    size: u64,
    n: u64,
) -> anyhow::Result<Option<String>> {
    let file = scratch.join(format!("large-{n}.bin"));
    let path = file.clone();
    tokio::task::spawn_blocking(move || write_input(&path, size, n)).await??;
    let store = comfaas_platform::resources::inputs_store(js).await?;
    let uploaded = comfaas_platform::objects::upload_file(js, INPUTS_BUCKET, &file).await;
    let _ = std::fs::remove_file(&file);
    let uploaded = uploaded?;
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, uploaded.name.as_str());
    headers.insert(h::TIMEOUT, "300s");
    let reply = client
        .send_request(
            subjects.invoke("soak-large"),
            async_nats::Request::new()
                .headers(headers)
                .timeout(Some(Duration::from_secs(330))),
        )
        .await;
    let _ = store.delete(&uploaded.name).await;
    Ok(match failure_of(&reply) {
        Some(why) => Some(why),
        None => {
            let said = reply
                .map(|m| String::from_utf8_lossy(&m.payload).trim().to_owned())
                .unwrap_or_default();
            (said != size.to_string()).then(|| format!("wrong length: {said} of {size}"))
        }
    })
}

/// A `size`-byte file whose content differs per `seed` (so no two uploads
/// share a digest, and no input is served from a node's cache).
fn write_input(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let block = comfaas_tests::points((MB / 8) as usize, seed);
    for i in 0..size / MB {
        file.write_all(&i.to_le_bytes())?;
        file.write_all(&block[8..])?;
    }
    file.flush()
}

/// How each accepted event ended, read from the streams.
#[derive(Debug, Default)]
struct Accounting {
    /// Stored results per event id.
    results: HashMap<String, u64>,
    /// Dead letters per event id, and why.
    letters: HashMap<String, Vec<String>>,
}

/// Reads every result of this run kept in `COMFAAS_RESULTS`, recording
/// their nonces too, and every dead letter.
async fn account(
    js: &jetstream::Context,
    subjects: &Subjects,
    stats: &Stats,
    prefix: &str,
) -> anyhow::Result<Accounting> {
    let mut out = Accounting::default();
    let stream = js.get_stream(RESULTS_STREAM).await?;
    if stream.cached_info().state.messages > 0 {
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let mut messages = consumer.messages().await?;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await
        {
            let message = message?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            let id = header(&message, h::MSG_ID);
            if id.starts_with(prefix) {
                *out.results.entry(id.clone()).or_default() += 1;
                let run = run_mark(&message);
                if let Ok(mut seen) = stats.seen.lock() {
                    seen.entry(id).or_default().insert(run);
                }
            }
            if pending == 0 {
                break;
            }
        }
    }
    let mut dlq = Dlq::open(js, subjects).await?;
    for letter in dlq.list(None, 1_000_000).await? {
        let id = letter.header(h::DLQ_MSG_ID).to_owned();
        if id.starts_with(prefix) {
            let why = format!(
                "{} {}",
                letter.header(h::DLQ_CODE),
                fold_ids(letter.header(h::DLQ_REASON))
            );
            out.letters.entry(id).or_default().push(why);
        }
    }
    Ok(out)
}

fn percentile(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    run(args).await
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let work_dir = tempfile::Builder::new().prefix("comfaas-soak-").tempdir()?;
    let work = work_dir.path().to_path_buf();
    let store = work.join("nats-store");
    std::fs::create_dir_all(&store)?;
    let server = EmbeddedServer::start(ServerOptions {
        store_dir: Some(store.clone()),
        config_text: Some(SERVER_CONF.to_owned()),
        ..ServerOptions::default()
    })
    .await
    .context("start nats-server (scripts/setup.sh installs it)")?;
    let port = server.port();
    let mut p = Platform::on(server).await;
    let url = p.nats.url().to_owned();
    let dispatcher = Site::spawn_dispatcher(&url);
    let execs = (0..2).map(|i| spawn_exec(&work, &url, i)).collect();
    let mut site = Site {
        work: work.clone(),
        store: store.clone(),
        port,
        dispatcher,
        execs,
    };
    p.nats.wait_for_dispatcher().await;
    let quick = p.function("soak-quick", "", &[("main.py", QUICK)]);
    let slow = p.function("soak-slow", "timeout = \"30s\"", &[("main.py", SLOW)]);
    let large = p.function("soak-large", "timeout = \"300s\"", &[("main.py", LARGE)]);
    for dir in [&quick, &slow, &large] {
        p.deploy(dir, &["exec-1", "exec-2"]).await;
    }

    let stats = Arc::new(Stats::default());
    let subjects = p.subjects.clone();
    let prefix = format!("soak-{}-e", &uuid_like());
    let results = p.client.subscribe(p.subjects.result_all()).await?;
    tokio::spawn(watch_results(results, stats.clone(), prefix.clone()));
    let started = Instant::now();
    let mut load = Vec::new();
    for i in 0..args.requesters {
        load.push(tokio::spawn(requester(
            p.device.clone(),
            subjects.clone(),
            stats.clone(),
            i,
            (
                Duration::from_millis(args.request_pause_ms),
                Duration::from_secs(args.request_timeout),
            ),
        )));
    }
    load.push(tokio::spawn(publisher(
        jetstream::new(p.device.clone()),
        subjects.clone(),
        stats.clone(),
        prefix.clone(),
        args.events_per_s,
    )));
    load.push(tokio::spawn(large_inputs(
        p.device.clone(),
        subjects.clone(),
        stats.clone(),
        p.scratch.path().to_path_buf(),
        Duration::from_secs(args.large_every),
        (args.large_min_mb, args.large_max_mb),
    )));

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let bar = ProgressBar::new(total.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let warmup = Duration::from_secs(args.warmup).min(total);
    let mut rss_start = None;
    let mut faults: Vec<Fault> = Vec::new();
    let mut max_rss: HashMap<String, u64> = HashMap::new();
    // Every component's memory twice a second after the warm-up: one
    // reading may catch a large input mid-fetch, a minute's median not.
    let mut samples: Vec<Sample> = Vec::new();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elapsed = started.elapsed();
        if elapsed >= warmup {
            samples.push((elapsed, site.rss()));
        }
        bar.set_position(elapsed.as_secs().min(total.as_secs()));
        bar.set_message(progress(&stats, faults.len()));
        if rss_start.is_none() && elapsed >= warmup {
            rss_start = Some(site.rss());
            say(
                &bar,
                format!(
                    "memory after warm-up: {}",
                    describe_rss(site.rss().as_slice())
                ),
            );
        }
        let next_fault = warmup + Duration::from_secs(args.fault_every) * faults.len() as u32;
        if args.fault_every > 0 && elapsed >= next_fault && elapsed + Duration::from_secs(5) < total
        {
            let component = Component::nth(&args.order, faults.len());
            for (c, kib) in site.rss() {
                let max = max_rss.entry(c.name()).or_default();
                *max = (*max).max(kib);
            }
            let fault = fault(&mut p, &mut site, component, &args).await?;
            say(
                &bar,
                format!(
                    "{:>4.0} s  killed {:<11} back after {}",
                    fault.at.duration_since(started).as_secs_f64(),
                    component.name(),
                    fault
                        .back_after
                        .map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
                ),
            );
            faults.push(fault);
        }
    }
    let rss_end = site.rss();
    let load_ended = Instant::now();
    stats.stop.store(true, Ordering::Relaxed);
    bar.set_message(format!("{} — draining", progress(&stats, faults.len())));
    for task in load {
        let _ = tokio::time::timeout(Duration::from_secs(400), task).await;
    }
    // Events still being published may retry for up to a minute.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The drain: until every accepted event has a result or a dead letter.
    let js = jetstream::new(p.client.clone());
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    let accepted: Vec<String> = stats.accepted.lock().map(|a| a.clone()).unwrap_or_default();
    let mut accounting;
    loop {
        accounting = account(&js, &subjects, &stats, &prefix).await?;
        let open = accepted
            .iter()
            .filter(|id| {
                !accounting.results.contains_key(*id) && !accounting.letters.contains_key(*id)
            })
            .count();
        bar.set_message(format!("draining: {open} events open"));
        if open == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let drained = load_ended.elapsed();
    bar.finish_and_clear();

    let verdict = report(Report {
        args: &args,
        stats: &stats,
        faults: &faults,
        started,
        drained,
        accepted: &accepted,
        accounting: &accounting,
        rss_start: rss_start.unwrap_or_default(),
        rss_end,
        max_rss,
        samples: (warmup, total, samples),
    });
    drop(site);
    drop(p);
    Ok(verdict)
}

/// A line above the progress bar, or on stderr when there is no terminal
/// to draw the bar on.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// A short random token naming this run's events.
fn uuid_like() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

fn progress(stats: &Stats, faults: usize) -> String {
    let calls = stats.calls.lock().map(|c| c.clone()).unwrap_or_default();
    let failed = calls.iter().filter(|c| c.failure.is_some()).count();
    let accepted = stats.accepted.lock().map(|a| a.len()).unwrap_or(0);
    let seen = stats.seen.lock().map(|s| s.len()).unwrap_or(0);
    format!(
        "requests {} ({failed} failed), events {accepted} accepted / {seen} answered, faults {faults}",
        calls.len()
    )
}

fn describe_rss(rss: &[(Component, u64)]) -> String {
    rss.iter()
        .map(|(c, kib)| format!("{} {} MiB", c.name(), mib(*kib)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kills `component` with SIGKILL, keeps it down a moment, restarts it and
/// waits until it reports again.
async fn fault(
    p: &mut Platform,
    site: &mut Site,
    component: Component,
    args: &Args,
) -> anyhow::Result<Fault> {
    let rss_before_kib = site.pid(component).map(rss_kib).unwrap_or(0);
    let url = p.nats.url().to_owned();
    let at = Instant::now();
    let back_after = match component {
        Component::Exec(i) => {
            site.execs[i].kill().await;
            tokio::time::sleep(Duration::from_secs(args.service_down)).await;
            site.execs[i] = site.spawn_exec(&url, i);
            let back = first_on(
                &p.client,
                p.subjects.node_load(&exec_node(i)),
                Duration::from_secs(60),
            )
            .await;
            back.then(|| at.elapsed())
        }
        Component::Dispatcher => {
            site.dispatcher.kill().await;
            tokio::time::sleep(Duration::from_secs(args.service_down)).await;
            site.dispatcher = Site::spawn_dispatcher(&url);
            let back = first_on(
                &p.client,
                p.subjects.dispatch_metrics_all(),
                Duration::from_secs(60),
            )
            .await;
            back.then(|| at.elapsed())
        }
        Component::Server => {
            if let Some(pid) = server_pid(&site.store) {
                let pid_raw = i32::try_from(pid)?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid_raw),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                wait_gone(pid).await;
            }
            tokio::time::sleep(Duration::from_secs(args.server_down)).await;
            let mut tries = 0;
            let server = loop {
                tries += 1;
                match EmbeddedServer::start(ServerOptions {
                    port: Some(site.port),
                    store_dir: Some(site.store.clone()),
                    config_text: Some(SERVER_CONF.to_owned()),
                    ..ServerOptions::default()
                })
                .await
                {
                    Ok(server) => break server,
                    Err(e) if tries < 10 => {
                        eprintln!("restarting nats-server: {e}; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e).context("restart nats-server"),
                }
            };
            // The old handle's process is dead; dropping it reaps it.
            drop(std::mem::replace(&mut p.nats.server, server));
            Some(at.elapsed())
        }
    };
    Ok(Fault {
        component,
        at,
        back_after,
        rss_before_kib,
    })
}

struct Report<'a> {
    args: &'a Args,
    stats: &'a Stats,
    faults: &'a [Fault],
    started: Instant,
    drained: Duration,
    accepted: &'a [String],
    accounting: &'a Accounting,
    rss_start: Vec<(Component, u64)>,
    rss_end: Vec<(Component, u64)>,
    max_rss: HashMap<String, u64>,
    /// The warm-up, the load's length, and the memory samples taken.
    samples: (Duration, Duration, Vec<Sample>),
}

/// The median memory of `component` among samples taken in `[from, to)`,
/// KiB (0 without samples).
fn median_rss(samples: &[Sample], component: Component, (from, to): (Duration, Duration)) -> u64 {
    let mut values: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .filter_map(|(_, rss)| rss.iter().find(|(c, _)| *c == component).map(|(_, k)| *k))
        .collect();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Prints the summary; the exit code says whether every event was
/// accounted for exactly once.
fn report(r: Report<'_>) -> ExitCode {
    let a = r.args;
    let calls = r.stats.calls.lock().map(|c| c.clone()).unwrap_or_default();
    println!(
        "\n## Soak: {:.1} min, a fault every {} s after {} s of warm-up\n",
        a.minutes, a.fault_every, a.warmup
    );
    println!(
        "Load: {} requesters (pause {} ms; 1 in 4 `soak-slow`, 1–3 s), {} events/s (1 in 5 slow), a {}–{} MB input every {} s.\n",
        a.requesters, a.request_pause_ms, a.events_per_s, a.large_min_mb, a.large_max_mb, a.large_every
    );

    // Requests.
    let mut latency = hdrhistogram::Histogram::<u64>::new(3).ok();
    let small: Vec<&Call> = calls.iter().filter(|c| !c.large).collect();
    let large: Vec<&Call> = calls.iter().filter(|c| c.large).collect();
    for c in small.iter().filter(|c| c.failure.is_none()) {
        if let Some(hist) = latency.as_mut() {
            let _ = hist.record(c.latency.as_millis() as u64);
        }
    }
    println!("### Requests\n");
    println!("| kind | sent | ok | failed | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    if let Some(hist) = &latency {
        println!(
            "| small (quick + slow) | {} | {} | {} | {:.0} | {:.0} | {} |",
            small.len(),
            hist.len(),
            small.len() as u64 - hist.len(),
            percentile(hist, 0.5),
            percentile(hist, 0.99),
            hist.max()
        );
    }
    let large_ok: Vec<&&Call> = large.iter().filter(|c| c.failure.is_none()).collect();
    let mut large_ms: Vec<u128> = large_ok.iter().map(|c| c.latency.as_millis()).collect();
    large_ms.sort_unstable();
    println!(
        "| large input (upload + invocation) | {} | {} | {} | {} | {} | {} |",
        large.len(),
        large_ok.len(),
        large.len() - large_ok.len(),
        large_ms
            .get(large_ms.len() / 2)
            .map_or("—".to_owned(), |v| v.to_string()),
        large_ms
            .get((large_ms.len() * 99 / 100).min(large_ms.len().saturating_sub(1)))
            .map_or("—".to_owned(), |v| v.to_string()),
        large_ms.last().map_or("—".to_owned(), |v| v.to_string()),
    );
    println!(
        "\n{} MB of large inputs read in full.",
        r.stats.large_bytes.load(Ordering::Relaxed) / MB
    );

    // Faults: a request is counted under the first fault that happened
    // while it was in flight, else under the last one before it started.
    println!("\n### Faults and the requests that failed in their window\n");
    println!("A request is counted under the first fault while it was in flight, else under the last fault before it.\n");
    println!("| # | at s | killed | RSS before MiB | back after s | requests ended | failed | why (count) |");
    println!("|---:|---:|---|---:|---:|---:|---:|---|");
    let window_of = |c: &Call| {
        r.faults
            .iter()
            .position(|f| c.started <= f.at && f.at <= c.ended)
            .or_else(|| r.faults.iter().rposition(|f| f.at <= c.started))
    };
    let mut windows: Vec<(usize, BTreeMap<String, u64>)> =
        vec![(0, BTreeMap::new()); r.faults.len() + 1];
    for c in &calls {
        let w = window_of(c).map_or(0, |i| i + 1);
        windows[w].0 += 1;
        if let Some(why) = &c.failure {
            let kind = if c.large { "large: " } else { "" };
            *windows[w].1.entry(format!("{kind}{why}")).or_default() += 1;
        }
    }
    let why_of = |reasons: &BTreeMap<String, u64>| {
        if reasons.is_empty() {
            "—".to_owned()
        } else {
            reasons
                .iter()
                .map(|(why, n)| format!("{why} ({n})"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    let (ended, reasons) = &windows[0];
    println!(
        "| – | 0 | (warm-up, no fault) | | | {ended} | {} | {} |",
        reasons.values().sum::<u64>(),
        why_of(reasons)
    );
    for (i, f) in r.faults.iter().enumerate() {
        let (ended, reasons) = &windows[i + 1];
        println!(
            "| {} | {:.0} | {} | {} | {} | {ended} | {} | {} |",
            i + 1,
            f.at.duration_since(r.started).as_secs_f64(),
            f.component.name(),
            mib(f.rss_before_kib),
            f.back_after
                .map_or("not back in 60 s".to_owned(), |d| format!(
                    "{:.1}",
                    d.as_secs_f64()
                )),
            reasons.values().sum::<u64>(),
            why_of(reasons)
        );
    }

    // Memory.
    println!("\n### Resident memory (VmRSS)\n");
    println!("Each killed component is a new process after its restart: its end figure is of its last incarnation.\n");
    println!("Medians: of the samples (2 a second) in the minute after the warm-up and in the load's last minute.\n");
    println!("| service | after warm-up MiB | at end of load MiB | growth | median, first minute MiB | median, last minute MiB | growth of medians | largest sampled MiB | largest before a kill MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (warmup, total, samples) = &r.samples;
    let minute = Duration::from_secs(60);
    let growth_of = |start: u64, end: u64| {
        if start > 0 {
            format!("{:+.0} %", (end as f64 / start as f64 - 1.0) * 100.0)
        } else {
            "—".to_owned()
        }
    };
    for (c, start) in &r.rss_start {
        let end = r
            .rss_end
            .iter()
            .find(|(e, _)| e == c)
            .map_or(0, |(_, kib)| *kib);
        let first = median_rss(samples, *c, (*warmup, *warmup + minute));
        let last = median_rss(samples, *c, (total.saturating_sub(minute), *total));
        let largest = samples
            .iter()
            .filter_map(|(_, rss)| rss.iter().find(|(e, _)| e == c).map(|(_, k)| *k))
            .max()
            .unwrap_or(0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.name(),
            mib(*start),
            mib(end),
            growth_of(*start, end),
            mib(first),
            mib(last),
            growth_of(first, last),
            mib(largest),
            r.max_rss.get(&c.name()).map_or("—".to_owned(), |k| mib(*k))
        );
    }

    // Events.
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut dead = 0u64;
    let mut dead_why: BTreeMap<String, u64> = BTreeMap::new();
    let seen = r.stats.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut twice = 0u64;
    for id in r.accepted {
        let results = r.accounting.results.get(id).copied().unwrap_or(0);
        let letters = r
            .accounting
            .letters
            .get(id)
            .map_or(&[][..], |l| l.as_slice());
        match (results, letters.len()) {
            (0, 0) => lost.push(id.clone()),
            (0 | 1, 0 | 1) => {}
            _ => duplicated.push(id.clone()),
        }
        if !letters.is_empty() {
            dead += 1;
            for why in letters {
                *dead_why.entry(why.clone()).or_default() += 1;
            }
        }
        let runs = seen
            .get(id)
            .map_or(0, |s| s.iter().filter(|m| !m.starts_with("error")).count());
        if runs > 1 {
            twice += 1;
        }
    }
    let refused = r
        .stats
        .refused
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    println!("\n### Events\n");
    println!("| sent | accepted by JetStream | not accepted | one result | dead-lettered | lost | duplicated | runs done twice | drain after load s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {dead} | {} | {} | {twice} ({:.2} %) | {:.0} |",
        r.stats.events_sent.load(Ordering::Relaxed),
        r.accepted.len(),
        refused.values().sum::<u64>(),
        r.accepted
            .iter()
            .filter(|id| r.accounting.results.get(*id) == Some(&1))
            .count(),
        lost.len(),
        duplicated.len(),
        twice as f64 * 100.0 / r.accepted.len().max(1) as f64,
        r.drained.as_secs_f64(),
    );
    if !refused.is_empty() {
        println!(
            "\nNot accepted (publisher gave up after 60 s of tries): {}",
            why_of(&refused)
        );
    }
    if !dead_why.is_empty() {
        println!("\nDead letters: {}", why_of(&dead_why));
    }
    if !lost.is_empty() {
        println!(
            "\nLOST: {}",
            lost.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if !duplicated.is_empty() {
        println!(
            "\nDUPLICATED: {}",
            duplicated
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if lost.is_empty() && duplicated.is_empty() {
        println!("\nEvery accepted event accounted for exactly once.");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
