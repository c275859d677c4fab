//! One bounded run of a function as a child process: input on stdin, output
//! on stdout, a private working directory, a scrubbed environment, a time
//! limit that kills the whole process group, and an output size cap.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::capture::{Captured, StderrCapture, TAIL_BYTES};
use crate::jail::{Jail, LimitHit};

/// Longest line of stderr quoted in a one-line failure description.
const SUMMARY_LINE_BYTES: usize = 300;
/// Bytes read at a time from an input file fed to a run's stdin.
const INPUT_READ: usize = 1 << 20;

/// What to run and within which bounds.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Working directory (private to this run).
    pub cwd: PathBuf,
    /// The complete environment: nothing of the caller's is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// What is written to stdin, which is then closed.
    pub input: RunInput,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Most bytes of stdout kept in memory.
    pub max_output: usize,
    /// Where stdout over `max_output` spills, and how much it may hold;
    /// `None`: over `max_output` is too large.
    pub spill: Option<(PathBuf, u64)>,
    /// What confines it.
    pub jail: Jail,
    /// Bytes of stderr kept for the run's log (the last
    /// [`TAIL_BYTES`](crate::capture::TAIL_BYTES) are always kept, for errors).
    pub log_bytes: usize,
}

/// The input of a run.
#[derive(Debug, Clone)]
pub enum RunInput {
    /// Small inputs, from the invocation message.
    Bytes(bytes::Bytes),
    /// Large inputs, streamed from a file (never held in memory).
    File(PathBuf),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// Non-zero exit status or killed by a signal.
    Failed {
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when one killed it.
        signal: Option<i32>,
    },
    /// Ran past the timeout; its process group was killed.
    TimedOut,
    /// Wrote more than `max_output` bytes; its process group was killed.
    OutputTooLarge,
    /// Could not be started.
    SpawnFailed(String),
    /// A handler-mode function raised; the traceback ends its stderr.
    Raised,
    /// A compiled (C, Java, `exec`) handler answered with an error; its
    /// message ends its stderr.
    HandlerFailed,
    /// A handler-mode worker wrote something that is not a frame of the
    /// protocol (why); it was killed and is replaced on the next call.
    BadFrame(String),
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: Exit,
    /// Everything it wrote to stdout (at most `max_output` bytes), unless
    /// it spilled to `stdout_file`.
    pub stdout: Vec<u8>,
    /// The spill file holding all of stdout, when it outgrew `max_output`.
    pub stdout_file: Option<(PathBuf, u64)>,
    /// Its stderr (in handler mode, what the call printed and the
    /// traceback), as far as it was kept.
    pub stderr: Captured,
    /// Wall-clock time from start to end.
    pub duration: Duration,
    /// The limit it hit, when a failure is known to come from one.
    pub limit: Option<LimitHit>,
}

impl RunOutcome {
    /// An outcome without output: a run that could not start or was killed.
    pub(crate) fn empty(exit: Exit, duration: Duration) -> Self {
        Self {
            exit,
            stdout: Vec::new(),
            stdout_file: None,
            stderr: Captured::default(),
            duration,
            limit: None,
        }
    }

    /// A one-line description of a failure, ending with the last line of
    /// stderr (where a traceback names its exception); the whole end of
    /// stderr is [`RunOutcome::failure_detail`].
    pub fn describe_failure(&self, timeout: Duration) -> String {
        let what = match &self.exit {
            Exit::Success => return String::new(),
            _ if self.limit.is_some() => self.limit.map(|l| l.to_string()).unwrap_or_default(),
            Exit::Failed {
                code: Some(code), ..
            } => format!("function exited with status {code}"),
            Exit::Failed {
                signal: Some(sig), ..
            } => format!("function was killed by signal {sig}"),
            Exit::Failed { .. } => "function failed".to_owned(),
            Exit::TimedOut => format!(
                "function exceeded its timeout of {} and was killed",
                humantime_ms(timeout)
            ),
            Exit::OutputTooLarge => "function output exceeds the size limit".to_owned(),
            Exit::SpawnFailed(e) => format!("function could not be started: {e}"),
            Exit::Raised => "handler raised an exception".to_owned(),
            Exit::HandlerFailed => "handler returned an error".to_owned(),
            Exit::BadFrame(why) => {
                format!("handler worker broke the protocol and was replaced: {why}")
            }
        };
        let tail = self.stderr.tail_text(TAIL_BYTES);
        match summary_line(&tail) {
            None => what,
            Some(line) => {
                let mut line = line.to_owned();
                if line.len() > SUMMARY_LINE_BYTES {
                    let mut cut = SUMMARY_LINE_BYTES;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                    line.push('…');
                }
                format!("{what}: {line}")
            }
        }
    }

