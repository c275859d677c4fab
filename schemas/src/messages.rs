//! Internal messages: what dispatchers, executors and the registry exchange.

use serde::{Deserialize, Serialize};

use crate::cached::CachedInputs;
use crate::error::{ErrorCode, InvalidValue};
use crate::manifest::Manifest;

/// Version of the message schemas in this crate. Receivers accept any
/// version: fields they do not know are ignored, fields they miss default.
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// Milliseconds since the Unix epoch, the one clock of our messages.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a node is at the edge or in a cloud site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Close to the devices.
    #[default]
    Edge,
    /// A remote data centre.
    Cloud,
}

impl Tier {
    /// `edge` or `cloud`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Cloud => "cloud",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "edge" => Ok(Self::Edge),
            "cloud" => Ok(Self::Cloud),
            _ => Err(InvalidValue(format!("tier `{s}` is not edge or cloud"))),
        }
    }
}

/// One invocation placed on a node: sent by a dispatcher on `<prefix>.work.<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// Schema version of the sender.
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// Unique id, echoed in `Comfaas-Invocation-Id`.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Input bytes, passed unchanged to the function.
    #[serde(with = "serde_bytes", default)]
    pub input: Vec<u8>,
    /// Run time limit in milliseconds; the function's own when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// MPI processes; the function's own when absent.
    #[serde(default)]
    pub procs: Option<u32>,
    /// When the dispatcher received it (Unix ms).
    #[serde(default)]
    pub received_unix_ms: u64,
    /// After this instant (Unix ms) nobody waits for the answer: a node
    /// starts the run only while its timeout still fits before it.
    #[serde(default)]
    pub deadline_unix_ms: Option<u64>,
    /// The requester's reply subject. When set, the node sends the outcome
    /// of the run straight there (saving the dispatcher a relay) and answers
    /// the work request itself with headers only, marked `Comfaas-Replied`.
    /// Refusals (full, not installed here) still go to the work request's
    /// reply subject only, so the dispatcher can try another node.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The input lives in the object store `comfaas_inputs` (and `input`
    /// is empty): the node fetches it, or finds it in its cache.
    #[serde(default)]
    pub input_object: Option<InputObject>,
    /// Set for a device event (the id is then its event id, the same on
    /// every delivery): the node remembers the run and its outcome for a
    /// while, and attaches a redelivery to it instead of running it again.
    #[serde(default)]
    pub event: bool,
    /// Where the node sends the notice of a run whose outcome went to
    /// `reply_to`, gathered with others in a [`NoticeBatch`] (an inbox of
    /// the dispatcher). When absent, the notice is a headers-only reply to
    /// the work request, one per run.
    #[serde(default)]
    pub notices_to: Option<String>,
}

/// Notices of runs a node answered straight to their requesters, several
/// in one message: sent by an executor to the `notices_to` subject the
/// invocations named, instead of one headers-only reply per run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeBatch {
    /// Schema version of the sender.
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// One per run, in the order the runs ended.
    pub notices: Vec<WorkNotice>,
}

/// The notice of one run: what its headers-only reply would have been.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkNotice {
    /// The work request's reply subject (which run this is).
    pub reply: String,
    /// The reply headers, `Comfaas-Replied: true` among them, as name and
    /// value pairs.
    pub headers: Vec<(String, String)>,
}

/// An input kept in the object store `comfaas_inputs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputObject {
    /// Object name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The object store's digest, `SHA-256=<base64url>`; the cache key.
    pub digest: String,
}

/// Installation state of one function on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    /// Being fetched and installed.
    Installing,
    /// Ready to run.
    Ready,
    /// The install failed; see the reason.
    Failed,
}

/// A function as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionState {
    /// Function name.
    pub name: String,
    /// Version label of the deployment this state is about.
    pub version: String,
    /// Bundle digest of that deployment.
    pub digest: String,
    /// Where the install is.
    pub state: InstallState,
    /// Why it failed, when it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// Version currently served on this node, which may be older than
    /// `version` while a new one installs or after a failed upgrade.
    #[serde(default)]
    pub serving: Option<String>,
    /// How long this deployment's install took here, step by step, once it
    /// ended (ready or failed); absent while installing and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallTimes>,
}

