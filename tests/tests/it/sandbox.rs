//! A run is a sandbox: a hostile function tries to cross each boundary
//! (another function's files, the credentials, the executor's environment,
//! writing outside its folder, the input cache, a fork bomb, 8 GB of
//! memory, the network, CPU time, a daemon outliving its run) and is
//! refused, with an error naming the limit where one was hit, and the node
//! keeps serving. In script mode, handler mode and MPI.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::InstallState;
use comfaas_tests::{header, NodeSpec, Platform};
use futures::StreamExt;
use serde_json::{json, Value};

/// One file, two modes: script mode reads a JSON request on stdin, handler
/// mode gets it in `handle`; each operation reports what happened.
const HOSTILE: &str = r#"
import json, os, socket, sys, time

def attempt(f):
    try:
        return {"ok": True, "value": f()}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")

def write(path):
    with open(path, "w") as f:
        return f.write("pwned")

def daemon(path):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                try:
                    with open(path, "a") as f:
                        f.write("alive\n")
                except OSError:
                    pass
                time.sleep(0.1)
        os._exit(0)
    os.wait()
    return "started"

def run(req):
    op = req["op"]
    if op == "read":
        return attempt(lambda: read(req["path"]))
    if op == "write":
        return attempt(lambda: write(req["path"]))
    if op == "connect":
        return attempt(lambda: socket.create_connection(("127.0.0.1", req["port"]), 3).close())
    if op == "identity":
        return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "ppid": os.getppid(), "env": dict(os.environ)}
    if op == "fork":
        for _ in range(req["n"]):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        return "forked them all"
    if op == "alloc":
        held = [bytearray(64 << 20) for _ in range(req["gb"] * 16)]
        return len(held)
    if op == "spin":
        while True:
            pass
    if op == "daemon":
        return daemon(req["path"])
    if op == "secret":
        path = os.path.join("secrets", req["name"])
        st = os.stat(path)
        return {"value": read(path), "mode": oct(st.st_mode & 0o777), "uid": st.st_uid,
                "me": os.getuid(), "in_env": any(req["marker"] in v for v in os.environ.values())}
    raise ValueError(op)

def handle(data):
    return run(json.loads(data))

if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.stdin.read()))))
"#;

/// Every rank reports its user, what it reads of its input file, and
/// whether it could write into that file.
const MPI_PROBE: &str = r#"
import hashlib, json, os
from mpi4py import MPI

path = os.environ["COMFAAS_INPUT_FILE"]
data = open(path, "rb").read()
try:
    with open(path, "ab") as f:
        f.write(b"tampered")
    wrote = "written"
except OSError as e:
    wrote = f"{type(e).__name__}: {e}"
comm = MPI.COMM_WORLD
ranks = comm.gather({"uid": os.getuid(), "sha": hashlib.sha256(data).hexdigest(),
                     "size": len(data), "write": wrote}, root=0)
if comm.rank == 0:
    print(json.dumps(ranks))
"#;

const LIMITS: &str = "[limits]\nmemory = \"256MB\"\nprocs = 64\ncpu_time = \"2s\"\n";

fn ok_json(reply: &async_nats::Message) -> Value {
    assert_eq!(
        header(reply, h::STATUS),
        "ok",
        "{:?} {}",
        reply.headers,
        String::from_utf8_lossy(&reply.payload)
    );
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn call(p: &Platform, function: &str, request: Value) -> async_nats::Message {
    p.invoke(function, &request.to_string()).await
}

/// What a refused attempt says; panics if it succeeded.
async fn refused(p: &Platform, function: &str, request: Value) -> String {
    let out = ok_json(&call(p, function, request.clone()).await);
    assert_eq!(out["ok"], false, "{request} was allowed: {out}");
    out["error"].as_str().unwrap().to_owned()
}

/// The node still runs a normal call.
async fn still_serves(p: &Platform) {
    let out = ok_json(&call(p, "victim", json!({"op": "identity"})).await);
    assert!(out["uid"].is_u64(), "{out}");
}

/// The host folder of `function`'s bundle on node `node`.
fn bundle_dir(p: &Platform, node: &str, function: &str) -> PathBuf {
    let versions = p
        .scratch
        .path()
        .join("nodes")
        .join(node)
        .join("functions")
        .join(function);
    let version = std::fs::read_dir(&versions)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    version.path().join("bundle")
}

fn nats_port(p: &Platform) -> u16 {
    p.nats.url().rsplit(':').next().unwrap().parse().unwrap()
}

/// Processes of the host running as `uid`.
fn processes_of(uid: u64) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let status = entry.path().join("status");
        let Ok(text) = std::fs::read_to_string(&status) else {
            continue;
        };
        let real = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse::<u64>().ok());
        if real == Some(uid) {
            found.push(text.lines().next().unwrap_or_default().to_owned());
        }
    }
    found
}

