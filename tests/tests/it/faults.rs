//! Delivery under the faults a real site meets, with the real binaries, a
//! file-backed nats-server, a dispatcher and two executors: 300 events at
//! 20/s (every 10th sleeping 3 s), and in each case one fault: an executor
//! killed (-9) mid-run, the dispatcher killed and restarted, nats-server
//! killed and restarted on its store, an executor drained (SIGTERM), one of
//! two dispatchers killed. Each asserts every event has exactly one result
//! in `COMFAAS_RESULTS` (or one dead letter), none lost, none duplicated, and
//! reports the drain time and the runs done twice on stderr; under a
//! dispatcher kill at most 1% of the events run twice. Every run appends a
//! line to a file of the test's (the executors run functions unconfined,
//! `isolation = "none"`, so that a run can write there): runs are counted
//! whether or not their result was ever published.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_platform::registry::Registry;
use comfaas_schemas::names::{self, headers as h, Subjects};
use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
use comfaas_tests::Process;
use futures::StreamExt;

const EVENTS: usize = 300;
const RATE_PER_S: u64 = 20;
/// When the fault strikes, after the first event.
const FAULT_AT: Duration = Duration::from_secs(5);
/// Longest the platform may take to answer every event.
const DRAIN_BOUND: Duration = Duration::from_secs(240);

const WORK: &str = r#"import json, os, sys, time, uuid
event = json.load(sys.stdin)
nonce = uuid.uuid4().hex
if "runs" in event:
    fd = os.open(event["runs"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{event['n']} {nonce}\n".encode())
    os.close(fd)
time.sleep(event.get("sleep", 0))
print(json.dumps({"n": event["n"], "nonce": nonce}))
"#;

/// The fault of one case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillExecutor,
    KillDispatcher,
    KillServer,
    DrainExecutor,
    KillOneOfTwoDispatchers,
}

struct Rig {
    store: tempfile::TempDir,
    scratch: tempfile::TempDir,
    server: Option<EmbeddedServer>,
    port: u16,
    url: String,
    dispatchers: Vec<Process>,
    executors: HashMap<&'static str, Process>,
}

impl Rig {
    async fn start(dispatchers: usize) -> Self {
        let store = tempfile::tempdir().unwrap();
        let server = EmbeddedServer::start(ServerOptions {
            store_dir: Some(store.path().to_path_buf()),
            ..comfaas_tests::server_options("")
        })
        .await
        .unwrap();
        let (port, url) = (server.port(), server.url().to_owned());
        let mut rig = Self {
            store,
            scratch: tempfile::tempdir().unwrap(),
            server: Some(server),
            port,
            url,
            dispatchers: Vec::new(),
            executors: HashMap::new(),
        };
        for i in 0..dispatchers {
            rig.dispatchers.push(rig.dispatcher(i));
        }
        for node in ["edge-a", "edge-b"] {
            let exec = rig.executor(node);
            rig.executors.insert(node, exec);
        }
        rig
    }

    fn dispatcher(&self, i: usize) -> Process {
        self.spawn(
            "comfaas-dispatch",
            &["--nats-url", &self.url, "--id", &format!("d{i}")],
        )
    }

    /// Starts a binary, its log appended to `<scratch>/logs` (shown when a
    /// case fails).
    fn spawn(&self, name: &str, args: &[&str]) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join("logs"))
            .unwrap();
        let child = tokio::process::Command::new(comfaas_tests::binary(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process { child }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("logs")).unwrap_or_default()
    }

    fn executor(&self, node: &str) -> Process {
        let data: PathBuf = self.scratch.path().join(node);
        let config = self.scratch.path().join("exec.toml");
        std::fs::write(&config, "[sandbox]\nisolation = \"none\"\n").unwrap();
        self.spawn(
            "comfaas-exec",
            &[
                "--nats-url",
                &self.url,
                "--node",
                node,
                "--tier",
                "edge",
                "--slots",
                "4",
                "--data-dir",
                &data.to_string_lossy(),
                "--config",
                &config.to_string_lossy(),
            ],
        )
    }

    async fn restart_server(&mut self, down: Duration) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        tokio::time::sleep(down).await;
        self.server = Some(
            EmbeddedServer::start(ServerOptions {
                port: Some(self.port),
                store_dir: Some(self.store.path().to_path_buf()),
                ..comfaas_tests::server_options("")
            })
            .await
            .unwrap(),
        );
    }
}

