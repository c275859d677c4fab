//! Taking invocations from the work subject: admission (slots plus a
//! bounded queue, 429 beyond), the run itself, and the reply.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_platform::reply::{self, ReplyMeta};
use comfaas_runtime::process::Exit;
use comfaas_runtime::{RunInput, RunSpec};
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{decode, now_unix_ms, validate_function_name, ErrorCode, Invocation};
use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::functions::{FunctionTable, Lookup};
use crate::ExecConfig;

/// The `PATH` functions see: system tools only, nothing of the executor's.
const RUN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Slots plus a bounded waiting room.
#[derive(Clone)]
pub struct Admission {
    admitted: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    slot_count: u32,
    capacity: u32,
    /// Woken when an invocation is admitted or done.
    changed: Arc<Notify>,
}

/// An admitted invocation, waiting for or holding a slot: its queue place
/// and slot are held until it drops.
pub struct Ticket {
    admitted: Option<OwnedSemaphorePermit>,
    slot: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
    changed: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Free the places first: the load report this wakes counts them.
        self.slot.take();
        self.admitted.take();
        self.changed.notify_one();
    }
}

impl Admission {
    /// `slots` runs at once and `queue` more waiting.
    pub fn new(slots: u32, queue: u32) -> Self {
        let slots = slots.max(1);
        Self {
            admitted: Arc::new(Semaphore::new((slots + queue) as usize)),
            slots: Arc::new(Semaphore::new(slots as usize)),
            slot_count: slots,
            capacity: slots + queue,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Admits one invocation, or `None` when slots and queue are full.
    pub fn try_admit(&self) -> Option<Ticket> {
        let admitted = self.admitted.clone().try_acquire_owned().ok()?;
        self.changed.notify_one();
        Some(Ticket {
            admitted: Some(admitted),
            slot: None,
            slots: self.slots.clone(),
            changed: self.changed.clone(),
        })
    }

    /// Waits until an invocation was admitted or finished since the last
    /// call (returns at once if one was).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// (running, queued) now.
    pub fn counts(&self) -> (u32, u32) {
        let running = self.slot_count - self.slots.available_permits() as u32;
        let admitted = self.capacity - self.admitted.available_permits() as u32;
        (running, admitted.saturating_sub(running))
    }
}

impl Ticket {
    /// Waits for a free slot, held until the ticket drops; `None` if the
    /// slots are closed.
    async fn slot(mut self) -> Option<Ticket> {
        self.slot = Some(self.slots.clone().acquire_owned().await.ok()?);
        self.changed.notify_one();
        Some(self)
    }
}

/// Serves the work subject.
pub struct Worker {
    pub(crate) client: async_nats::Client,
    pub(crate) config: Arc<ExecConfig>,
    pub(crate) table: FunctionTable,
    pub(crate) admission: Admission,
    pub(crate) max_output: usize,
    pub(crate) mpi: Option<comfaas_runtime::MpiLauncher>,
    pub(crate) inputs: Arc<crate::inputs::InputCache>,
    pub(crate) outputs: async_nats::jetstream::object_store::ObjectStore,
}

impl Worker {
    /// Answers every invocation until `shutdown`, then waits for runs under way.
    pub async fn serve(self, mut work: async_nats::Subscriber, shutdown: CancellationToken) {
        let worker = Arc::new(self);
        let mut runs = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = runs.join_next(), if !runs.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!("invocation task failed: {e}");
                    }
                }
                message = work.next() => match message {
                    Some(message) => {
                        runs.spawn(worker.clone().handle(message));
                    }
                    None => break,
                },
            }
        }
        // Work already delivered to us is refused, so dispatchers place it
        // elsewhere instead of waiting for a node that is going.
        let _ = work.unsubscribe().await;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), work.next()).await
        {
            if let Some(reply_to) = message.reply {
                let refusal = worker.error(
                    "",
                    ErrorCode::Unavailable,
                    &format!("node {} is shutting down", worker.config.node),
                );
                publish(&worker.client, reply_to, refusal.headers, refusal.body).await;
            }
        }
        while runs.join_next().await.is_some() {}
    }

    async fn handle(self: Arc<Self>, message: async_nats::Message) {
        let Some(work_reply) = message.reply.clone() else {
            tracing::warn!(subject = %message.subject, "work message without a reply subject dropped");
            return;
        };
        let mut reply = self.answer(&message.payload).await;
        let _held = reply.ticket.take();
        let client = &self.client;
        // A refusal, or no requester to answer directly: the work request's
        // sender gets the reply (and may try another node after a refusal).
        let Some(Ran { function, reply_to }) = reply.ran else {
            publish(client, work_reply, reply.headers, reply.body).await;
            return;
        };
        let Some(reply_to) = reply_to else {
            publish(client, work_reply, reply.headers, reply.body).await;
            return;
        };
        // The outcome of a run goes straight to the requester, saving the
        // dispatcher a relay; then to the result subject; then a headers-only
        // notice tells the dispatcher it is done.
        let mut result_headers = reply.headers.clone();
        result_headers.insert(h::FUNCTION, function.as_str());
        let mut notice = reply.headers.clone();
        notice.insert(h::REPLIED, "true");
        publish(client, reply_to.into(), reply.headers, reply.body.clone()).await;
        let result = self.config.nats.subjects().result(&function);
        publish(client, result.into(), result_headers, reply.body).await;
        publish(client, work_reply, notice, Bytes::new()).await;
    }

    fn meta(&self, invocation_id: &str) -> ReplyMeta {
        ReplyMeta {
            invocation_id: invocation_id.to_owned(),
            node: Some(self.config.node.clone()),
            tier: Some(self.config.tier),
            duration_ms: None,
        }
    }

    /// A refusal before any run: for the dispatcher only.
    fn error(&self, id: &str, code: ErrorCode, message: &str) -> Reply {
        tracing::info!(invocation = id, code = code.as_u16(), "{message}");
        Reply {
            headers: reply::error(code, message, &self.meta(id)),
            body: Bytes::new(),
            ran: None,
            ticket: None,
        }
    }

    /// The reply to one work message.
    async fn answer(&self, payload: &[u8]) -> Reply {
        let node = &self.config.node;
        let invocation: Invocation = match decode(payload) {
            Ok(inv) => inv,
            Err(e) => {
                return self.error(
                    "",
                    ErrorCode::BadRequest,
                    &format!("node {node} got an invalid invocation: {e}"),
                )
            }
        };
        let id = invocation.id.as_str();
        let function = invocation.function.as_str();
        if let Err(reason) = validate_function_name(function) {
            return self.error(id, ErrorCode::BadRequest, &reason);
        }
        let served = match self.table.lookup(function) {
            Lookup::Ready(served) => served,
            Lookup::NotReady(why) => {
                return self.error(
                    id,
                    ErrorCode::Unavailable,
                    &format!("function `{function}` cannot run on node {node}: {why}"),
                )
            }
            Lookup::Unknown => {
                return self.error(
                    id,
                    ErrorCode::NotFound,
                    &format!("function `{function}` is not deployed on node {node}"),
                )
            }
        };
        // The dispatcher fits the count to this node; else the manifest's,
        // a range fitted here (its fewest when even that does not fit).
        let procs = invocation
            .procs
            .or_else(|| {
                served
                    .procs
                    .map(|p| p.fit(self.config.max_procs()).unwrap_or(p.min))
            })
            .unwrap_or(1);
        if procs > self.config.max_procs() {
            return self.error(
                id,
                ErrorCode::Unavailable,
                &format!(
                    "node {node} allows at most {} processes per job, {procs} asked",
                    self.config.max_procs()
                ),
            );
        }
        let Some(ticket) = self.admission.try_admit() else {
            let (running, queued) = self.admission.counts();
            return self.error(
                id,
                ErrorCode::TooManyRequests,
                &format!("node {node} is full: {running} running and {queued} queued"),
            );
        };
        let timeout = invocation
            .timeout_ms
            .map(Duration::from_millis)
            .or(served.timeout)
            .unwrap_or(Duration::from_millis(self.config.default_timeout_ms))
            .min(Duration::from_millis(self.config.max_timeout_ms));
        // Start only while a full run still ends before the deadline: past
        // it the dispatcher has answered 504 and nobody wants this result.
        let wait = invocation.deadline_unix_ms.map(|d| {
            Duration::from_millis(d.saturating_sub(now_unix_ms())).saturating_sub(timeout)
        });
        let slot = match wait {
            Some(wait) => tokio::time::timeout(wait, ticket.slot())
                .await
                .ok()
                .flatten(),
            None => ticket.slot().await,
        };
        let Some(ticket) = slot else {
            return self.error(
                id,
                ErrorCode::NodeTimeout,
                &format!(
                    "invocation could not start on node {node} in time to finish before its deadline"
                ),
            );
        };

        let input = match &invocation.input_object {
            None => RunInput::Bytes(Bytes::copy_from_slice(&invocation.input)),
            Some(object) => match self.inputs.get(object).await {
                Ok(path) => RunInput::File(path),
                Err((code, message)) => return self.error(id, code, &message),
            },
        };
        let outcome = match &served.pool {
            Some(pool) => {
                let input = match input {
                    RunInput::Bytes(bytes) => bytes,
                    RunInput::File(path) => match read_for_handler(&path).await {
                        Ok(bytes) => bytes,
                        Err(message) => return self.error(id, ErrorCode::TooLarge, &message),
                    },
                };
                pool.call(input, timeout, self.max_output).await
            }
            None => {
                let run = RunRequest {
                    id,
                    function,
                    installation: &served.installation,
                    procs,
                    input,
                    timeout,
                };
                match self.run_process(run).await {
                    Ok(outcome) => outcome,
                    Err((code, message)) => return self.error(id, code, &message),
                }
            }
        };
        let mut meta = self.meta(id);
        meta.duration_ms = Some(outcome.duration.as_millis() as u64);
        let ran = Some(Ran {
            function: function.to_owned(),
            reply_to: invocation.reply_to.clone(),
        });
        let code = match outcome.exit {
            Exit::Success => {
                let mut headers = reply::ok(&meta);
                if outcome.stdout_file.is_some() {
                    // Stored under the invocation id by run_process.
                    headers.insert(h::OUTPUT_OBJECT, reply::header_text(id).as_str());
                }
                return Reply {
                    headers,
                    body: Bytes::from(outcome.stdout),
                    ran,
                    ticket: Some(ticket),
                };
            }
            Exit::TimedOut => ErrorCode::FunctionTimeout,
            Exit::OutputTooLarge => ErrorCode::TooLarge,
            Exit::Failed { .. } | Exit::SpawnFailed(_) | Exit::Raised => ErrorCode::FunctionFailed,
        };
        let message = format!(
            "{} (function `{function}` {} on node {node})",
            outcome.describe_failure(timeout),
            served.version
        );
        tracing::info!(invocation = id, code = code.as_u16(), "{message}");
        Reply {
            headers: reply::error(code, &message, &meta),
            body: Bytes::new(),
            ran,
            ticket: Some(ticket),
        }
    }
}

