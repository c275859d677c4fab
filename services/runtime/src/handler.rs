//! Handler mode: warm workers that keep the function loaded and serve many
//! invocations over a framed pipe, instead of a new process per call. A
//! Python worker is [`WORKER_SOURCE`] importing the entry; a C, Java or
//! `exec` worker is the function's own program, speaking the protocol
//! through the runtime's helper ([`crate::sdk`]) or by itself.
//!
//! Frames, both ways on the worker's stdin/stdout: a request is a 4-byte
//! big-endian length and the input; an answer is one status byte (0 ok,
//! 1 the handler failed, 2 ready), a 4-byte big-endian length and the
//! output (or the error). Whatever the function prints goes to stderr;
//! after each call the worker writes [`CALL_END`] there, so the executor
//! knows which bytes of the shared stderr pipe belong to which call. A
//! worker that breaks these rules (another status byte, a ready in answer
//! to a call, an output over the limit) is killed, its call answered with
//! the reason, and the next call gets a new worker.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use comfaas_schemas::Runtime;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

use crate::capture::{Captured, StderrCapture, TAIL_BYTES};
use crate::jail::{Confined, Jail, LimitHit};
use crate::process::{Exit, RunOutcome};

/// What the worker writes to stderr after each call: everything before it
/// was printed by that call. NUL bytes, so no text a function prints is
/// mistaken for it.
pub const CALL_END: &[u8] = b"\x00comfaas-call-end\x00";

/// How long stderr is still read after an answer that came without its
/// [`CALL_END`] (a worker that died mid-call: its last words).
const CALL_END_WAIT: Duration = Duration::from_secs(1);

/// Bytes of a worker's stderr quoted when it fails to start.
const START_ERROR_BYTES: usize = 4096;

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

CALL_END = b"\x00comfaas-call-end\x00"
TRACEBACK_BYTES = 16384


def read_exact(stream, n):
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def write_frame(stream, status, data):
    # What the call printed is in the stderr pipe, closed by the marker,
    # before its answer: the executor reads them in that order.
    try:
        sys.stderr.flush()
        sys.__stderr__.flush()
    except Exception:
        pass
    os.write(2, CALL_END)
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
    proto_out.write(struct.pack(">BI", 2, 5) + b"ready")
    proto_out.flush()
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
            tb = traceback.format_exc().encode("utf-8", "replace")
            write_frame(proto_out, 1, tb[-TRACEBACK_BYTES:])


if __name__ == "__main__":
    sys.exit(main())
"#;

/// How long a worker may take at deploy to load its function and say it
/// is ready (a worker started for a call is bounded by the call's timeout).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes an error frame (a traceback, a handler's message) may hold,
/// whatever the output limit.
const ERROR_FRAME_BYTES: usize = 64 * 1024;

/// Bytes a ready frame may hold.
const READY_FRAME_BYTES: usize = 1024;

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
    #[error("worker did not start ({why}): {stderr}")]
    NotReady {
        /// What it did instead of saying ready.
        why: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// It did not say ready within this time.
    #[error("worker did not say ready within {}s", .0.as_secs_f64())]
    SlowStart(Duration),
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The function's runtime: a Python handler raises, others return an
    /// error.
    pub runtime: Runtime,
    /// The venv's python, or the function's program.
    pub program: PathBuf,
    /// Its arguments (flags, the worker script, the entry).
    pub args: Vec<OsString>,
    /// The complete environment (HOME and TMPDIR are set per worker).
    pub env: Vec<(OsString, OsString)>,
    /// Where each worker gets a private working directory.
    pub work_root: PathBuf,
    /// What confines each worker (its directory is added writable).
    pub jail: Jail,
    /// How long a worker started at deploy may take to say ready
    /// ([`START_TIMEOUT`] unless a test needs less).
    pub start_timeout: Duration,
}

