//! One run of an admitted invocation, once it holds a slot: its input
//! (from the message, or a large one from the input cache), the run itself
//! as a child process in a private directory or on a warm handler-mode
//! worker, and an output over the message limit spilled to a file and
//! stored in `comfaas_outputs` under the invocation id.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use comfaas_runtime::process::Exit;
use comfaas_runtime::{Captured, MpiLauncher, RunInput, RunOutcome, RunSpec};
use comfaas_schemas::names::OUTPUTS_BUCKET;
use comfaas_schemas::{Invocation, InvocationError};

use crate::functions::Served;
use crate::inputs::InputCache;

/// Handler mode hands the input over in memory: large inputs are for
/// script mode and MPI, which stream them.
const HANDLER_MAX_INPUT: u64 = 64 << 20;

/// What every run on this node shares.
pub struct Runner {
    /// This node's id, for messages.
    pub node: String,
    /// Where runs get their private directories.
    pub runs_dir: PathBuf,
    /// Largest output sent inside a reply.
    pub max_output: usize,
    /// Largest output a run may write (beyond `max_output` it is stored).
    pub max_output_object_bytes: u64,
    /// How MPI jobs are launched, when this node can.
    pub mpi: Option<MpiLauncher>,
    /// Large inputs.
    pub inputs: Arc<InputCache>,
    /// Large outputs.
    pub outputs: Outputs,
    /// Bytes of a run's stderr kept for its log; 0 when logs are off (what
    /// a failed run's error says).
    pub log_bytes: usize,
}

/// Where outputs too large for a reply go: the object store
/// `comfaas_outputs`, and the JetStream context to ask it for room.
pub struct Outputs {
    /// The JetStream context the store lives in.
    pub js: jetstream::Context,
    /// The store.
    pub store: ObjectStore,
}

/// One admitted invocation and what it runs on.
pub struct Job<'a> {
    /// The invocation.
    pub invocation: &'a Invocation,
    /// The version it runs on.
    pub served: &'a Served,
    /// MPI processes.
    pub procs: u32,
    /// Its time limit.
    pub timeout: Duration,
}

/// A run that happened, successfully or not.
pub struct Ran {
    /// How long the function ran.
    pub duration: Duration,
    /// How long getting its large input took (zero for an inline one).
    pub fetch: Duration,
    /// Its output, or why it failed (one line: the reply header).
    pub output: Result<Output, InvocationError>,
    /// What it wrote to stderr, as far as it was kept: its log, and the
    /// body of its reply when it failed.
    pub stderr: Captured,
}

/// What a successful run produced.
pub struct Output {
    /// The reply body: the output, unless it was stored.
    pub body: Bytes,
    /// The output went to `comfaas_outputs` under the invocation id.
    pub stored: bool,
}

impl Runner {
    /// Runs `job`. An `Err` is a run that could not happen or whose output
    /// could not be kept (for the dispatcher, which may try elsewhere); a
    /// function that ran and failed is an `Ok` with a failed output.
    pub async fn run(&self, job: Job<'_>) -> Result<Ran, InvocationError> {
        let invocation = job.invocation;
        let fetching = std::time::Instant::now();
        let input = match &invocation.input_object {
            None => RunInput::Bytes(Bytes::copy_from_slice(&invocation.input)),
            Some(object) => RunInput::File(self.inputs.get(object).await?),
        };
        let fetch = fetching.elapsed();
        let outcome = match &job.served.pool {
            Some(pool) => {
                let input = match input {
                    RunInput::Bytes(bytes) => bytes,
                    RunInput::File(path) => read_for_handler(&path).await?,
                };
                pool.call(input, job.timeout, self.max_output, self.log_bytes)
                    .await
            }
            None => self.run_process(&job, input).await?,
        };
        Ok(Ran {
            fetch,
            ..self.ran(&job, outcome)
        })
    }

    /// The outcome of a run as the requester sees it.
    fn ran(&self, job: &Job<'_>, outcome: RunOutcome) -> Ran {
        let output = match outcome.exit {
            Exit::Success => Ok(Output {
                stored: outcome.stdout_file.is_some(),
                body: Bytes::from(outcome.stdout),
            }),
            ref exit => {
                let function = &job.invocation.function;
                // The header is one line: the rest is in the body and the log.
                let rest = match (outcome.stderr.is_empty(), self.log_bytes > 0) {
                    (true, _) => String::new(),
                    (false, true) => format!(
                        "; stderr in the reply body and `comfaas logs {function} --id {}`",
                        job.invocation.id
                    ),
                    (false, false) => "; the end of stderr is in the reply body".to_owned(),
                };
                let message = format!(
                    "{} (function `{function}` {} on node {}{rest})",
                    outcome.describe_failure(job.timeout),
                    job.served.version,
                    self.node
                );
                Err(match exit {
                    // A limit named: the function failed within its bounds.
                    _ if outcome.limit.is_some() => InvocationError::function_failed(message),
                    Exit::TimedOut => InvocationError::function_timeout(message),
                    Exit::OutputTooLarge => InvocationError::too_large(message),
                    _ => InvocationError::function_failed(message),
                })
            }
        };
        Ran {
            duration: outcome.duration,
            fetch: Duration::ZERO,
            output,
            stderr: outcome.stderr,
        }
    }