/// One run as a child process.
struct RunRequest<'a> {
    id: &'a str,
    function: &'a str,
    installation: &'a comfaas_runtime::Installation,
    procs: u32,
    input: RunInput,
    timeout: Duration,
}

/// Handler mode hands the input over in memory: large inputs are for
/// script mode and MPI, which stream them.
const HANDLER_MAX_INPUT: u64 = 64 << 20;

async fn read_for_handler(path: &std::path::Path) -> Result<Bytes, String> {
    let len = tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if len > HANDLER_MAX_INPUT {
        return Err(format!(
            "handler mode takes inputs up to {HANDLER_MAX_INPUT} bytes, this one has {len}: use script mode"
        ));
    }
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("cannot read the input: {e}"))
}

impl Worker {
    /// Runs in a private directory removed afterwards. MPI jobs also get
    /// the input as a file (`COMFAAS_INPUT_FILE`), since only rank 0 has stdin.
    async fn run_process(
        &self,
        run: RunRequest<'_>,
    ) -> Result<comfaas_runtime::RunOutcome, (ErrorCode, String)> {
        let node = &self.config.node;
        let run_dir = self
            .config
            .data_dir()
            .join("runs")
            .join(uuid::Uuid::new_v4().simple().to_string());
        tokio::fs::create_dir_all(&run_dir).await.map_err(|e| {
            (
                ErrorCode::InsufficientStorage,
                format!("node {node} cannot create a run directory: {e}"),
            )
        })?;
        let mut env = run_env(run.installation, run.function, node);
        env.extend([
            ("HOME".into(), run_dir.clone().into()),
            ("TMPDIR".into(), run_dir.clone().into()),
            ("COMFAAS_INVOCATION_ID".into(), run.id.into()),
        ]);
        if run.installation.runtime.is_mpi() {
            // Every rank reads its slice of this file.
            let input_file = match &run.input {
                RunInput::File(path) => path.clone(),
                RunInput::Bytes(bytes) => {
                    let file = run_dir.join("input");
                    if let Err(e) = tokio::fs::write(&file, bytes).await {
                        let _ = tokio::fs::remove_dir_all(&run_dir).await;
                        return Err((
                            ErrorCode::InsufficientStorage,
                            format!("node {node} cannot write the input file: {e}"),
                        ));
                    }
                    file
                }
            };
            env.push(("COMFAAS_INPUT_FILE".into(), input_file.into()));
        }
        let (program, args) = run.installation.command(run.procs, self.mpi.as_ref());
        let outcome = comfaas_runtime::run(RunSpec {
            program,
            args,
            cwd: run_dir.clone(),
            env,
            input: run.input,
            timeout: run.timeout,
            max_output: self.max_output,
            spill: Some((run_dir.join(".stdout"), self.config.max_output_object_bytes)),
        })
        .await;
        // A large output goes to the object store before its file goes.
        let stored = match &outcome.stdout_file {
            Some((file, _)) if outcome.exit == Exit::Success => {
                comfaas_platform::objects::put_file(&self.outputs, run.id, file)
                    .await
                    .map_err(|e| {
                        let text = format!("{e}: {}", e.source);
                        let code =
                            if text.contains("maximum bytes") || text.contains("insufficient") {
                                ErrorCode::InsufficientStorage
                            } else {
                                ErrorCode::Unavailable
                            };
                        (
                            code,
                            format!("cannot store the output of {}: {text}", run.function),
                        )
                    })
            }
            _ => Ok(()),
        };
        if let Err(e) = tokio::fs::remove_dir_all(&run_dir).await {
            tracing::warn!("cannot remove run directory {}: {e}", run_dir.display());
        }
        stored.map(|()| outcome)
    }
}