/// One frame a worker wrote.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// Status 0: the output.
    Output(Vec<u8>),
    /// Status 1: the handler failed; the traceback or message.
    Failed(Vec<u8>),
    /// Status 2: loaded and waiting for calls.
    Ready,
    /// An output frame longer than the limit (not read).
    TooLarge,
    /// Not a frame of the protocol: why.
    Bad(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its stderr, read while it starts and while it serves a call, in the
    /// task waiting for its answer (no hand-off to another task on the
    /// reply path). What it writes between calls waits in the pipe and is
    /// counted to the next call.
    stderr: ChildStderr,
    /// Bytes read from stderr not given to a capture yet: the start of a
    /// marker split across reads, or what followed a marker.
    pending: Vec<u8>,
    dir: PathBuf,
    confined: Option<Confined>,
}

impl Worker {
    fn group(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }

    async fn send(&mut self, input: &[u8]) -> std::io::Result<()> {
        // One write for a small input: one wake-up of the worker, not two.
        if input.len() <= 64 * 1024 {
            let mut frame = Vec::with_capacity(4 + input.len());
            frame.extend_from_slice(&(input.len() as u32).to_be_bytes());
            frame.extend_from_slice(input);
            self.stdin.write_all(&frame).await?;
        } else {
            self.stdin.write_u32(input.len() as u32).await?;
            self.stdin.write_all(input).await?;
        }
        self.stdin.flush().await
    }

    /// The next answer frame (data of at most `max` bytes, else `None`),
    /// reading stderr into `capture` meanwhile, up to the call's
    /// [`CALL_END`]. The worker writes the marker before the frame, so it
    /// is normally read first; when the frame comes without it (a worker
    /// that died, or at start, when there is none), stderr is read for at
    /// most `settle` more.
    async fn read_frame_capturing(
        &mut self,
        max: usize,
        capture: &mut StderrCapture,
        settle: Duration,
    ) -> std::io::Result<Frame> {
        let read = read_frame(&mut self.stdout, max);
        let drain = drain_stderr(&mut self.stderr, &mut self.pending, capture);
        tokio::pin!(read, drain);
        let mut drained = false;
        let frame = loop {
            tokio::select! {
                frame = &mut read => break frame,
                () = &mut drain, if !drained => drained = true,
            }
        };
        if !drained && !settle.is_zero() {
            let _ = tokio::time::timeout(settle, &mut drain).await;
        }
        frame
    }

    /// Reads what is left of stderr (a worker that exited) for at most
    /// `wait` into `capture`.
    async fn drain_rest(&mut self, capture: &mut StderrCapture, wait: Duration) {
        let drain = drain_stderr(&mut self.stderr, &mut self.pending, capture);
        let _ = tokio::time::timeout(wait, drain).await;
    }
}

async fn read_frame(stdout: &mut BufReader<ChildStdout>, max: usize) -> std::io::Result<Frame> {
    let status = stdout.read_u8().await?;
    if status > 2 {
        // Most likely the function printed to stdout: say what it began with.
        let mut start = vec![status];
        let mut more = [0u8; 15];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), stdout.read(&mut more)).await
        {
            start.extend_from_slice(&more[..n]);
        }
        return Ok(Frame::Bad(format!(
            "status byte {status} is none of 0 (ok), 1 (error), 2 (ready); its stdout began {:?} \
             (a handler must not print to stdout)",
            String::from_utf8_lossy(&start)
        )));
    }
    let len = stdout.read_u32().await? as usize;
    let limit = match status {
        0 => max,
        1 => ERROR_FRAME_BYTES.max(max),
        _ => READY_FRAME_BYTES,
    };
    if len > limit {
        return Ok(match status {
            0 => Frame::TooLarge,
            1 => Frame::Bad(format!("an error frame of {len} bytes (at most {limit})")),
            _ => Frame::Bad(format!("a ready frame of {len} bytes (at most {limit})")),
        });
    }
    let mut data = vec![0u8; len];
    stdout.read_exact(&mut data).await?;
    Ok(match status {
        0 => Frame::Output(data),
        1 => Frame::Failed(data),
        _ => Frame::Ready,
    })
}