async fn hostile_node() -> Platform {
    hostile_node_with(comfaas_runtime::SandboxConfig::default().uid_base).await
}

/// The hostile node with its function users from `uid_base` (a range of
/// its own keeps other tests' runs out of a count of processes by user).
async fn hostile_node_with(uid_base: u32) -> Platform {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    let mut spec = NodeSpec::edge("edge-1");
    spec.sandbox.uid_base = uid_base;
    drop(p.executor(spec).await);
    let victim = p.function(
        "victim",
        "",
        &[("main.py", HOSTILE), ("secret.txt", "victim's own secret")],
    );
    let hostile = p.function("hostile", LIMITS, &[("main.py", HOSTILE)]);
    let online = p.function("online", "network = true", &[("main.py", HOSTILE)]);
    for dir in [victim, hostile, online] {
        p.deploy(&dir, &["edge-1"]).await;
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_reach_what_is_not_its_own() {
    // nextest runs each test in its own process: this is the executor's.
    std::env::set_var("COMFAAS_TEST_MARKER", "marker-5d1e");
    let p = hostile_node().await;
    let data_dir = p.scratch.path().join("nodes/edge-1");
    let creds = p.scratch.path().join("nodes/edge-1.creds");
    std::fs::write(&creds, "-----BEGIN NATS USER JWT-----\nmarker-5d1e\n").unwrap();

    // Another function's file, by its host path.
    let victim_secret = bundle_dir(&p, "edge-1", "victim").join("secret.txt");
    assert!(victim_secret.is_file());
    let error = refused(&p, "hostile", json!({"op": "read", "path": victim_secret})).await;
    assert!(error.contains("No such file"), "{error}");
    // The credentials file beside the data directory.
    let error = refused(&p, "hostile", json!({"op": "read", "path": creds})).await;
    assert!(error.contains("No such file"), "{error}");
    // The executor's environment, through its parent and by the
    // executor's own pid: neither is the executor in its pid namespace.
    let me = ok_json(&call(&p, "hostile", json!({"op": "identity"})).await);
    for pid in [
        me["ppid"].as_u64().unwrap(),
        1,
        u64::from(std::process::id()),
    ] {
        let path = format!("/proc/{pid}/environ");
        let out = ok_json(&call(&p, "hostile", json!({"op": "read", "path": path})).await);
        assert!(!out.to_string().contains("marker-5d1e"), "{path}: {out}");
    }
    assert!(!me["env"].to_string().contains("marker-5d1e"), "{me}");

    // Writing outside its folder: its own installation, the data directory.
    let own_bundle = me["env"]["COMFAAS_BUNDLE_DIR"].as_str().unwrap().to_owned();
    let error = refused(
        &p,
        "hostile",
        json!({"op": "write", "path": format!("{own_bundle}/main.py")}),
    )
    .await;
    assert!(error.contains("Read-only file system"), "{error}");
    assert_eq!(
        std::fs::read_to_string(bundle_dir(&p, "edge-1", "hostile").join("main.py")).unwrap(),
        HOSTILE
    );
    let planted = data_dir.join("planted");
    let _ = call(&p, "hostile", json!({"op": "write", "path": planted})).await;
    let _ = call(&p, "hostile", json!({"op": "write", "path": victim_secret})).await;
    assert!(
        !planted.exists(),
        "a run wrote into the executor's data directory"
    );
    assert_eq!(
        std::fs::read_to_string(&victim_secret).unwrap(),
        "victim's own secret"
    );

    // Its own user, not the executor's, not another function's.
    let victim = ok_json(&call(&p, "victim", json!({"op": "identity"})).await);
    if nix::unistd::geteuid().is_root() {
        assert_ne!(me["uid"], 0, "{me}");
        assert_ne!(me["uid"], victim["uid"], "two functions share a user");
        assert_eq!(me["groups"], json!([]), "no supplementary groups: {me}");
    }
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hit_are_named_and_the_node_keeps_serving() {
    let p = hostile_node().await;
    let bomb = call(&p, "hostile", json!({"op": "fork", "n": 10_000})).await;
    assert_eq!(header(&bomb, h::ERROR_CODE), "500", "{:?}", bomb.headers);
    let error = header(&bomb, h::ERROR);
    assert!(error.contains("process limit of 64 reached"), "{error}");
    still_serves(&p).await;

    let greedy = call(&p, "hostile", json!({"op": "alloc", "gb": 8})).await;
    let error = header(&greedy, h::ERROR);
    assert!(error.contains("memory limit of 256 MiB reached"), "{error}");
    still_serves(&p).await;

    let spin = call(&p, "hostile", json!({"op": "spin"})).await;
    let error = header(&spin, h::ERROR);
    assert!(error.contains("CPU time limit of 2s reached"), "{error}");
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_is_off_unless_the_manifest_turns_it_on() {
    let p = hostile_node().await;
    let port = nats_port(&p);
    let error = refused(&p, "hostile", json!({"op": "connect", "port": port})).await;
    assert!(error.contains("Connection refused"), "{error}");
    let out = ok_json(&call(&p, "online", json!({"op": "connect", "port": port})).await);
    assert_eq!(out["ok"], true, "{out}");
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_does_not_outlive_its_run() {
    let p = hostile_node_with(250_000).await;
    let me = ok_json(&call(&p, "hostile", json!({"op": "identity"})).await);
    let uid = me["uid"].as_u64().unwrap();
    let proof = p.scratch.path().join("daemon-proof");
    let out = ok_json(&call(&p, "hostile", json!({"op": "daemon", "path": proof})).await);
    assert_eq!(out, "started");
    if uid != u64::from(nix::unistd::geteuid().as_raw()) {
        // Its own user: no process of it may remain once the run is over.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !processes_of(uid).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            processes_of(uid),
            Vec::<String>::new(),
            "the daemon survived"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!proof.exists(), "the daemon wrote on the host");
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_worker_is_sandboxed_too() {
    std::env::set_var("COMFAAS_TEST_MARKER", "marker-77aa");
    let p = hostile_node().await;
    let warm = p.function(
        "warm-hostile",
        &format!("mode = \"handler\"\n{LIMITS}"),
        &[("main.py", HOSTILE)],
    );
    p.deploy(&warm, &["edge-1"]).await;
    let me = ok_json(&call(&p, "warm-hostile", json!({"op": "identity"})).await);
    let victim = ok_json(&call(&p, "victim", json!({"op": "identity"})).await);
    if nix::unistd::geteuid().is_root() {
        assert_ne!(me["uid"], 0);
        assert_ne!(me["uid"], victim["uid"]);
    }
    let victim_secret = bundle_dir(&p, "edge-1", "victim").join("secret.txt");
    let error = refused(
        &p,
        "warm-hostile",
        json!({"op": "read", "path": victim_secret}),
    )
    .await;
    assert!(error.contains("No such file"), "{error}");
    let environ = ok_json(
        &call(
            &p,
            "warm-hostile",
            json!({"op": "read", "path": "/proc/1/environ"}),
        )
        .await,
    );
    assert!(!environ.to_string().contains("marker-77aa"), "{environ}");
    let port = nats_port(&p);
    let error = refused(&p, "warm-hostile", json!({"op": "connect", "port": port})).await;
    assert!(error.contains("Connection refused"), "{error}");
    // A worker over its memory is killed, named, and replaced.
    let greedy = call(&p, "warm-hostile", json!({"op": "alloc", "gb": 8})).await;
    let error = header(&greedy, h::ERROR);
    assert!(error.contains("memory limit of 256 MiB reached"), "{error}");
    let again = ok_json(&call(&p, "warm-hostile", json!({"op": "identity"})).await);
    assert_eq!(again["uid"], me["uid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpi_ranks_run_sandboxed_and_the_input_cache_is_read_only() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let dir = p.function("mpi-probe", "", &[("probe.py", MPI_PROBE)]);
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"mpi-probe\"\nversion = \"1\"\nruntime = \"python-mpi\"\nentry = \"probe.py\"\nprocs = 2\ntimeout = \"60s\"\n",
    )
    .unwrap();
    p.deploy(&dir, &["edge-1"]).await;
    let input = vec![7u8; 300_000];
    let object = p.upload_input(&input).await;
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&input))
    };
    for attempt in 0..2 {
        let mut headers = HeaderMap::new();
        headers.insert(h::INPUT_OBJECT, object.as_str());
        let reply = p.invoke_bytes("mpi-probe", Vec::new(), headers).await;
        let ranks = ok_json(&reply);
        let ranks = ranks.as_array().unwrap();
        assert_eq!(ranks.len(), 2, "{ranks:?}");
        for rank in ranks {
            // Every run, the first one included, sees the original bytes.
            assert_eq!(rank["sha"], expected.as_str(), "run {attempt}: {rank}");
            // Refused twice over: a read-only mount of a file not its own.
            let wrote = rank["write"].as_str().unwrap();
            assert!(
                wrote.contains("Read-only file system") || wrote.contains("Permission denied"),
                "{wrote}"
            );
            if nix::unistd::geteuid().is_root() {
                assert_ne!(rank["uid"], 0, "{rank}");
            }
        }
    }
    let cached: Vec<PathBuf> = std::fs::read_dir(p.scratch.path().join("nodes/edge-1/inputs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1);
    assert_eq!(std::fs::read(&cached[0]).unwrap(), input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_reports_its_sandbox() {
    let p = Platform::start().await;
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("edge-1"))
        .await
        .unwrap();
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let message = tokio::time::timeout(Duration::from_secs(30), loads.next())
        .await
        .unwrap()
        .unwrap();
    let load: comfaas_schemas::NodeLoad = comfaas_schemas::decode(&message.payload).unwrap();
    assert_eq!(load.sandbox.isolation, "bwrap");
    assert!(["v1", "v2", "none"].contains(&load.sandbox.cgroups.as_str()));
    assert_eq!(
        load.sandbox.function_users,
        nix::unistd::geteuid().is_root()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_function_as_a_private_file_only() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::secrets::SecretStore::open_or_create(&js)
        .await
        .unwrap();
    let marker = "s3cr3t-marker-7f1c";
    store.set("API_TOKEN", marker.as_bytes()).await.unwrap();

    // A manifest naming a secret nobody set does not install, and says which.
    let missing = p.function(
        "missing",
        "secrets = [\"NOT_SET\"]",
        &[("main.py", HOSTILE)],
    );
    let deployment = p.deploy(&missing, &[]).await;
    p.wait_state(&deployment, &["edge-1"], InstallState::Failed)
        .await;
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("edge-1"))
        .await
        .unwrap();
    let load: comfaas_schemas::NodeLoad =
        comfaas_schemas::decode(&loads.next().await.unwrap().payload).unwrap();
    let state = load.functions.iter().find(|f| f.name == "missing").unwrap();
    let reason = state.reason.clone().unwrap_or_default();
    assert!(reason.contains("secret `NOT_SET` is not set"), "{reason}");

    let dir = p.function(
        "holder",
        "secrets = [\"API_TOKEN\"]",
        &[("main.py", HOSTILE)],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let out = ok_json(
        &call(
            &p,
            "holder",
            json!({"op": "secret", "name": "API_TOKEN", "marker": marker}),
        )
        .await,
    );
    assert_eq!(out["value"], json!(marker), "{out}");
    assert_eq!(out["mode"], "0o400", "{out}");
    assert_eq!(out["uid"], out["me"], "{out}");
    assert_eq!(out["in_env"], false, "{out}");
}
