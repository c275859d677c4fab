//! The executor's configuration and its command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use comfaas_platform::nats::{NatsFlags, NatsOptions};
use comfaas_platform::signing::TrustedOperators;
use comfaas_runtime::SandboxConfig;
use comfaas_schemas::{ByteSize, ResourceLimits, SignaturePolicy, Tier};
use serde::{Deserialize, Serialize};

/// Headroom left under the server's max payload for reply headers.
const HEADER_HEADROOM: usize = 16 * 1024;

/// Executor settings, read in layers (see `comfaas_platform::settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecConfig {
    /// How to reach NATS.
    #[serde(flatten)]
    pub nats: NatsOptions,
    /// Node id, one subject token; the host name by default.
    pub node: String,
    /// Edge or cloud.
    pub tier: Tier,
    /// Site name.
    pub site: String,
    /// Runs at once; 0 means one per core.
    pub slots: u32,
    /// Invocations that may wait for a slot before new ones get 429.
    pub queue: u32,
    /// How long an event's run and outcome are remembered, seconds: a
    /// redelivery within it attaches to that run instead of running again.
    pub remember_events_s: u64,
    /// Most MPI processes per job; 0 means one per core.
    pub max_procs: u32,
    /// Where functions are installed and runs get their directories;
    /// empty means `<tmp>/comfaas-exec/<node>`.
    pub data_dir: PathBuf,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// Run time limit when neither the request nor the manifest sets one.
    pub default_timeout_ms: u64,
    /// Largest run time limit a request may ask for.
    pub max_timeout_ms: u64,
    /// Largest output sent inside a reply (larger ones go to the object
    /// store); 0 means the server's max payload less room for headers.
    pub max_output_bytes: usize,
    /// Use `uv` for venvs when it is installed.
    pub use_uv: bool,
    /// Folders of wheels Python installs may use (`--find-links`).
    pub find_links: Vec<PathBuf>,
    /// Install Python packages from `find_links` only, never from an index.
    pub no_index: bool,
    /// Build Rust functions offline (their crates fetched beforehand).
    pub cargo_offline: bool,
    /// Cargo target folder shared by Rust function builds; empty means
    /// `<data_dir>/cargo-target`.
    pub cargo_target_dir: PathBuf,
    /// Disk the cache of large inputs may use, bytes.
    pub input_cache_bytes: u64,
    /// An input fetch that gets no bytes for this long, ms, fails (503)
    /// and frees its slot.
    pub input_stall_ms: u64,
    /// Largest output a run may write; beyond `max_output_bytes` it goes to
    /// the object store `comfaas_outputs` and the reply names it.
    pub max_output_object_bytes: u64,
    /// Public nkeys (`U…`) of the operators whose signed deployments this
    /// node installs; empty: any deployment, signed or not (open mode, a
    /// laptop), which the node's load report says (`signatures: off`).
    pub trusted_operators: Vec<String>,
    /// How runs are confined (`[sandbox]`).
    pub sandbox: SandboxConfig,
    /// Limits of a run its manifest leaves out (`[limits]`: `memory`,
    /// `procs`, `open_files`, `file_size`, `cpu_time`).
    pub limits: ResourceLimits,
    /// Where to serve Prometheus metrics (`host:port`, `GET /metrics`);
    /// empty: off, and nothing is counted.
    pub metrics_addr: String,
    /// Function logs (`[logs]`: `enabled`, `max_bytes_per_run`, `queue`).
    pub logs: LogsConfig,
    /// Publish the successful outcome of a request this node answered
    /// directly on `<prefix>.result.<fn>` too (kept in `COMFAAS_RESULTS`),
    /// as events' and failures' are. Off by default: the requester has the
    /// answer, and a stored message per call halved what the server carries.
    pub publish_request_results: bool,
}

/// What the executor does with what runs write to stderr (`[logs]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogsConfig {
    /// Publish each run's stderr to `<prefix>.log.<fn>.<node>` (kept in
    /// `COMFAAS_LOGS`). Off: nothing is published; a failed run's reply
    /// still carries the end of its stderr.
    pub enabled: bool,
    /// Most bytes of one run's stderr published: its start and its last
    /// 16 KiB, with a line saying how much was dropped between.
    pub max_bytes_per_run: usize,
    /// Runs' logs waiting to be published; beyond it a run's log is
    /// dropped (and counted) rather than slowing the runs.
    pub queue: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes_per_run: 64 * 1024,
            queue: 256,
        }
    }
}

