//! A node killed with SIGKILL in the middle of a run: every process of the
//! run dies with it (script run, warm handler worker, MPI ranks; inside
//! bwrap and with isolation `none`), and the requester hears of the death at once
//! (503 "node … left while running invocation …") although its own
//! timeout is far longer. Then the function is served by the node left.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{header, request, NodeSpec, Platform, Process};

/// Script mode reads the input on stdin, handler mode gets it in `handle`:
/// `quick` answers at once; anything else is a marker the run puts on the
/// command line of a child it starts, then both sleep for ten minutes.
const LINGER: &str = r#"
import subprocess, sys, time

def linger(text):
    if text == "quick":
        return "quick"
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", text])
    time.sleep(600)
    return "woke up"

def handle(data):
    return linger(data.decode())

if __name__ == "__main__":
    print(linger(sys.stdin.read()))
"#;

/// Every rank gets the marker from rank 0 (which alone reads stdin) and
/// lingers as [`LINGER`] does.
const LINGER_MPI: &str = r#"
import subprocess, sys, time
from mpi4py import MPI

comm = MPI.COMM_WORLD
text = comm.bcast(sys.stdin.read() if comm.rank == 0 else None, root=0)
if text == "quick":
    if comm.rank == 0:
        print("quick")
else:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", text])
    time.sleep(600)
"#;

/// What kind of run the victim is killed in.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Script,
    Handler,
    Mpi,
}

/// A process, named by its pid and start time (pids are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    started: u64,
}

/// (ppid, start time, zombie) of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command (which may hold spaces), field 3 onwards.
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let zombie = fields[0] == "Z" || fields[0] == "X";
    Some((fields[1].parse().ok()?, fields[19].parse().ok()?, zombie))
}

/// Every live process descending from `root`.
fn descendants(root: u32) -> Vec<Proc> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, started, zombie) = stat(pid)?;
            (!zombie).then_some((pid, ppid, started))
        })
        .collect();
    let mut found = vec![root];
    let mut out = Vec::new();
    while let Some(parent) = found.pop() {
        for &(pid, ppid, started) in &all {
            if ppid == parent {
                found.push(pid);
                out.push(Proc { pid, started });
            }
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn is_alive(p: Proc) -> bool {
    stat(p.pid).is_some_and(|(_, started, zombie)| started == p.started && !zombie)
}

/// The executor `victim`, as its own process (so it can be killed -9),
/// with isolation `none` when asked.
fn spawn_victim(p: &Platform, unconfined: bool) -> Process {
    let data_dir = p.scratch.path().join("victim");
    let config = p.scratch.path().join("victim.toml");
    let sandbox = if unconfined {
        "[sandbox]\nisolation = \"none\"\n"
    } else {
        ""
    };
    std::fs::write(&config, sandbox).unwrap();
    Process::spawn(
        "comfaas-exec",
        &[
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            p.nats.url(),
            "--node",
            "victim",
            "--tier",
            "edge",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
    )
}

async fn a_killed_node_takes_its_runs_along(kind: Kind, unconfined: bool) {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::cloud("survivor")).await);
    let mut victim = spawn_victim(&p, unconfined);
    let victim_pid = victim.child.id().unwrap();
    let (extra, script, ranks) = match kind {
        Kind::Script => ("", LINGER, 1),
        Kind::Handler => ("mode = \"handler\"", LINGER, 1),
        Kind::Mpi => ("procs = 2", LINGER_MPI, 2),
    };
    let dir = p.function(
        "linger",
        &format!("{extra}\ntimeout = \"120s\""),
        &[("main.py", script)],
    );
    if let Kind::Mpi = kind {
        let manifest = std::fs::read_to_string(dir.join("comfaas.toml")).unwrap();
        let manifest = manifest.replace("runtime = \"python\"", "runtime = \"python-mpi\"");
        std::fs::write(dir.join("comfaas.toml"), manifest).unwrap();
    }
    p.deploy(&dir, &["victim", "survivor"]).await;

    // A request whose own timeout is a minute, run on the victim.
    let marker = format!("linger-{}", uuid::Uuid::new_v4().simple());
    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT, "60s");
    headers.insert(h::PLACEMENT, "node:victim");
    let call = {
        let (client, subject) = (p.device.clone(), p.subjects.invoke("linger"));
        let input = marker.clone().into_bytes();
        tokio::spawn(async move { request(&client, &subject, headers, input.into()).await })
    };
    // The run is under way once its child carries the marker.
    let until = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let procs = descendants(victim_pid);
        let marked = procs
            .iter()
            .filter(|p| cmdline(p.pid).contains(&marker))
            .count();
        if marked == ranks {
            break procs;
        }
        // Answered before it ran there (say, refused): it never will; say why.
        if call.is_finished() {
            let reply = call.await.unwrap();
            panic!("the run never started: answered first, {:?}", reply.headers);
        }
        assert!(Instant::now() < until, "the run never started: {procs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    victim.kill().await;
    let killed = Instant::now();
    let reply = call.await.unwrap();
    assert_eq!(header(&reply, h::STATUS), "error", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::ERROR_CODE), "503", "{:?}", reply.headers);
    let expected = format!(
        "node victim left while running invocation {}",
        header(&reply, h::INVOCATION_ID)
    );
    assert_eq!(header(&reply, h::ERROR), expected, "{:?}", reply.headers);
    eprintln!(
        "{kind:?} run (unconfined: {unconfined}): the requester heard of the kill after {:?}",
        killed.elapsed()
    );

    // Every process the run (or warm worker) had is gone, soon.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<(Proc, String)> = run
            .iter()
            .filter(|p| is_alive(**p))
            .map(|p| (*p, cmdline(p.pid)))
            .collect();
        if left.is_empty() {
            eprintln!(
                "{kind:?} run (unconfined: {unconfined}): its processes were gone {:?} after the kill",
                killed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "processes of the run outlived their executor: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node left serves the function.
    let reply = p.invoke("linger", "quick").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "survivor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_script_run_along() {
    a_killed_node_takes_its_runs_along(Kind::Script, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_handler_workers_along() {
    a_killed_node_takes_its_runs_along(Kind::Handler, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_unconfined_node_takes_its_script_run_along() {
    a_killed_node_takes_its_runs_along(Kind::Script, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_unconfined_node_takes_its_handler_workers_along() {
    a_killed_node_takes_its_runs_along(Kind::Handler, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_mpi_ranks_along() {
    a_killed_node_takes_its_runs_along(Kind::Mpi, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_unconfined_node_takes_its_mpi_ranks_along() {
    a_killed_node_takes_its_runs_along(Kind::Mpi, true).await;
}