/// Where one install's time went, in milliseconds: what a cold deploy
/// costs on a node, before the heartbeat and the first run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallTimes {
    /// When the node saw the deployment in the registry (Unix ms); less the
    /// deployment's `deployed_unix_ms`, the registry watch's delay.
    pub seen_unix_ms: u64,
    /// Reading the bundle from the package store.
    pub fetch_ms: u64,
    /// Checking its digest and unpacking it.
    pub unpack_ms: u64,
    /// The runtime's own steps, in order (environment, packages, build).
    #[serde(default)]
    pub steps: Vec<InstallStep>,
    /// From seen to ready (or failed): the above, plus secrets, sandbox and
    /// warm workers.
    pub total_ms: u64,
}

/// One step of a runtime's install and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallStep {
    /// What ran (`venv`, `uv pip install`, `cc`, ...).
    pub name: String,
    /// Milliseconds.
    pub ms: u64,
}

/// A node's heartbeat, on `<prefix>.node.<node>.load` every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Schema version of the sender.
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// Node id (one subject token).
    pub node: String,
    /// This run of the executor process, new at each start: a report with
    /// another instance than the last one means the node restarted, and
    /// what was in flight on the old one is lost.
    #[serde(default)]
    pub instance: String,
    /// Edge or cloud.
    #[serde(default)]
    pub tier: Tier,
    /// Site name (e.g. `edge`, `chicago`).
    #[serde(default)]
    pub site: String,
    /// CPU cores of the host.
    #[serde(default)]
    pub cores: u32,
    /// Runs allowed at once.
    #[serde(default)]
    pub slots: u32,
    /// Runs under way.
    #[serde(default)]
    pub running: u32,
    /// Runs waiting for a slot.
    #[serde(default)]
    pub queued: u32,
    /// How many may wait before new work is refused (429).
    #[serde(default)]
    pub queue_capacity: u32,
    /// One-minute load average divided by cores (1.0 = every core busy).
    #[serde(default)]
    pub cpu_load: f32,
    /// Memory of the host, bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Memory in use on the host, bytes.
    #[serde(default)]
    pub memory_used_bytes: u64,
    /// Most MPI processes one job may use here.
    #[serde(default)]
    pub max_procs: u32,
    /// Runtimes this node can install.
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// Every deployed function and its state here.
    #[serde(default)]
    pub functions: Vec<FunctionState>,
    /// Heartbeat period, so receivers know when the node is late.
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// When it was sent (Unix ms).
    #[serde(default)]
    pub sent_unix_ms: u64,
    /// The node is shutting down: take it out of the table at once.
    #[serde(default)]
    pub leaving: bool,
    /// Input bytes fetched from the object store since start.
    #[serde(default)]
    pub input_fetched_bytes: u64,
    /// Inputs found in the node's cache instead of fetched.
    #[serde(default)]
    pub input_cache_hits: u64,
    /// Moving average of input fetch throughput once data flows (the
    /// first chunk's wait left out), bytes per second; 0 before any fetch.
    #[serde(default)]
    pub input_fetch_bytes_per_s: f64,
    /// Input fetches that failed on the node's side since start (stalled,
    /// or the pull broke); dispatchers send inputs elsewhere for a while
    /// after it grows.
    #[serde(default)]
    pub input_fetch_failures: u64,
    /// Whether the node installs only deployments signed by an operator key
    /// it trusts (`required`), or any deployment (`off`, a laptop's open
    /// mode, and what an older node that does not say means).
    #[serde(default)]
    pub signatures: SignaturePolicy,
    /// How this node confines runs; the default (empty strings) is what a
    /// node from before sandboxes sends.
    #[serde(default)]
    pub sandbox: SandboxReport,
    /// The inputs in the node's cache: a dispatcher costs no transfer for
    /// an input the node holds.
    #[serde(default)]
    pub cached_inputs: CachedInputs,
}