/// Largest `max_bytes_per_run`: a run's log is held in memory until it
/// is published.
pub const MAX_LOG_BYTES_PER_RUN: usize = 16 << 20;

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            nats: NatsOptions::default(),
            node: sysinfo::System::host_name()
                .map(|h| sanitize_token(&h))
                .unwrap_or_else(|| "node".to_owned()),
            tier: Tier::Edge,
            site: "local".to_owned(),
            slots: 0,
            queue: 64,
            remember_events_s: 900,
            max_procs: 0,
            data_dir: PathBuf::new(),
            heartbeat_ms: 1000,
            default_timeout_ms: comfaas_schemas::RunLimits::default().default_timeout_ms(),
            max_timeout_ms: comfaas_schemas::RunLimits::default().max_timeout_ms(),
            max_output_bytes: 0,
            use_uv: true,
            find_links: Vec::new(),
            no_index: false,
            cargo_offline: false,
            cargo_target_dir: PathBuf::new(),
            input_cache_bytes: 8 << 30,
            input_stall_ms: 10_000,
            max_output_object_bytes: 1 << 30,
            trusted_operators: Vec::new(),
            sandbox: SandboxConfig::default(),
            limits: default_limits(),
            metrics_addr: String::new(),
            logs: LogsConfig::default(),
            publish_request_results: false,
        }
    }
}

/// A run's limits unless its manifest or the configuration says otherwise:
/// 1 GiB of memory, 256 processes and threads, 1024 open files, files up to
/// 1 GiB, and no CPU time limit (the run's timeout bounds it).
pub fn default_limits() -> ResourceLimits {
    ResourceLimits {
        memory: Some(ByteSize(1 << 30)),
        procs: Some(256),
        open_files: Some(1024),
        file_size: Some(ByteSize(1 << 30)),
        cpu_time: None,
    }
}

/// CPU cores this process may use, read once: the standard library reads
/// cgroup files to tell, and admission asks on every invocation.
pub fn cores() -> u32 {
    static CORES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// Replaces characters that may not appear in a subject token.
fn sanitize_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl ExecConfig {
    /// Checks values that would make the executor misbehave.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node.is_empty() || sanitize_token(&self.node) != self.node {
            anyhow::bail!(
                "node id `{}` must be one subject token (letters, digits, `-`, `_`)",
                self.node
            );
        }
        if self.heartbeat_ms == 0 {
            anyhow::bail!("heartbeat_ms must be above zero");
        }
        if self.input_stall_ms == 0 {
            anyhow::bail!("input_stall_ms must be above zero");
        }
        self.trusted()?;
        if self.logs.enabled {
            let per_run = self.logs.max_bytes_per_run;
            if per_run == 0 || per_run > MAX_LOG_BYTES_PER_RUN {
                anyhow::bail!(
                    "logs.max_bytes_per_run must be between 1 and {MAX_LOG_BYTES_PER_RUN} \
                     (set logs.enabled = false to publish no logs), not {per_run}"
                );
            }
            if self.logs.queue == 0 {
                anyhow::bail!("logs.queue must be above zero");
            }
        }
        Ok(())
    }

    /// The operator keys this node trusts, each checked.
    pub fn trusted(&self) -> anyhow::Result<TrustedOperators> {
        TrustedOperators::new(&self.trusted_operators)
            .map_err(|e| anyhow::anyhow!("trusted_operators: {e}"))
    }

    /// Whether this node requires deployments to be signed.
    pub fn signatures(&self) -> SignaturePolicy {
        if self.trusted_operators.is_empty() {
            SignaturePolicy::Off
        } else {
            SignaturePolicy::Required
        }
    }

    /// Runs at once.
    pub fn slots(&self) -> u32 {
        if self.slots == 0 {
            cores()
        } else {
            self.slots
        }
    }

    /// Most MPI processes per job.
    pub fn max_procs(&self) -> u32 {
        if self.max_procs == 0 {
            cores()
        } else {
            self.max_procs
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        if self.data_dir.as_os_str().is_empty() {
            std::env::temp_dir().join("comfaas-exec").join(&self.node)
        } else {
            self.data_dir.clone()
        }
    }

    /// The run time limits this node applies.
    pub fn run_limits(&self) -> comfaas_schemas::RunLimits {
        comfaas_schemas::RunLimits::from_ms(self.default_timeout_ms, self.max_timeout_ms)
    }

    /// How long an input fetch may get no bytes before it fails.
    pub fn input_stall(&self) -> Duration {
        Duration::from_millis(self.input_stall_ms)
    }

    /// Heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Output cap for a server whose max payload is `max_payload`.
    pub fn max_output(&self, max_payload: usize) -> usize {
        let server_cap = max_payload.saturating_sub(HEADER_HEADROOM);
        if self.max_output_bytes == 0 {
            server_cap
        } else {
            self.max_output_bytes.min(server_cap)
        }
    }
}