/// The environment every run of `installation` starts from: nothing of the
/// executor's own (no credentials leak), only what the function needs.
pub fn run_env(
    installation: &comfaas_runtime::Installation,
    function: &str,
    node: &str,
) -> Vec<(OsString, OsString)> {
    let mut path: Vec<std::path::PathBuf> = installation.path.clone();
    path.extend(std::env::split_paths(RUN_PATH));
    let path = std::env::join_paths(path).unwrap_or_else(|_| RUN_PATH.into());
    vec![
        ("PATH".into(), path),
        ("LANG".into(), "C.UTF-8".into()),
        ("COMFAAS_FUNCTION".into(), function.into()),
        ("COMFAAS_NODE".into(), node.into()),
        (
            "COMFAAS_BUNDLE_DIR".into(),
            installation.bundle_dir.clone().into(),
        ),
    ]
}

/// What a work message gets back.
struct Reply {
    headers: HeaderMap,
    body: Bytes,
    /// Set when the function ran (successfully or not): where its outcome goes.
    ran: Option<Ran>,
    /// The run's queue place and slot, held until its outcome is sent, so
    /// that the load report their release wakes follows the answer.
    ticket: Option<Ticket>,
}

struct Ran {
    function: String,
    reply_to: Option<String>,
}

async fn publish(
    client: &async_nats::Client,
    subject: async_nats::Subject,
    headers: HeaderMap,
    body: Bytes,
) {
    if let Err(e) = client
        .publish_with_headers(subject.clone(), headers, body)
        .await
    {
        tracing::warn!("cannot publish to {subject}: {e}");
    }
}