/// How a node confines its runs, as its load report tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// `bwrap` (user, mount, pid and network namespaces) or `none`
    /// (configured explicitly: runs are plain child processes).
    #[serde(default)]
    pub isolation: String,
    /// Which cgroups bound each run's memory and processes: `v1`, `v2`,
    /// or `none` (rlimits alone, where neither is writable).
    #[serde(default)]
    pub cgroups: String,
    /// Whether every function runs as a user of its own (the executor is
    /// root); otherwise runs keep the executor's user, in namespaces.
    #[serde(default)]
    pub function_users: bool,
}

/// What a node asks of a deployment's signature before installing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePolicy {
    /// Unsigned deployments are installed (no trusted operator keys set).
    #[default]
    Off,
    /// Only deployments signed by a trusted operator key are installed.
    Required,
}

impl SignaturePolicy {
    /// `off` or `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Required => "required",
        }
    }
}

impl Default for NodeLoad {
    /// An empty report of this schema version: no node, nothing running.
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            node: String::new(),
            instance: String::new(),
            tier: Tier::default(),
            site: String::new(),
            cores: 0,
            slots: 0,
            running: 0,
            queued: 0,
            queue_capacity: 0,
            cpu_load: 0.0,
            memory_total_bytes: 0,
            memory_used_bytes: 0,
            max_procs: 0,
            runtimes: Vec::new(),
            functions: Vec::new(),
            heartbeat_ms: 0,
            sent_unix_ms: 0,
            leaving: false,
            input_fetched_bytes: 0,
            input_cache_hits: 0,
            input_fetch_bytes_per_s: 0.0,
            input_fetch_failures: 0,
            signatures: SignaturePolicy::Off,
            sandbox: SandboxReport::default(),
            cached_inputs: CachedInputs::default(),
        }
    }
}

impl NodeLoad {
    /// Whether `function` can run here now (some version is installed and served).
    pub fn serves(&self, function: &str) -> bool {
        self.functions
            .iter()
            .any(|f| f.name == function && f.serving.is_some())
    }
}

/// Where a bundle lives in the package store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// Object name in `comfaas_packages`.
    pub object: String,
    /// `sha256:<hex>` of the bundle bytes.
    pub digest: String,
    /// Bundle size in bytes.
    pub size: u64,
}

/// A deployed function: the value kept per function in `comfaas_functions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Schema version of the writer.
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The manifest, validated.
    pub manifest: Manifest,
    /// The bundle to install.
    pub bundle: BundleRef,
    /// When it was deployed (Unix ms). Not signed: a rollback re-puts a
    /// signed deployment with a new time and its signature stays valid.
    #[serde(default)]
    pub deployed_unix_ms: u64,
    /// The operator's signature over [`Deployment::signed_bytes`]; `None`
    /// for an unsigned deployment, which executors that trust operator keys
    /// refuse.
    #[serde(default)]
    pub signature: Option<DeploymentSignature>,
}

/// An operator's Ed25519 signature of a deployment (see
/// [`Deployment::signed_bytes`] for exactly what is signed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSignature {
    /// The signer's public nkey (`U…`), which executors look up in their
    /// `trusted_operators`.
    pub signer: String,
    /// The Ed25519 signature, base64url without padding.
    pub signature: String,
}

impl std::fmt::Debug for DeploymentSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentSignature")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// The domain separator that starts the bytes a deployment signature
/// covers, so such a signature can never pass for a signature of anything
/// else made with the same key (a NATS nonce, another message).
pub const DEPLOYMENT_SIGNING_DOMAIN: &[u8] = b"comfaas-deployment-v1\0";