/// Command-line flags of `comfaas-exec`; each overrides its config key.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ExecFlags {
    /// How to reach NATS.
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsFlags,
    /// Node id (one subject token) [default: host name]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Tier of this node
    #[arg(long, value_parser = ["edge", "cloud"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Site name
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Runs at once [default: one per core]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Invocations that may wait for a slot
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Most MPI processes per job [default: one per core]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_procs: Option<u32>,
    /// Data directory for installs and runs
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Install only deployments signed by this operator public key (U…);
    /// repeat for several. None: any deployment (open mode)
    #[arg(long = "trusted-operator", value_name = "KEY")]
    #[serde(rename = "trusted_operators", skip_serializing_if = "Vec::is_empty")]
    pub trusted_operators: Vec<String>,
    /// Serve Prometheus metrics on this host:port (GET /metrics) [default: off]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ExecFlags,
    }

    fn from_flags(args: &[&str]) -> ExecConfig {
        use clap::Parser as _;
        let cli = Cli::parse_from([&["comfaas-exec"], args].concat());
        comfaas_platform::settings::load(&ExecConfig::default(), None, &cli.flags).unwrap()
    }

    /// The executor's own keys, its nested tables and the NATS keys it
    /// shares are known; a typo is not.
    #[test]
    fn unknown_keys_of_an_executor_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exec.toml");
        std::fs::write(
            &file,
            "node = \"n1\"\nslots = 2\nslotz = 3\nnats_url = \"nats://h:4222\"\n\
             js_domain = \"edge\"\nfind_links = [\"/w\"]\n\
             [sandbox]\nisolation = \"none\"\nuid_bsae = 9\n\
             [limits]\nmemory = \"256MB\"\ncpu_time = \"30s\"\n",
        )
        .unwrap();
        let defaults = ExecConfig::default();
        let config: ExecConfig =
            comfaas_platform::settings::load(&defaults, Some(&file), &ExecFlags::default())
                .unwrap();
        assert_eq!((config.slots, config.limits.cpu_time.is_some()), (2, true));
        assert_eq!(
            comfaas_platform::settings::unknown_keys(&file, &defaults, &config),
            ["sandbox.uid_bsae", "slotz"]
        );
    }

    fn from_toml(text: &str) -> anyhow::Result<ExecConfig> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("exec.toml");
        std::fs::write(&file, text)?;
        let config: ExecConfig = comfaas_platform::settings::load(
            &ExecConfig::default(),
            Some(&file),
            &ExecFlags::default(),
        )?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn logs_are_configured_in_their_section_and_checked() {
        let on = from_toml("").unwrap();
        assert_eq!(on.logs, LogsConfig::default());
        assert!(on.logs.enabled);
        let off = from_toml("[logs]\nenabled = false\n").unwrap();
        assert!(!off.logs.enabled);
        let small = from_toml("[logs]\nmax_bytes_per_run = 4096\nqueue = 8\n").unwrap();
        assert_eq!((small.logs.max_bytes_per_run, small.logs.queue), (4096, 8));
        // A misspelled key is warned about (`settings::unknown_keys`), as
        // anywhere in the file, not fatal; the section keeps its defaults.
        let typo = from_toml("[logs]\nenable = false\n").unwrap();
        assert!(typo.logs.enabled);
        for (bad, says) in [
            (
                "[logs]\nmax_bytes_per_run = 0\n",
                "logs.max_bytes_per_run must be between 1",
            ),
            (
                "[logs]\nmax_bytes_per_run = 999999999\n",
                "logs.max_bytes_per_run must be between 1",
            ),
            ("[logs]\nqueue = 0\n", "logs.queue must be above zero"),
        ] {
            let error = format!("{:#}", from_toml(bad).unwrap_err());
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn trusted_operators_come_from_repeated_flags_and_are_checked() {
        let (a, b) = (
            comfaas_platform::signing::Signer::generate().public_key(),
            comfaas_platform::signing::Signer::generate().public_key(),
        );
        let config = from_flags(&["--trusted-operator", &a, "--trusted-operator", &b]);
        assert_eq!(config.trusted_operators, vec![a, b]);
        assert!(config.validate().is_ok());
        assert_eq!(config.signatures(), SignaturePolicy::Required);

        let open = from_flags(&[]);
        assert!(open.trusted_operators.is_empty());
        assert_eq!(open.signatures(), SignaturePolicy::Off);

        let typo = from_flags(&["--trusted-operator", "UABC"]);
        assert!(typo.validate().is_err());
        let error = typo.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("trusted_operators: `UABC` is not a public nkey"),
            "{error}"
        );
    }
}