    /// The end of stderr (at most [`TAIL_BYTES`](crate::capture::TAIL_BYTES),
    /// with its newlines): what a failed run's reply body carries, a
    /// traceback whole.
    pub fn failure_detail(&self) -> String {
        self.stderr.tail_text(TAIL_BYTES)
    }
}

/// The line of `stderr` that best says why a run failed: the last one
/// that says something, outside the boxes between rules (`-----`, `=====`)
/// MPI launchers print after a rank failed, which would otherwise hide the
/// function's own last words; the last line in a box when all are in one.
fn summary_line(stderr: &str) -> Option<&str> {
    let is_rule =
        |l: &str| l.len() >= 10 && (l.chars().all(|c| c == '-') || l.chars().all(|c| c == '='));
    let says = |l: &str| l.chars().any(char::is_alphanumeric);
    let mut in_box = false;
    let mut boxed = None;
    for line in stderr.lines().rev().map(str::trim) {
        if is_rule(line) {
            in_box = !in_box;
        } else if says(line) {
            if !in_box {
                return Some(line);
            }
            boxed = boxed.or(Some(line));
        }
    }
    boxed
}

fn humantime_ms(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Runs `spec` to completion, never longer than its timeout.
pub async fn run(spec: RunSpec) -> RunOutcome {
    let started = Instant::now();
    let mut command = spec
        .jail
        .command(&spec.program, &spec.args, &spec.cwd, &spec.env);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return RunOutcome::empty(
                Exit::SpawnFailed(format!("{}: {e}", spec.program.display())),
                started.elapsed(),
            )
        }
    };
    let group = child.id().map(|id| Pid::from_raw(id as i32));
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(group);
        return RunOutcome::empty(
            Exit::SpawnFailed("no pipes to the child".to_owned()),
            started.elapsed(),
        );
    };
    // Limits go on before the function's first instruction: bwrap's child
    // waits for this byte on stdin.
    let confined = match spec.jail.start(child.id(), &mut stdin).await {
        Ok(confined) => confined,
        Err(e) => {
            kill_group(group);
            return RunOutcome::empty(
                Exit::SpawnFailed(format!("cannot confine the run: {e}")),
                started.elapsed(),
            );
        }
    };
    let input = spec.input.clone();
    let feed = async move {
        // A function that does not read its input closes the pipe: not an error.
        match input {
            RunInput::Bytes(bytes) => {
                let _ = stdin.write_all(&bytes).await;
            }
            RunInput::File(path) => {
                if let Ok(file) = tokio::fs::File::open(&path).await {
                    // Large reads: each read of a tokio file is a trip to
                    // a blocking thread, and `copy`'s own are 8 KiB.
                    let mut file = tokio::io::BufReader::with_capacity(INPUT_READ, file);
                    let _ = tokio::io::copy_buf(&mut file, &mut stdin).await;
                }
            }
        }
        drop(stdin);
    };
    let output = async {
        let out = read_output(stdout, spec.max_output, spec.spill.as_ref()).await;
        if out.is_none() {
            // Over the cap: stop it now rather than at the timeout.
            kill_group(group);
        }
        out
    };
    let exited = async {
        let status = child.wait().await;
        // Once the function exits, whatever it left running goes too, so a
        // background child holding the pipes cannot stall the reply.
        kill_group(group);
        status
    };
    // Outside the timed part: a run that times out keeps what it wrote.
    let mut capture = StderrCapture::new(spec.log_bytes);
    let collect = async {
        let ((), out, (), status) =
            tokio::join!(feed, output, read_stderr(stderr, &mut capture), exited);
        (out, status)
    };
    let result = tokio::time::timeout(spec.timeout, collect).await;
    let stderr = capture.finish();
    // Whatever happened, nothing the function started outlives the run.
    kill_group(group);
    let duration = started.elapsed();
    let outcome = match result {
        Err(_) => {
            let _ = child.wait().await;
            RunOutcome {
                stderr,
                ..RunOutcome::empty(Exit::TimedOut, duration)
            }
        }
        Ok((out, status)) => {
            let exit = match (&out, status) {
                (None, _) => Exit::OutputTooLarge,
                (Some(_), Ok(status)) if status.success() => Exit::Success,
                (Some(_), Ok(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    Exit::Failed {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                (Some(_), Err(e)) => Exit::SpawnFailed(format!("wait: {e}")),
            };
            let (stdout, stdout_file) = match out {
                Some(Output::Memory(bytes)) => (bytes, None),
                Some(Output::Spilled(path, size)) => (Vec::new(), Some((path, size))),
                None => (Vec::new(), None),
            };
            let limit = match exit {
                Exit::Failed { code, signal } => confined.limit_hit(code, signal),
                _ => None,
            };
            RunOutcome {
                exit,
                stdout,
                stdout_file,
                stderr,
                duration,
                limit,
            }
        }
    };
    confined.release();
    outcome
}

fn kill_group(group: Option<Pid>) {
    if let Some(group) = group {
        // ESRCH (group already gone) is the normal case after a clean exit.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// What a run wrote to stdout.
enum Output {
    Memory(Vec<u8>),
    Spilled(PathBuf, u64),
}

/// Reads all of `reader` into memory up to `cap` bytes; past that into the
/// spill file up to its limit; `None` as soon as it is too large.
async fn read_output(
    mut reader: impl AsyncRead + Unpin,
    cap: usize,
    spill: Option<&(PathBuf, u64)>,
) -> Option<Output> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return Some(Output::Memory(out)),
            Ok(n) if out.len() + n <= cap => out.extend_from_slice(&buf[..n]),
            Ok(n) => {
                let (path, limit) = spill?;
                let mut file = tokio::fs::File::create(path).await.ok()?;
                file.write_all(&out).await.ok()?;
                file.write_all(&buf[..n]).await.ok()?;
                let mut size = (out.len() + n) as u64;
                drop(out);
                loop {
                    if size > *limit {
                        return None;
                    }
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            file.write_all(&buf[..n]).await.ok()?;
                            size += n as u64;
                        }
                    }
                }
                file.flush().await.ok()?;
                return Some(Output::Spilled(path.clone(), size));
            }
        }
    }
}