/// Reads `stderr` into `capture` until a [`CALL_END`] (what follows it
/// stays in `pending`) or the end of the pipe. Cancel-safe: bytes read are
/// in `pending` or `capture`, never lost.
async fn drain_stderr(
    stderr: &mut ChildStderr,
    pending: &mut Vec<u8>,
    capture: &mut StderrCapture,
) {
    loop {
        if let Some(at) = find(pending, CALL_END) {
            capture.push(&pending[..at]);
            pending.drain(..at + CALL_END.len());
            return;
        }
        // A marker may be split across reads: its start waits for the rest.
        let flush = pending.len() - marker_prefix_len(pending);
        capture.push(&pending[..flush]);
        pending.drain(..flush);
        // Read straight into `pending`'s spare room: no buffer per call.
        pending.reserve(8 * 1024);
        match stderr.read_buf(pending).await {
            Ok(0) | Err(_) => {
                capture.push(pending);
                pending.clear();
                return;
            }
            Ok(_) => {}
        }
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
    /// Starts `size` workers and waits until each has loaded the function
    /// (within the spec's `start_timeout`); an import error is returned
    /// with the worker's stderr.
    pub async fn start(spec: WorkerSpec, size: u32) -> Result<Arc<Self>, WorkerError> {
        let pool = Arc::new(Self {
            spec,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1) as usize),
        });
        for _ in 0..size.max(1) {
            let worker = pool.spawn(pool.spec.start_timeout).await?;
            pool.release(worker);
        }
        Ok(pool)
    }

    /// A new worker, once it said ready within `start_timeout`.
    async fn spawn(&self, start_timeout: Duration) -> Result<Worker, WorkerError> {
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
        let pid = child.id();
        let mut worker = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr,
            pending: Vec::new(),
            dir,
            confined: None,
        };
        // Sandboxed once, at start: its calls cost nothing more.
        worker.confined = Some(
            jail.start(pid, &mut worker.stdin)
                .await
                .map_err(WorkerError::Confine)?,
        );
        // What it prints while importing is read (so a chatty import
        // cannot fill the pipe) and kept for the error if it fails.
        let mut capture = StderrCapture::new(0);
        let ready = worker.read_frame_capturing(READY_FRAME_BYTES, &mut capture, Duration::ZERO);
        let why = match tokio::time::timeout(start_timeout, ready).await {
            Ok(Ok(Frame::Ready)) => return Ok(worker),
            Ok(Err(_)) => "it exited before saying ready".to_owned(),
            Ok(Ok(Frame::Bad(why))) => format!("its first frame is not ready: {why}"),
            Ok(Ok(_)) => "its first frame is an answer, not ready".to_owned(),
            Err(_) => return Err(WorkerError::SlowStart(start_timeout)),
        };
        // Give stderr a moment to arrive: it holds the reason.
        let _ = tokio::time::timeout(Duration::from_secs(2), worker.child.wait()).await;
        worker.drain_rest(&mut capture, CALL_END_WAIT).await;
        let why = match worker.child.try_wait().ok().flatten() {
            Some(status) if why.starts_with("it exited") => {
                format!("it exited before saying ready, {status}")
            }
            _ => why,
        };
        Err(WorkerError::NotReady {
            why,
            stderr: capture
                .finish()
                .tail_text(START_ERROR_BYTES)
                .trim()
                .to_owned(),
        })
    }

    fn release(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    /// One invocation on a warm worker; a worker that times out, dies or
    /// floods is killed and replaced on the next call. Waiting for a free
    /// worker counts against the timeout. What the call printed, and its
    /// traceback when it raised, is the outcome's stderr, of which
    /// `log_bytes` are kept for the log.
    pub async fn call(
        &self,
        input: Bytes,
        timeout: Duration,
        max_output: usize,
        log_bytes: usize,
    ) -> RunOutcome {
        let started = Instant::now();
        // Outside the timed part: a call that times out keeps what it printed.
        let mut capture = StderrCapture::new(log_bytes);
        let exchange = self.exchange(input, max_output, &mut capture);
        let (exit, stdout, stderr, limit) = match tokio::time::timeout(timeout, exchange).await {
            // Dropping the exchange drops its worker, which kills its group.
            Err(_) => (Exit::TimedOut, Vec::new(), capture.finish(), None),
            Ok(done) => done,
        };
        RunOutcome {
            exit,
            stdout,
            stdout_file: None,
            stderr,
            duration: started.elapsed(),
            limit,
        }
    }

    async fn exchange(
        &self,
        input: Bytes,
        max_output: usize,
        capture: &mut StderrCapture,
    ) -> (Exit, Vec<u8>, Captured, Option<LimitHit>) {
        let Ok(_permit) = self.permits.acquire().await else {
            return (
                Exit::SpawnFailed("pool closed".to_owned()),
                Vec::new(),
                Captured::default(),
                None,
            );
        };
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut worker = match idle {
            Some(worker) => worker,
            // Also bounded by the call's timeout, around this exchange.
            None => match self.spawn(self.spec.start_timeout).await {
                Ok(worker) => worker,
                Err(e) => {
                    return (
                        Exit::SpawnFailed(e.to_string()),
                        Vec::new(),
                        Captured::default(),
                        None,
                    )
                }
            },
        };
        if worker.send(&input).await.is_err() {
            // It died while idle; nothing was consumed: one fresh worker.
            drop(worker);
            worker = match self.spawn(self.spec.start_timeout).await {
                Ok(worker) => worker,
                Err(e) => {
                    return (
                        Exit::SpawnFailed(e.to_string()),
                        Vec::new(),
                        Captured::default(),
                        None,
                    )
                }
            };
            if let Err(e) = worker.send(&input).await {
                worker.drain_rest(capture, CALL_END_WAIT).await;
                return (
                    Exit::SpawnFailed(format!("worker closed its input: {e}")),
                    Vec::new(),
                    std::mem::take(capture).finish(),
                    None,
                );
            }
        }
        let frame = worker
            .read_frame_capturing(max_output, capture, CALL_END_WAIT)
            .await;
        match frame {
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
                    std::mem::take(capture).finish(),
                    limit,
                )
            }
            Ok(Frame::TooLarge) => (
                Exit::OutputTooLarge,
                Vec::new(),
                std::mem::take(capture).finish(),
                None,
            ),
            Ok(Frame::Bad(why)) => (
                Exit::BadFrame(why),
                Vec::new(),
                std::mem::take(capture).finish(),
                None,
            ),
            Ok(Frame::Ready) => (
                Exit::BadFrame("it answered a call with a ready frame".to_owned()),
                Vec::new(),
                std::mem::take(capture).finish(),
                None,
            ),
            Ok(Frame::Output(output)) => {
                self.release(worker);
                (
                    Exit::Success,
                    output,
                    std::mem::take(capture).finish(),
                    None,
                )
            }
            Ok(Frame::Failed(traceback)) => {
                // The traceback comes in the frame, after what the call
                // printed: the log and the error read as Python prints them.
                self.release(worker);
                let mut traceback = traceback;
                if !traceback.ends_with(b"\n") {
                    traceback.push(b'\n');
                }
                let stderr = with_traceback(std::mem::take(capture).finish(), &traceback);
                let exit = match self.spec.runtime {
                    Runtime::Python => Exit::Raised,
                    _ => Exit::HandlerFailed,
                };
                (exit, Vec::new(), stderr, None)
            }
        }
        // A worker not released above is dropped: its group is killed.
    }
}