impl Deployment {
    /// The bytes an operator signs: [`DEPLOYMENT_SIGNING_DOMAIN`] followed by
    /// the canonical JSON of
    /// `{"bundle": {"digest", "size"}, "function", "manifest", "version"}`:
    /// the function name, its version, the whole manifest and the bundle's
    /// `sha256:` digest and size. Canonical means: object keys sorted by
    /// their bytes at every level, no whitespace, strings escaped as
    /// `serde_json` does, and every member whose value is `null`, `false`,
    /// `""`, `[]` or `{}` left out (after its own members were), so that a
    /// manifest field added later with such a default does not change the
    /// bytes of deployments signed before it existed. (Hence every manifest
    /// field must default to one of those values.) Not signed: `schema`,
    /// `deployed_unix_ms` (a rollback re-puts an old deployment as it was
    /// signed) and `bundle.object` (the fetched bytes are checked against
    /// the signed digest and size instead).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SigningError> {
        let mut manifest = serde_json::to_value(&self.manifest)?;
        // `env` is data, not fields with defaults: its entries are signed
        // as they are, an empty value included (pruning would let one be
        // added or dropped without breaking the signature).
        let env = manifest
            .as_object_mut()
            .and_then(|fields| fields.remove("env"))
            .filter(|env| env.as_object().is_some_and(|entries| !entries.is_empty()));
        let payload = serde_json::json!({
            "bundle": { "digest": self.bundle.digest, "size": self.bundle.size },
            "function": self.manifest.name,
            "manifest": manifest,
            "version": self.manifest.version,
        });
        let mut out = DEPLOYMENT_SIGNING_DOMAIN.to_vec();
        if let Some(mut payload) = canonical::prune(payload) {
            if let (Some(env), Some(manifest)) = (
                env,
                payload.get_mut("manifest").and_then(|m| m.as_object_mut()),
            ) {
                manifest.insert("env".to_owned(), env);
            }
            canonical::write(&payload, &mut out)?;
        }
        Ok(out)
    }
}

/// The signed bytes of a deployment could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the signed bytes of a deployment: {0}")]
pub struct SigningError(#[from] serde_json::Error);

/// Canonical JSON: sorted keys, no whitespace, empty values left out. Keys
/// are sorted here rather than by relying on `serde_json`'s map order,
/// which a feature (`preserve_order`) elsewhere in a build could change.
mod canonical {
    use serde_json::Value;

    /// `value` without members (or array items' members) whose value is
    /// empty; `None` when `value` itself is empty.
    pub fn prune(value: Value) -> Option<Value> {
        match value {
            Value::Null | Value::Bool(false) => None,
            Value::String(s) if s.is_empty() => None,
            Value::Array(items) if items.is_empty() => None,
            // Array items keep their places: only their own members go.
            Value::Array(items) => Some(Value::Array(
                items
                    .into_iter()
                    .map(|item| prune(item).unwrap_or(Value::Null))
                    .collect(),
            )),
            Value::Object(members) => {
                let kept: serde_json::Map<String, Value> = members
                    .into_iter()
                    .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                    .collect();
                (!kept.is_empty()).then_some(Value::Object(kept))
            }
            other => Some(other),
        }
    }

    /// Writes `value` with every object's keys sorted.
    pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match value {
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out)?;
                }
                out.push(b']');
            }
            Value::Object(members) => {
                let mut keys: Vec<&String> = members.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, key)?;
                    out.push(b':');
                    if let Some(member) = members.get(key) {
                        write(member, out)?;
                    }
                }
                out.push(b'}');
            }
            scalar => serde_json::to_writer(&mut *out, scalar)?,
        }
        Ok(())
    }
}

/// How often one error code was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// The code.
    pub code: ErrorCode,
    /// How many times.
    pub count: u64,
}

/// A dispatcher's view of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// Node id.
    pub node: String,
    /// Edge or cloud.
    #[serde(default)]
    pub tier: Tier,
    /// Site name.
    #[serde(default)]
    pub site: String,
    /// Whether the node counts as alive.
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Invocations placed there by this dispatcher.
    pub placed: u64,
    /// Invocations placed there and not yet answered.
    pub in_flight: u32,
    /// Round trip as this dispatcher measures it (moving average), ms.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// One placement decision, for judging the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// Invocation id.
    pub invocation: String,
    /// Function name.
    pub function: String,
    /// The node chosen.
    pub node: String,
    /// MPI processes it runs with there (a range fitted to the node).
    #[serde(default)]
    pub procs: Option<u32>,
    /// Why (the model's own words).
    pub reason: String,
    /// What the round trip to the node really took, ms.
    #[serde(default)]
    pub took_ms: Option<u64>,
    /// The model's estimate for the chosen node, ms.
    #[serde(default)]
    pub estimate_ms: Option<f64>,
    /// The estimate for every eligible node, best first.
    #[serde(default)]
    pub candidates: Vec<CandidateEstimate>,
    /// When the try ended (Unix ms); absent from older dispatchers.
    #[serde(default)]
    pub unix_ms: Option<u64>,
}