/// Connects, retrying while the server is away.
async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap()
}

/// Deploys the work function and waits until both nodes serve it.
async fn deploy(rig: &Rig, client: &async_nats::Client) {
    let dir = rig.scratch.path().join("src/work");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"work\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), WORK).unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let registry = Registry::open(&js).await.unwrap();
    comfaas::deploy::deploy_dir(&registry, &dir).await.unwrap();
    // Ready when a request runs on each node.
    for node in ["edge-a", "edge-b"] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
            let reply = client
                .request_with_headers(
                    Subjects::default().invoke("work"),
                    headers,
                    r#"{"n": -1}"#.into(),
                )
                .await;
            if reply
                .as_ref()
                .is_ok_and(|r| comfaas_tests::header(r, h::STATUS) == "ok")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never served: {reply:?}\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Publishes the events at their rate, each retried until JetStream
/// acknowledges it (what a device does across a server restart).
async fn publish_events(client: async_nats::Client, runs: PathBuf) {
    let js = async_nats::jetstream::new(client);
    let subject = Subjects::default().event("work");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_PER_S));
    for n in 0..EVENTS {
        tick.tick().await;
        let sleep = if n % 10 == 9 { 3 } else { 0 };
        let body = serde_json::json!({"n": n, "sleep": sleep, "runs": runs}).to_string();
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(h::MSG_ID, format!("ev-{n}").as_str());
            let sent = js
                .publish_with_headers(subject.clone(), headers, body.clone().into())
                .await;
            let acked = match sent {
                Ok(ack) => matches!(
                    tokio::time::timeout(Duration::from_secs(5), ack).await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            if acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every result and dead letter kept, by the event's `Nats-Msg-Id`.
async fn kept(client: &async_nats::Client) -> (HashMap<String, u32>, HashMap<String, u32>) {
    let js = async_nats::jetstream::new(client.clone());
    let mut counts = Vec::new();
    for (stream, id_header) in [
        (names::RESULTS_STREAM, h::MSG_ID),
        (names::DLQ_STREAM, h::DLQ_MSG_ID),
    ] {
        let mut found: HashMap<String, u32> = HashMap::new();
        if let Ok(mut stream) = js.get_stream(stream).await {
            let state = stream.info().await.unwrap().state.clone();
            if state.messages > 0 {
                for seq in state.first_sequence..=state.last_sequence {
                    if let Ok(message) = stream.get_raw_message(seq).await {
                        let id = message
                            .headers
                            .get(id_header)
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default();
                        if id.starts_with("ev-") {
                            *found.entry(id).or_default() += 1;
                        }
                    }
                }
            }
        }
        counts.push(found);
    }
    let dead = counts.pop().unwrap_or_default();
    let results = counts.pop().unwrap_or_default();
    (results, dead)
}

async fn run_case(fault: Fault) {
    let dispatchers = if fault == Fault::KillOneOfTwoDispatchers {
        2
    } else {
        1
    };
    let mut rig = Rig::start(dispatchers).await;
    let client = connect(&rig.url).await;
    deploy(&rig, &client).await;

    // Every result seen live, for the nonces of runs done twice.
    let nonces: Arc<Mutex<HashMap<u64, HashSet<String>>>> = Arc::default();
    let watcher = {
        let nonces = nonces.clone();
        let mut results = client
            .subscribe(Subjects::default().result("work"))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(result) = results.next().await {
                let Ok(output) = serde_json::from_slice::<serde_json::Value>(&result.payload)
                else {
                    continue;
                };
                if let (Some(n), Some(nonce)) = (output["n"].as_i64(), output["nonce"].as_str()) {
                    if n >= 0 {
                        let mut nonces = nonces.lock().unwrap();
                        nonces.entry(n as u64).or_default().insert(nonce.to_owned());
                    }
                }
            }
        })
    };
    client.flush().await.unwrap();

    let started = Instant::now();
    let runs_file = rig.scratch.path().join("runs.log");
    let publisher = tokio::spawn(publish_events(client.clone(), runs_file.clone()));
    tokio::time::sleep(FAULT_AT).await;
    match fault {
        Fault::KillExecutor => {
            rig.executors.get_mut("edge-b").unwrap().kill().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let again = rig.executor("edge-b");
            rig.executors.insert("edge-b", again);
        }
        Fault::KillDispatcher => {
            rig.dispatchers[0].kill().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            rig.dispatchers[0] = rig.dispatcher(0);
        }
        Fault::KillServer => rig.restart_server(Duration::from_secs(3)).await,
        Fault::DrainExecutor => {
            let pid = rig.executors["edge-b"].child.id().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
        Fault::KillOneOfTwoDispatchers => rig.dispatchers[1].kill().await,
    }
    publisher.await.unwrap();
    let published = started.elapsed();

    // Drained: every event has its result or dead letter.
    let (results, dead) = loop {
        let (results, dead) = kept(&client).await;
        if results.len() + dead.len() >= EVENTS || started.elapsed() > DRAIN_BOUND {
            break (results, dead);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drained = started.elapsed();
    // Anything still on its way would show up as a duplicate now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (results_after, dead_after) = kept(&client).await;
    watcher.abort();

    let missing: Vec<usize> = (0..EVENTS)
        .filter(|n| {
            let id = format!("ev-{n}");
            !results_after.contains_key(&id) && !dead_after.contains_key(&id)
        })
        .collect();
    let duplicated: Vec<(&String, &u32)> = results_after
        .iter()
        .chain(dead_after.iter())
        .filter(|(_, count)| **count > 1)
        .collect();
    let mut runs: HashMap<u64, u32> = HashMap::new();
    for line in std::fs::read_to_string(&runs_file).unwrap().lines() {
        if let Some(n) = line.split(' ').next().and_then(|n| n.parse().ok()) {
            *runs.entry(n).or_default() += 1;
        }
    }
    let twice = runs.values().filter(|count| **count > 1).count();
    // Runs whose result reached a subscriber with another run's output.
    let twice_seen = nonces
        .lock()
        .unwrap()
        .values()
        .filter(|n| n.len() > 1)
        .count();
    eprintln!(
        "fault {fault:?}: {} results, {} dead letters, {} lost, {} duplicated, {twice} of {EVENTS} \
         run twice ({twice_seen} with two results seen); published in {:.1} s, drained in {:.1} s",
        results_after.len(),
        dead_after.len(),
        missing.len(),
        duplicated.len(),
        published.as_secs_f64(),
        drained.as_secs_f64()
    );
    if !missing.is_empty() || !duplicated.is_empty() {
        eprintln!("{}", rig.logs());
    }
    assert!(missing.is_empty(), "{fault:?}: events lost: {missing:?}");
    assert!(
        duplicated.is_empty(),
        "{fault:?}: duplicated: {duplicated:?}"
    );
    assert_eq!(results.len() + dead.len(), EVENTS);
    assert!(
        dead_after.is_empty(),
        "{fault:?}: dead-lettered: {dead_after:?}"
    );
    if matches!(
        fault,
        Fault::KillDispatcher | Fault::KillOneOfTwoDispatchers
    ) {
        assert!(
            twice * 100 <= EVENTS,
            "{fault:?}: {twice} of {EVENTS} events ran twice (more than 1%)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_run_loses_and_duplicates_nothing() {
    run_case(Fault::KillExecutor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_and_restarted_loses_nothing_and_reruns_almost_nothing() {
    run_case(Fault::KillDispatcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_on_its_store_loses_and_duplicates_nothing() {
    run_case(Fault::KillServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_executor_loses_and_duplicates_nothing() {
    run_case(Fault::DrainExecutor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_dispatchers_killed_loses_nothing_and_reruns_almost_nothing() {
    run_case(Fault::KillOneOfTwoDispatchers).await;
}