/// Reads all of `reader` into `capture`.
async fn read_stderr(mut reader: impl AsyncRead + Unpin, capture: &mut StderrCapture) {
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => capture.push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, input: &str, timeout_ms: u64) -> RunSpec {
        RunSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            input: RunInput::Bytes(bytes::Bytes::from(input.to_owned())),
            timeout: Duration::from_millis(timeout_ms),
            max_output: 1024,
            spill: None,
            jail: Jail::none(),
            log_bytes: 64 * 1024,
        }
    }

    #[tokio::test]
    async fn input_reaches_stdin_and_output_comes_back() {
        let out = run(sh("tr a-z A-Z", "hello", 5000)).await;
        assert_eq!(out.exit, Exit::Success);
        assert_eq!(out.stdout, b"HELLO");
    }

    #[tokio::test]
    async fn non_zero_exit_keeps_the_stderr_tail() {
        let out = run(sh("echo boom >&2; exit 3", "", 5000)).await;
        assert_eq!(
            out.exit,
            Exit::Failed {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(out.failure_detail(), "boom\n");
        assert_eq!(
            out.describe_failure(Duration::from_secs(1)),
            "function exited with status 3: boom"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        // The grandchild would write the marker after 1.5 s if it survived.
        let script = format!("(sleep 1.5; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let out = run(sh(&script, "", 300)).await;
        assert_eq!(out.exit, Exit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1800)).await;
        assert!(!marker.exists(), "a process of the timed-out run survived");
    }

    #[tokio::test]
    async fn a_timed_out_run_keeps_what_it_wrote() {
        let out = run(sh(
            "echo 'step 1 done' >&2; echo 'waiting for the bus' >&2; sleep 30",
            "",
            500,
        ))
        .await;
        assert_eq!(out.exit, Exit::TimedOut);
        assert_eq!(out.failure_detail(), "step 1 done\nwaiting for the bus\n");
        assert!(out
            .describe_failure(Duration::from_millis(500))
            .ends_with("was killed: waiting for the bus"));
    }

    #[tokio::test]
    async fn a_background_child_does_not_hold_the_reply() {
        let started = Instant::now();
        let out = run(sh("sleep 30 & echo done", "", 10_000)).await;
        assert_eq!(out.exit, Exit::Success);
        assert_eq!(out.stdout, b"done\n");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "waited for the background child"
        );
    }

    #[tokio::test]
    async fn output_over_the_cap_is_killed_at_once() {
        let started = Instant::now();
        // Ignores SIGPIPE and keeps writing: only a kill stops it.
        let out = run(sh(
            "trap '' PIPE; while :; do echo xxxxxxxxxxxxxxxx; done 2>/dev/null",
            "",
            10_000,
        ))
        .await;
        assert_eq!(out.exit, Exit::OutputTooLarge);
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "ran until the timeout"
        );
    }

    #[tokio::test]
    async fn output_over_the_cap_is_refused() {
        let out = run(sh("head -c 100000 /dev/zero", "", 5000)).await;
        assert_eq!(out.exit, Exit::OutputTooLarge);
        assert!(out.stdout.is_empty());
    }

    #[tokio::test]
    async fn large_output_spills_to_the_file_up_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stdout");
        let mut spec = sh("head -c 100000 /dev/zero", "", 5000);
        spec.spill = Some((file.clone(), 1 << 20));
        let out = run(spec.clone()).await;
        assert_eq!(out.exit, Exit::Success);
        assert!(out.stdout.is_empty());
        assert_eq!(out.stdout_file, Some((file.clone(), 100_000)));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 100_000);
        spec.spill = Some((file, 50_000));
        assert_eq!(run(spec).await.exit, Exit::OutputTooLarge);
    }

    #[tokio::test]
    async fn environment_is_scrubbed() {
        std::env::set_var("COMFAAS_TEST_SECRET", "hunter2");
        let out = run(sh("env", "", 5000)).await;
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(!env.contains("hunter2"), "{env}");
        assert!(env.contains("PATH=/usr/bin:/bin"));
    }

    #[tokio::test]
    async fn a_traceback_reaches_the_detail_whole_and_the_summary_by_its_last_line() {
        let script = "printf 'Traceback (most recent call last):\\n  File \"x\", line 1\\nValueError: bad\\n' >&2; exit 1";
        let out = run(sh(script, "", 5000)).await;
        assert_eq!(
            out.failure_detail(),
            "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: bad\n"
        );
        assert_eq!(
            out.describe_failure(Duration::from_secs(1)),
            "function exited with status 1: ValueError: bad"
        );
    }

    #[tokio::test]
    async fn the_summary_skips_rules_and_blank_lines() {
        let out = run(sh("printf 'rank 1: bad input\\n\\n' >&2; exit 2", "", 5000)).await;
        assert_eq!(
            out.describe_failure(Duration::from_secs(1)),
            "function exited with status 2: rank 1: bad input"
        );
        let rule = "-".repeat(74);
        let mpirun = format!(
            "pi: got 3 bytes, not points\n{rule}\nPrimary job terminated normally\n{rule}\n\
             {rule}\nmpirun detected that one or more processes exited\n\n  Exit code:    2\n{rule}\n"
        );
        assert_eq!(summary_line(&mpirun), Some("pi: got 3 bytes, not points"));
        assert_eq!(
            summary_line(&format!("{rule}\nonly boxed\n{rule}\n")),
            Some("only boxed")
        );
        assert_eq!(summary_line("\n--\n"), None);
    }

    #[tokio::test]
    async fn a_stderr_flood_is_bounded_and_marked() {
        let out = run(sh(
            "head -c 10000000 /dev/zero | tr '\\0' 'x' >&2; echo last >&2; exit 2",
            "",
            20_000,
        ))
        .await;
        assert_eq!(out.stderr.skipped, 10_000_005 - 64 * 1024);
        let log = out.stderr.log(64 * 1024);
        assert!(log.len() < 64 * 1024 + 100);
        let text = String::from_utf8_lossy(&log);
        assert!(text.contains("[comfaas: log truncated, "), "marker");
        assert!(text.ends_with("last\n"));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_failure() {
        let mut spec = sh("", "", 1000);
        spec.program = "/nonexistent/python".into();
        let out = run(spec).await;
        assert!(matches!(out.exit, Exit::SpawnFailed(ref e) if e.contains("/nonexistent/python")));
    }
}