    /// Runs in a private directory of the version's sandbox, removed
    /// afterwards. MPI jobs also get the input as a file, since only
    /// rank 0 has stdin.
    async fn run_process(
        &self,
        job: &Job<'_>,
        input: RunInput,
    ) -> Result<RunOutcome, InvocationError> {
        let node = &self.node;
        let (id, function) = (&job.invocation.id, &job.invocation.function);
        let installation = &job.served.installation;
        let dir = self
            .runs_dir
            .join(uuid::Uuid::new_v4().simple().to_string());
        let mut private = job.served.sandbox.enter(dir, id).await.map_err(|e| {
            InvocationError::no_room(format!("node {node} cannot create a run directory: {e}"))
        })?;
        if installation.runtime.is_mpi() {
            if let Err(e) = private.share_input(&input).await {
                private.remove().await;
                return Err(InvocationError::no_room(format!(
                    "node {node} cannot write the input file: {e}"
                )));
            }
        }
        let (program, args) = installation.command(job.procs, self.mpi.as_ref());
        let outcome = comfaas_runtime::run(RunSpec {
            program,
            args,
            cwd: private.dir().to_owned(),
            env: private.env().to_vec(),
            input,
            timeout: job.timeout,
            max_output: self.max_output,
            spill: Some((private.spill_file(), self.max_output_object_bytes)),
            jail: private.jail().clone(),
            log_bytes: self.log_bytes,
        })
        .await;
        // A large output goes to the object store before its file goes.
        let stored = match &outcome.stdout_file {
            Some((file, size)) if outcome.exit == Exit::Success => {
                self.outputs.store(id, function, file, *size).await
            }
            _ => Ok(()),
        };
        private.remove().await;
        stored.map(|()| outcome)
    }
}

impl Outputs {
    /// Stores the output `file` of `size` bytes as `name`: 507 when the
    /// store has no room for it (asked before the put, to fail fast, and
    /// again after a failed one), 503 when the put failed otherwise.
    async fn store(
        &self,
        name: &str,
        function: &str,
        file: &Path,
        size: u64,
    ) -> Result<(), InvocationError> {
        if let Some(free) = self.free_bytes().await.filter(|free| size > *free) {
            return Err(InvocationError::no_room(format!(
                "cannot store the output of {function}: it has {size} bytes, \
                 {OUTPUTS_BUCKET} has room for {free}"
            )));
        }
        let Err(e) = comfaas_platform::objects::put_file(&self.store, name, file).await else {
            return Ok(());
        };
        let message = format!("cannot store the output of {function}: {e}: {}", e.source);
        match self.free_bytes().await {
            Some(free) if size > free => Err(InvocationError::no_room(message)),
            _ => Err(InvocationError::unavailable(message)),
        }
    }

    /// Room left in the store; `None` when unlimited or unknown.
    async fn free_bytes(&self) -> Option<u64> {
        comfaas_platform::objects::free_bytes(&self.js, OUTPUTS_BUCKET)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!("cannot tell the room left in {OUTPUTS_BUCKET}: {e}");
                None
            })
    }
}

async fn read_for_handler(path: &Path) -> Result<Bytes, InvocationError> {
    let len = tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if len > HANDLER_MAX_INPUT {
        return Err(InvocationError::too_large(format!(
            "handler mode takes inputs up to {HANDLER_MAX_INPUT} bytes, this one has {len}: use script mode"
        )));
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| InvocationError::too_large(format!("cannot read the input: {e}")))
}

#[cfg(test)]
mod tests {
    use comfaas_schemas::ErrorCode;
    use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
    use futures::StreamExt;

    use super::*;

    /// The outputs store of a real server, holding at most `max_bytes`.
    async fn outputs(max_bytes: i64) -> (EmbeddedServer, Outputs) {
        let server = EmbeddedServer::start(ServerOptions::default())
            .await
            .expect("nats-server starts");
        let (js, store) = server
            .object_store(OUTPUTS_BUCKET, max_bytes)
            .await
            .expect("outputs store");
        (server, Outputs { js, store })
    }

    async fn listed(outputs: &Outputs) -> usize {
        outputs.store.list().await.unwrap().count().await
    }

    fn file(dir: &Path, size: usize) -> PathBuf {
        let path = dir.join(format!("out-{size}"));
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        path
    }

    #[tokio::test]
    async fn an_output_that_fits_is_stored() {
        let (_server, outputs) = outputs(-1).await;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(outputs.free_bytes().await, None, "unlimited");
        let path = file(dir.path(), 3 << 20);
        outputs.store("inv-1", "big", &path, 3 << 20).await.unwrap();
        assert_eq!(outputs.store.info("inv-1").await.unwrap().size, 3 << 20);
    }

    #[tokio::test]
    async fn an_output_larger_than_the_room_left_is_507_before_any_put() {
        let (_server, outputs) = outputs(2 << 20).await;
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), 3 << 20);
        let refused = outputs
            .store("inv-1", "big", &path, 3 << 20)
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::InsufficientStorage);
        assert!(
            refused
                .message
                .starts_with("cannot store the output of big"),
            "{refused}"
        );
        assert_eq!(listed(&outputs).await, 0);
        assert_eq!(
            outputs.free_bytes().await,
            Some(2 << 20),
            "nothing was sent"
        );
    }

    #[tokio::test]
    async fn a_put_that_fails_for_room_is_507() {
        // Fits by its size, not with the chunks' subjects and headers.
        let (_server, outputs) = outputs(2 << 20).await;
        let dir = tempfile::tempdir().unwrap();
        let size = (2 << 20) - 16;
        let path = file(dir.path(), size);
        let refused = outputs
            .store("inv-1", "big", &path, size as u64)
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::InsufficientStorage, "{refused}");
        assert!(
            refused
                .message
                .starts_with("cannot store the output of big"),
            "{refused}"
        );
        assert_eq!(listed(&outputs).await, 0);
    }
}