/// One eligible node's estimate in a placement decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateEstimate {
    /// Node id.
    pub node: String,
    /// Estimated completion time, ms.
    pub estimate_ms: f64,
    /// What the estimate is made of; absent from older dispatchers.
    #[serde(default)]
    pub parts: Option<EstimateParts>,
}

/// The parts of one completion-time estimate, ms; they add up to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EstimateParts {
    /// Waiting for a slot behind the jobs at the node.
    pub wait_ms: f64,
    /// Slow-down from sharing the node's cores with its other jobs.
    pub contention_ms: f64,
    /// Fetching the input from the object store.
    pub transfer_ms: f64,
    /// The round trip to the node.
    pub rtt_ms: f64,
    /// The run itself.
    pub run_ms: f64,
}

impl EstimateParts {
    /// The estimate they make up, ms.
    pub fn total_ms(&self) -> f64 {
        self.wait_ms + self.contention_ms + self.transfer_ms + self.rtt_ms + self.run_ms
    }
}

/// A dispatcher's own report, on `<prefix>.dispatch.<id>.metrics` every second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchMetrics {
    /// Schema version of the sender.
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// Dispatcher id.
    pub dispatcher: String,
    /// Seconds since it started.
    #[serde(default)]
    pub uptime_s: u64,
    /// Invocations and events received.
    #[serde(default)]
    pub received: u64,
    /// Answered with `Comfaas-Status: ok`.
    #[serde(default)]
    pub succeeded: u64,
    /// Answered with an error.
    #[serde(default)]
    pub failed: u64,
    /// Received and not yet answered.
    #[serde(default)]
    pub in_flight: u32,
    /// Errors by code.
    #[serde(default)]
    pub errors: Vec<ErrorCount>,
    /// Every node it knows.
    #[serde(default)]
    pub nodes: Vec<NodeMetrics>,
    /// The latest placement decisions, newest last.
    #[serde(default)]
    pub recent: Vec<PlacementRecord>,
    /// When it was sent (Unix ms).
    #[serde(default)]
    pub sent_unix_ms: u64,
    /// Requests dropped unanswered because their reply subject is not an
    /// inbox (`_INBOX.…`): answering would publish on whatever subject the
    /// sender named.
    #[serde(default)]
    pub bad_reply_subjects: u64,
    /// Node load reports ignored because the node they name is not the one
    /// of the subject they came on (a forgery, or a misconfigured node).
    #[serde(default)]
    pub forged_loads: u64,
    /// Events written to the dead-letter queue.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Events whose dead letter could not be written (kept in their stream
    /// and tried again).
    #[serde(default)]
    pub dlq_failures: u64,
    /// Redelivered events sent to the node that held their run.
    #[serde(default)]
    pub attached: u64,
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::{Placement, Runtime};

    pub fn invocation() -> Invocation {
        Invocation {
            schema: SCHEMA_VERSION,
            id: "inv-1".into(),
            function: "hello".into(),
            input: b"{\"name\":\"x\"}\xff\x00".to_vec(),
            timeout_ms: Some(2500),
            procs: None,
            received_unix_ms: 1_700_000_000_000,
            deadline_unix_ms: Some(1_700_000_030_000),
            reply_to: Some("_INBOX.abc.1".into()),
            input_object: Some(InputObject {
                name: "sha256-ab".into(),
                size: 50 << 20,
                digest: "SHA-256=q83v".into(),
            }),
            event: false,
            notices_to: Some("_INBOX.disp.n".into()),
        }
    }

    pub fn notice_batch() -> NoticeBatch {
        NoticeBatch {
            schema: SCHEMA_VERSION,
            notices: vec![WorkNotice {
                reply: "_INBOX.disp.7".into(),
                headers: vec![("Comfaas-Replied".into(), "true".into())],
            }],
        }
    }

    pub fn node_load() -> NodeLoad {
        NodeLoad {
            schema: SCHEMA_VERSION,
            node: "edge-1".into(),
            instance: "5b0c".into(),
            tier: Tier::Edge,
            site: "edge".into(),
            cores: 2,
            slots: 4,
            running: 1,
            queued: 2,
            queue_capacity: 64,
            cpu_load: 0.5,
            memory_total_bytes: 1 << 34,
            memory_used_bytes: 1 << 30,
            max_procs: 4,
            runtimes: vec!["python".into()],
            functions: vec![FunctionState {
                name: "hello".into(),
                version: "2".into(),
                digest: "sha256:ab".into(),
                state: InstallState::Installing,
                reason: None,
                serving: Some("1".into()),
                install: Some(InstallTimes {
                    seen_unix_ms: 1_700_000_000_000,
                    fetch_ms: 3,
                    unpack_ms: 1,
                    steps: vec![InstallStep {
                        name: "venv".into(),
                        ms: 2,
                    }],
                    total_ms: 40,
                }),
            }],
            heartbeat_ms: 1000,
            sent_unix_ms: 1_700_000_000_000,
            leaving: false,
            input_fetched_bytes: 1 << 20,
            input_cache_hits: 2,
            input_fetch_bytes_per_s: 2.5e8,
            input_fetch_failures: 1,
            signatures: SignaturePolicy::Required,
            sandbox: SandboxReport {
                isolation: "bwrap".into(),
                cgroups: "v1".into(),
                function_users: true,
            },
            cached_inputs: CachedInputs::of(&["SHA-256=q83v"]),
        }
    }

    pub fn deployment() -> Deployment {
        Deployment {
            schema: SCHEMA_VERSION,
            manifest: Manifest {
                name: "hello".into(),
                version: "1.0.0".into(),
                runtime: Runtime::Python,
                entry: "main.py".into(),
                description: String::new(),
                requirements: vec![],
                timeout: Some("5s".into()),
                procs: None,
                placement: Placement::Node("edge-1".into()),
                mode: Default::default(),
                workers: None,
                env: Default::default(),
                network: false,
                secrets: vec![],
                limits: Default::default(),
            },
            bundle: BundleRef {
                object: "sha256-ab".into(),
                digest: "sha256:ab".into(),
                size: 10,
            },
            deployed_unix_ms: 1,
            signature: Some(DeploymentSignature {
                signer: "UABC".into(),
                signature: "c2ln".into(),
            }),
        }
    }

    pub fn metrics() -> DispatchMetrics {
        DispatchMetrics {
            schema: SCHEMA_VERSION,
            dispatcher: "d1".into(),
            uptime_s: 3,
            received: 10,
            succeeded: 8,
            failed: 2,
            in_flight: 0,
            errors: vec![ErrorCount {
                code: ErrorCode::NotFound,
                count: 2,
            }],
            nodes: vec![NodeMetrics {
                node: "edge-1".into(),
                tier: Tier::Edge,
                site: "edge".into(),
                alive: true,
                last_seen_ms: 200,
                placed: 8,
                in_flight: 0,
                rtt_ms: Some(0.4),
            }],
            recent: vec![PlacementRecord {
                invocation: "inv-1".into(),
                function: "hello".into(),
                node: "edge-1".into(),
                procs: Some(1),
                reason: "least loaded".into(),
                took_ms: Some(3),
                estimate_ms: Some(2.5),
                candidates: vec![CandidateEstimate {
                    node: "edge-1".into(),
                    estimate_ms: 2.5,
                    parts: Some(EstimateParts {
                        wait_ms: 0.5,
                        contention_ms: 0.0,
                        transfer_ms: 0.0,
                        rtt_ms: 1.0,
                        run_ms: 1.0,
                    }),
                }],
                unix_ms: Some(4),
            }],
            sent_unix_ms: 5,
            bad_reply_subjects: 1,
            forged_loads: 2,
            dead_lettered: 3,
            dlq_failures: 4,
            attached: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn every_message_round_trips() {
        let i = invocation();
        assert_eq!(decode::<Invocation>(&encode(&i).unwrap()).unwrap(), i);
        let l = node_load();
        assert_eq!(decode::<NodeLoad>(&encode(&l).unwrap()).unwrap(), l);
        let d = deployment();
        assert_eq!(decode::<Deployment>(&encode(&d).unwrap()).unwrap(), d);
        let m = metrics();
        assert_eq!(decode::<DispatchMetrics>(&encode(&m).unwrap()).unwrap(), m);
    }

    /// A message from a newer sender: today's fields plus one we do not know.
    #[test]
    fn newer_sender_with_extra_field_decodes() {
        #[derive(Serialize)]
        struct NewerInvocation {
            #[serde(flatten)]
            today: Invocation,
            priority: u8,
            tags: Vec<String>,
        }
        let newer = NewerInvocation {
            today: invocation(),
            priority: 7,
            tags: vec!["x".into()],
        };
        let bytes = encode(&newer).unwrap();
        assert_eq!(decode::<Invocation>(&bytes).unwrap(), invocation());

        #[derive(Serialize)]
        struct NewerLoad {
            #[serde(flatten)]
            today: NodeLoad,
            gpu_count: u32,
        }
        let bytes = encode(&NewerLoad {
            today: node_load(),
            gpu_count: 2,
        })
        .unwrap();
        assert_eq!(decode::<NodeLoad>(&bytes).unwrap(), node_load());
    }

    /// An older sender that knew only the required fields.
    #[test]
    fn older_sender_without_optional_fields_decodes() {
        #[derive(Serialize)]
        struct OldLoad {
            node: String,
        }
        let bytes = encode(&OldLoad { node: "n".into() }).unwrap();
        let load: NodeLoad = decode(&bytes).unwrap();
        assert_eq!(load.node, "n");
        assert_eq!(load.schema, SCHEMA_VERSION);
        assert!(load.functions.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs: [&[u8]; 6] = [
            b"",
            b"\xc1",
            b"hello world",
            b"{\"id\":\"x\"}",
            &[0x81, 0xa2, b'i', b'd', 0x07],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
        ];
        for bytes in inputs {
            assert!(decode::<Invocation>(bytes).is_err(), "{bytes:?}");
            assert!(decode::<NodeLoad>(bytes).is_err(), "{bytes:?}");
            assert!(decode::<Deployment>(bytes).is_err(), "{bytes:?}");
            assert!(decode::<DispatchMetrics>(bytes).is_err(), "{bytes:?}");
        }
        // Every truncation of a valid message fails cleanly too.
        let full = encode(&node_load()).unwrap();
        for end in 0..full.len() {
            assert!(decode::<NodeLoad>(&full[..end]).is_err());
        }
    }

    #[test]
    fn messages_are_maps_readable_without_our_types() {
        let bytes = encode(&invocation()).unwrap();
        // fixmap marker: field names travel with the values.
        assert_eq!(bytes[0] & 0xf0, 0x80);
        // A reader that knows two fields by name, as firmware would.
        #[derive(Deserialize)]
        struct Partial {
            function: String,
            timeout_ms: u64,
        }
        let partial: Partial = decode(&bytes).unwrap();
        assert_eq!(partial.function, "hello");
        assert_eq!(partial.timeout_ms, 2500);
    }

    #[test]
    fn signed_bytes_are_canonical_and_cover_what_matters() {
        let d = deployment();
        let bytes = d.signed_bytes().unwrap();
        let text = std::str::from_utf8(&bytes[DEPLOYMENT_SIGNING_DOMAIN.len()..]).unwrap();
        assert!(bytes.starts_with(b"comfaas-deployment-v1\0"));
        // Sorted keys at every level, no whitespace, empty members left out
        // (description, requirements, procs, workers, a default mode is kept
        // as it is a non-empty string).
        assert_eq!(
            text,
            r#"{"bundle":{"digest":"sha256:ab","size":10},"function":"hello","manifest":{"entry":"main.py","mode":"script","name":"hello","placement":"node:edge-1","runtime":"python","timeout":"5s","version":"1.0.0"},"version":"1.0.0"}"#
        );
        // Not covered: the time, the schema, the object name, the signature.
        let mut same = d.clone();
        same.deployed_unix_ms = 99;
        same.schema = 7;
        same.bundle.object = "elsewhere".into();
        same.signature = None;
        assert_eq!(same.signed_bytes().unwrap(), bytes);
        // Covered: every manifest field, the digest and the size.
        let changes: [fn(&mut Deployment); 9] = [
            |d| d.manifest.entry = "evil.py".into(),
            |d| {
                d.manifest.env.insert("PYTHONINSPECT".into(), String::new());
            },
            |d| {
                d.manifest.env.insert("MODE".into(), "x".into());
            },
            |d| d.manifest.network = true,
            |d| d.manifest.secrets.push("API_TOKEN".into()),
            |d| d.manifest.requirements.push("evil".into()),
            |d| d.manifest.version = "1.0.1".into(),
            |d| d.bundle.digest = "sha256:cd".into(),
            |d| d.bundle.size = 11,
        ];
        for change in changes {
            let mut other = d.clone();
            change(&mut other);
            assert_ne!(other.signed_bytes().unwrap(), bytes, "{other:?}");
        }
    }

    #[test]
    fn error_codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u16()));
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(418), None);
    }
}

