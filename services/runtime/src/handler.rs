//! Handler mode: warm Python workers that keep the function's module loaded
//! and serve many invocations over a framed pipe, instead of a new process
//! per call.
//!
//! Frames, both ways on the worker's stdin/stdout: a request is a 4-byte
//! big-endian length and the input; an answer is one status byte (0 ok,
//! 1 the handler raised, 2 ready), a 4-byte big-endian length and the
//! output (or the traceback). Whatever the function prints goes to stderr.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

use crate::jail::{Confined, Jail, LimitHit};
use crate::process::{Exit, RunOutcome, STDERR_TAIL_BYTES};

/// File name of the worker script in a handler function's environment.
pub const WORKER_FILE: &str = "comfaas_worker.py";

/// The worker: imports the entry file and calls its `handle(data)`.
pub const WORKER_SOURCE: &str = r#"# comfaas handler-mode worker (written by the executor; do not edit).
import importlib.util
import json
import os
import struct
import sys
import traceback


def read_exact(stream, n):
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def write_frame(stream, status, data):
    stream.write(struct.pack(">BI", status, len(data)) + data)
    stream.flush()


def main():
    entry = os.path.abspath(sys.argv[1])
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    # The function's own prints must not corrupt the protocol.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path.insert(0, os.path.dirname(entry))
    spec = importlib.util.spec_from_file_location("comfaas_function", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handle = getattr(module, "handle", None)
    if not callable(handle):
        print(f"{entry} defines no handle(data) function", file=sys.stderr)
        return 3
    write_frame(proto_out, 2, b"ready")
    while True:
        header = read_exact(proto_in, 4)
        if header is None:
            return 0
        (n,) = struct.unpack(">I", header)
        data = read_exact(proto_in, n) if n else b""
        if data is None:
            return 0
        try:
            out = handle(data)
            if out is None:
                out = b""
            elif isinstance(out, str):
                out = out.encode()
            elif not isinstance(out, (bytes, bytearray)):
                out = json.dumps(out).encode()
            write_frame(proto_out, 0, bytes(out))
        except Exception:
            write_frame(proto_out, 1, traceback.format_exc()[-2000:].encode())


if __name__ == "__main__":
    sys.exit(main())
"#;

/// How long a worker may take to import its module.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a warm worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its private working directory could not be created.
    #[error("create {}: {source}", .dir.display())]
    WorkDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start a worker: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its limits could not be applied.
    #[error("cannot confine a worker: {0}")]
    Confine(String),
    /// The process has no pipes to speak the protocol on.
    #[error("worker has no pipes")]
    NoPipes,
    /// It exited or answered something else than ready (usually an
    /// import error, in its stderr).
    #[error("worker did not start: {stderr}")]
    NotReady {
        /// The end of its stderr.
        stderr: String,
    },
    /// It did not load the module within this time.
    #[error("worker did not load the module within {}s", .0.as_secs())]
    SlowStart(Duration),
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The venv's python.
    pub program: PathBuf,
    /// Its arguments (flags, the worker script, the entry).
    pub args: Vec<OsString>,
    /// The complete environment (HOME and TMPDIR are set per worker).
    pub env: Vec<(OsString, OsString)>,
    /// Where each worker gets a private working directory.
    pub work_root: PathBuf,
    /// What confines each worker (its directory is added writable).
    pub jail: Jail,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    dir: PathBuf,
    confined: Option<Confined>,
}

impl Worker {
    fn group(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&tail).trim().to_owned()
    }

    async fn send(&mut self, input: &[u8]) -> std::io::Result<()> {
        self.stdin.write_u32(input.len() as u32).await?;
        self.stdin.write_all(input).await?;
        self.stdin.flush().await
    }

    async fn read_frame(&mut self, max: usize) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let status = self.stdout.read_u8().await?;
        let len = self.stdout.read_u32().await? as usize;
        if len > max {
            return Ok(None);
        }
        let mut data = vec![0u8; len];
        self.stdout.read_exact(&mut data).await?;
        Ok(Some((status, data)))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(group) = self.group() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        if let Some(confined) = self.confined.take() {
            confined.release_now();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pool of warm workers for one installed function version.
pub struct HandlerPool {
    spec: WorkerSpec,
    idle: Mutex<Vec<Worker>>,
    permits: Semaphore,
}

impl std::fmt::Debug for HandlerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerPool")
            .field("spec", &self.spec)
            .finish()
    }
}