/// `stderr` with `traceback` appended, as if the call had printed it.
fn with_traceback(stderr: Captured, traceback: &[u8]) -> Captured {
    // The head is the budget's start; the traceback belongs at the end.
    let mut tail = stderr.tail;
    tail.extend_from_slice(traceback);
    let over = tail.len().saturating_sub(TAIL_BYTES);
    tail.drain(..over);
    Captured {
        skipped: stderr.skipped + over as u64,
        head: stderr.head,
        tail,
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest end of `bytes` that begins [`CALL_END`].
fn marker_prefix_len(bytes: &[u8]) -> usize {
    (1..CALL_END.len())
        .rev()
        .find(|&k| bytes.len() >= k && bytes[bytes.len() - k..] == CALL_END[..k])
        .unwrap_or(0)
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
    fn a_marker_split_across_reads_is_held_back() {
        assert_eq!(marker_prefix_len(b"abc"), 0);
        assert_eq!(marker_prefix_len(b"abc\x00"), 1);
        assert_eq!(marker_prefix_len(b"abc\x00comfaas-c"), 10);
        assert_eq!(find(b"xx\x00comfaas-call-end\x00yy", CALL_END), Some(2));
        assert!(WORKER_SOURCE.contains(r#"CALL_END = b"\x00comfaas-call-end\x00""#));
    }

    #[test]
    fn a_traceback_ends_the_calls_stderr() {
        let printed = Captured::of(b"printed\n");
        let both = with_traceback(printed, b"Traceback\nValueError: x\n");
        assert_eq!(
            both.tail_text(TAIL_BYTES),
            "printed\nTraceback\nValueError: x\n"
        );
        let big = with_traceback(Captured::of(&[b'p'; TAIL_BYTES]), b"Traceback\n");
        assert_eq!(big.tail.len(), TAIL_BYTES);
        assert_eq!(big.skipped, 10);
        assert!(big.tail.ends_with(b"Traceback\n"));
    }

    /// A worker of `script` (Python, unconfined: the tests share a flag
    /// file with it) that must say ready within `start`.
    fn spec(script: &str, work_root: &std::path::Path, start: Duration) -> WorkerSpec {
        WorkerSpec {
            runtime: Runtime::Exec,
            program: "/usr/bin/python3".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            work_root: work_root.to_owned(),
            jail: Jail::none(),
            start_timeout: start,
        }
    }

    /// Ready unless the flag file exists; input `die` creates it and exits.
    const FLAGGED: &str = r#"
import os, struct, sys, time
flag = os.environ.get("FLAG") or sys.argv[1]
if os.path.exists(flag):
    time.sleep(60)
out = os.fdopen(1, "wb", buffering=0)
out.write(struct.pack(">BI", 2, 5) + b"ready")
while True:
    n = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
    data = sys.stdin.buffer.read(n)
    if data == b"die":
        open(flag, "w").close()
        os._exit(1)
    os.write(2, b"\x00comfaas-call-end\x00")
    out.write(struct.pack(">BI", 0, len(data)) + data)
"#;

    #[tokio::test]
    async fn a_worker_that_never_says_ready_is_an_error_and_the_pool_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let never = spec(
            "import time; time.sleep(60)",
            dir.path(),
            Duration::from_millis(500),
        );
        let err = HandlerPool::start(never, 1).await.unwrap_err();
        assert_eq!(err.to_string(), "worker did not say ready within 0.5s");

        let flag = dir.path().join("flag");
        let mut flagged = spec(FLAGGED, dir.path(), Duration::from_millis(500));
        flagged.args.push(flag.clone().into());
        let pool = HandlerPool::start(flagged, 1).await.unwrap();
        let call = |input: &'static [u8]| {
            pool.call(
                Bytes::from_static(input),
                Duration::from_secs(10),
                1024,
                1024,
            )
        };
        assert_eq!(call(b"a").await.stdout, b"a");
        let died = call(b"die").await;
        assert_eq!(
            died.exit,
            Exit::Failed {
                code: Some(1),
                signal: None
            }
        );
        // Its replacement never says ready: that call says so.
        let stuck = call(b"b").await;
        assert_eq!(
            stuck.exit,
            Exit::SpawnFailed("worker did not say ready within 0.5s".to_owned())
        );
        // Once it can start again, the pool serves.
        std::fs::remove_file(&flag).unwrap();
        let served = call(b"c").await;
        assert_eq!(served.exit, Exit::Success);
        assert_eq!(served.stdout, b"c");
    }

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