#[cfg(test)]
mod readme {
    use super::tests_support::*;
    use crate::encode;

    /// The field names of a message, read back from its MessagePack map.
    fn fields<T: serde::Serialize>(message: &T) -> Vec<String> {
        #[derive(serde::Deserialize)]
        #[serde(transparent)]
        struct Keys(std::collections::BTreeMap<String, serde::de::IgnoredAny>);
        let bytes = encode(message).unwrap();
        let keys: Keys = crate::decode(&bytes).unwrap();
        keys.0.into_keys().collect()
    }

    /// Every field of every message has a row in its README table.
    #[test]
    fn readme_documents_every_field() {
        let readme = include_str!("../README.md");
        let load = node_load();
        let metrics = metrics();
        let deployment = deployment();
        let messages: Vec<(&str, Vec<String>)> = vec![
            ("Invocation", fields(&invocation())),
            ("NoticeBatch", fields(&notice_batch())),
            ("WorkNotice", fields(&notice_batch().notices[0])),
            ("InputObject", fields(&invocation().input_object.unwrap())),
            ("NodeLoad", fields(&load)),
            ("FunctionState", fields(&load.functions[0])),
            (
                "CachedInputs",
                fields(&crate::CachedInputs {
                    filter: Some(crate::DigestFilter::of(&["SHA-256=q83v"])),
                    ..load.cached_inputs.clone()
                }),
            ),
            ("DigestFilter", fields(&crate::DigestFilter::of(&["x"]))),
            (
                "InstallTimes",
                fields(load.functions[0].install.as_ref().unwrap()),
            ),
            (
                "InstallStep",
                fields(&load.functions[0].install.as_ref().unwrap().steps[0]),
            ),
            ("Deployment", fields(&deployment)),
            ("BundleRef", fields(&deployment.bundle)),
            (
                "DeploymentSignature",
                fields(deployment.signature.as_ref().unwrap()),
            ),
            ("DispatchMetrics", fields(&metrics)),
            ("ErrorCount", fields(&metrics.errors[0])),
            ("NodeMetrics", fields(&metrics.nodes[0])),
            ("PlacementRecord", fields(&metrics.recent[0])),
            (
                "CandidateEstimate",
                fields(&metrics.recent[0].candidates[0]),
            ),
            (
                "EstimateParts",
                fields(&metrics.recent[0].candidates[0].parts.unwrap()),
            ),
        ];
        for (name, fields) in messages {
            let start = readme
                .find(&format!("### {name}\n"))
                .unwrap_or_else(|| panic!("README has no section for {name}"));
            let section = &readme[start + 4..];
            let section = &section[..section.find("\n### ").unwrap_or(section.len())];
            for field in fields {
                assert!(
                    section.contains(&format!("| `{field}` |")),
                    "README section {name} does not document `{field}`"
                );
            }
        }
    }
}