impl HandlerPool {
    /// Starts `size` workers and waits until each has loaded the module;
    /// an import error is returned with the worker's stderr.
    pub async fn start(spec: WorkerSpec, size: u32) -> Result<Arc<Self>, WorkerError> {
        let pool = Arc::new(Self {
            spec,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1) as usize),
        });
        for _ in 0..size.max(1) {
            let worker = pool.spawn().await?;
            pool.release(worker);
        }
        Ok(pool)
    }

    async fn spawn(&self) -> Result<Worker, WorkerError> {
        let dir = self.spec.work_root.join(format!("worker-{}", uuid_like()));
        let jail = self.spec.jail.for_worker(&dir);
        if let Err(source) = jail.make_private_dir(&dir).await {
            return Err(WorkerError::WorkDir { dir, source });
        }
        let mut env = self.spec.env.clone();
        env.extend([
            ("HOME".into(), dir.clone().into()),
            ("TMPDIR".into(), dir.clone().into()),
        ]);
        let mut command = jail.command(&self.spec.program, &self.spec.args, &dir, &env);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(WorkerError::Spawn)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(WorkerError::NoPipes);
        };
        let tail = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(keep_tail(stderr, tail.clone()));
        let pid = child.id();
        let mut worker = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr: tail,
            dir,
            confined: None,
        };
        // Sandboxed once, at start: its calls cost nothing more.
        worker.confined = Some(
            jail.start(pid, &mut worker.stdin)
                .await
                .map_err(WorkerError::Confine)?,
        );
        match tokio::time::timeout(START_TIMEOUT, worker.read_frame(1024)).await {
            Ok(Ok(Some((2, _)))) => Ok(worker),
            Ok(_) => {
                // Give stderr a moment to arrive: it holds the reason.
                let _ = tokio::time::timeout(Duration::from_secs(2), worker.child.wait()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(WorkerError::NotReady {
                    stderr: worker.stderr_tail(),
                })
            }
            Err(_) => Err(WorkerError::SlowStart(START_TIMEOUT)),
        }
    }

    fn release(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    /// One invocation on a warm worker; a worker that times out, dies or
    /// floods is killed and replaced on the next call. Waiting for a free
    /// worker counts against the timeout.
    pub async fn call(&self, input: Bytes, timeout: Duration, max_output: usize) -> RunOutcome {
        let started = Instant::now();
        let (exit, stdout, stderr_tail, limit) =
            match tokio::time::timeout(timeout, self.exchange(input, max_output)).await {
                // Dropping the exchange drops its worker, which kills its group.
                Err(_) => (Exit::TimedOut, Vec::new(), String::new(), None),
                Ok(done) => done,
            };
        RunOutcome {
            exit,
            stdout,
            stdout_file: None,
            stderr_tail,
            duration: started.elapsed(),
            limit,
        }
    }

    async fn exchange(
        &self,
        input: Bytes,
        max_output: usize,
    ) -> (Exit, Vec<u8>, String, Option<LimitHit>) {
        let Ok(_permit) = self.permits.acquire().await else {
            return (
                Exit::SpawnFailed("pool closed".to_owned()),
                Vec::new(),
                String::new(),
                None,
            );
        };
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut worker = match idle {
            Some(worker) => worker,
            None => match self.spawn().await {
                Ok(worker) => worker,
                Err(e) => {
                    return (
                        Exit::SpawnFailed(e.to_string()),
                        Vec::new(),
                        String::new(),
                        None,
                    )
                }
            },
        };
        // Only this call's stderr belongs in its error.
        if let Ok(mut tail) = worker.stderr.lock() {
            tail.clear();
        }
        if worker.send(&input).await.is_err() {
            // It died while idle; nothing was consumed: one fresh worker.
            drop(worker);
            worker = match self.spawn().await {
                Ok(worker) => worker,
                Err(e) => {
                    return (
                        Exit::SpawnFailed(e.to_string()),
                        Vec::new(),
                        String::new(),
                        None,
                    )
                }
            };
            if let Err(e) = worker.send(&input).await {
                let tail = worker.stderr_tail();
                return (
                    Exit::SpawnFailed(format!("worker closed its input: {e}")),
                    Vec::new(),
                    tail,
                    None,
                );
            }
        }
        match worker.read_frame(max_output).await {
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), worker.child.wait()).await;
                let status = worker.child.try_wait().ok().flatten();
                use std::os::unix::process::ExitStatusExt;
                let (code, signal) = (
                    status.and_then(|s| s.code()),
                    status.and_then(|s| s.signal()),
                );
                let limit = worker
                    .confined
                    .as_ref()
                    .and_then(|c| c.limit_hit(code, signal));
                (
                    Exit::Failed { code, signal },
                    Vec::new(),
                    worker.stderr_tail(),
                    limit,
                )
            }
            Ok(None) => (Exit::OutputTooLarge, Vec::new(), String::new(), None),
            Ok(Some((0, output))) => {
                self.release(worker);
                (Exit::Success, output, String::new(), None)
            }
            Ok(Some((_, traceback))) => {
                self.release(worker);
                (
                    Exit::Raised,
                    Vec::new(),
                    String::from_utf8_lossy(&traceback).into_owned(),
                    None,
                )
            }
        }
        // A worker not released above is dropped: its group is killed.
    }
}

async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut tail) = tail.lock() {
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL_BYTES {
                let cut = tail.len() - STDERR_TAIL_BYTES;
                tail.drain(..cut);
            }
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_script_is_valid_python() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(WORKER_FILE);
        std::fs::write(&file, WORKER_SOURCE).unwrap();
        let status = std::process::Command::new("python3")
            .args(["-m", "py_compile"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
