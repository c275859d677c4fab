//! The test harness of comfaas: real `nats-server` processes on free ports
//! with temporary JetStream directories (stopped on drop), the real
//! dispatcher and executors in-process or as their binaries, and helpers to
//! write function folders, deploy them and invoke them.
//!
//! Integration tests live in `tests/tests/it/`, one module per area in a
//! single test binary, `it`; the benchmark programs, which use this harness
//! too, in the `comfaas-bench` package (`benches/`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas::auth::AuthDir;
use comfaas_dispatch::{DispatchConfig, Dispatcher};
use comfaas_exec::{ExecConfig, Executor};
use comfaas_platform::auth::Role;
use comfaas_platform::nats::NatsOptions;
use comfaas_platform::registry::Registry;
use comfaas_platform::signing::Signer;
use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, Deployment, DispatchMetrics, InstallState, NodeLoad, Tier};
use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod instant;
pub mod measure;
pub mod paper;

/// The repository root (where `functions/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The folder of wheels tests install from, filled by `scripts/setup.sh`.
pub fn wheelhouse() -> PathBuf {
    comfaas_runtime::default_wheelhouse()
}

/// The Python of the venv holding nats-py and nkeys that `scripts/setup.sh`
/// makes (`COMFAAS_PYCLIENT`, else `~/.cache/comfaas/pyclient`): another
/// real NATS client, to try the `nats` CLI examples with.
pub fn nats_py() -> PathBuf {
    let venv = std::env::var_os("COMFAAS_PYCLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/comfaas/pyclient")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    python
}

/// Writes a minimal pure-Python wheel of package `name` (module
/// `import_name`) at `version` into `dir`, whose module says its version.
/// Tests install from such wheels instead of a package index.
pub fn write_wheel(dir: &Path, name: &str, import_name: &str, version: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let dist = name.replace('-', "_");
    let script = format!(
        r#"
import zipfile
files = {{
    "{import_name}/__init__.py": "VERSION = '{version}'\n",
    "{dist}-{version}.dist-info/METADATA": "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    "{dist}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: comfaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}}
files["{dist}-{version}.dist-info/RECORD"] = "".join(f"{{p}},,\n" for p in list(files) + ["{dist}-{version}.dist-info/RECORD"])
with zipfile.ZipFile("{dist}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
"#
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &script])
        .current_dir(dir)
        .status()
        .expect("run python3");
    assert!(status.success(), "writing the wheel failed");
}

/// A bare invocation of `function`, as a dispatcher would send it, for
/// tests that talk to a node's work subject directly.
pub fn invocation(id: &str, function: &str) -> comfaas_schemas::Invocation {
    comfaas_schemas::Invocation {
        schema: comfaas_schemas::SCHEMA_VERSION,
        id: id.to_owned(),
        function: function.to_owned(),
        input: Vec::new(),
        timeout_ms: None,
        procs: None,
        received_unix_ms: 0,
        deadline_unix_ms: None,
        reply_to: None,
        input_object: None,
        event: false,
        notices_to: None,
    }
}

/// `n` points (little-endian u32 pairs) from a fixed-seed generator.
pub fn points(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n * 8);
    for _ in 0..n * 2 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(&((state >> 32) as u32).to_le_bytes());
    }
    out
}

/// Pi from `points`, computed here the way the functions do.
pub fn local_pi(points: &[u8]) -> f64 {
    let scale = 4_294_967_296.0;
    let mut inside = 0u64;
    for p in points.chunks_exact(8) {
        let x = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as f64 / scale;
        let y = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as f64 / scale;
        if x * x + y * y < 1.0 {
            inside += 1;
        }
    }
    4.0 * inside as f64 / (points.len() / 8) as f64
}

/// A workspace binary (`comfaas`, `comfaas-exec`, `comfaas-dispatch`),
/// built by `cargo build --bins` next to the test executables and the
/// benchmark programs.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --bins; scripts/test.sh does)",
        path.display()
    );
    path
}

/// Whether a test platform's NATS is open (a laptop) or secure: every
/// role connects with its own NKey under the permissions of
/// `comfaas_platform::auth`, over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No auth, plain TCP.
    Open,
    /// `comfaas auth init --tls`: NKeys per role, TLS on the client port.
    Secure,
}

/// The credentials of a secure test server.
pub struct TestAuth {
    /// The folder `comfaas auth init` wrote.
    pub dir: std::sync::Mutex<AuthDir>,
    _temp: tempfile::TempDir,
}

impl TestAuth {
    /// A copy of the auth folder's current state.
    pub fn snapshot(&self) -> AuthDir {
        self.dir.lock().expect("auth lock").clone()
    }
}

/// The MQTT device (user name) of a secure [`TestNats::start_with_mqtt`].
pub const MQTT_DEVICE: &str = "sensor";

/// A running `nats-server` with JetStream, stopped on drop.
pub struct TestNats {
    /// The server.
    pub server: EmbeddedServer,
    /// Its credentials, when secure.
    pub auth: Option<TestAuth>,
}

/// How long [`Platform::wait_state`] waits for a node's next report after
/// the one that said ready (nodes report at least once a heartbeat, a
/// second in tests).
pub const READY_HEARD_WAIT: Duration = Duration::from_secs(2);

/// The JetStream disk limit of a test server, in bytes. Unset, nats-server
/// lets JetStream reserve 75 % of the disk free when it starts, which
/// differs from machine to machine and shrinks as the tests running beside
/// each other write: the 16 GiB stores were then made smaller
/// ([`comfaas_platform::resources`] shrinks them to fit), too small on a
/// CI machine for the tests that keep a gigabyte of inputs, and on a
/// cluster the last store found no room at all. A fixed limit makes every
/// store its full size wherever the suite runs: a store is made in full
/// while the server could reserve four times its size, so the limit is
/// well over four times the sum of them all (36 GiB). The server takes a
/// limit larger than the disk; a write the disk cannot hold still fails.
/// The tests of shrinking start their own servers with a small limit.
pub const TEST_MAX_FILE_STORE: u64 = 256 << 30;

/// `options` with the suite's JetStream limit [`TEST_MAX_FILE_STORE`]:
/// every server a test starts has it, but those of the tests of small
/// limits (a server started without it gets nats-server's default, and
/// its stores a share of whatever disk the machine has free: on CI's disk
/// the inputs store of such a server came out under 500 MB and a 500 MB
/// input was refused).
pub fn limited(options: ServerOptions) -> ServerOptions {
    ServerOptions {
        max_file_store: Some(TEST_MAX_FILE_STORE),
        ..options
    }
}

/// `comfaas dev`'s `--store-limit` at the suite's JetStream limit, unless
/// `args` give one.
pub fn store_limit_args(args: &[&str]) -> Vec<String> {
    if args.contains(&"--store-limit") {
        return Vec::new();
    }
    vec!["--store-limit".to_owned(), TEST_MAX_FILE_STORE.to_string()]
}

/// Options for a test that starts its own server: `config` (more of the
/// server's configuration) with the suite's JetStream limit.
pub fn server_options(config: &str) -> ServerOptions {
    limited(ServerOptions {
        config_text: Some(config.to_owned()),
        ..ServerOptions::default()
    })
}

impl TestNats {
    /// Starts a server on a free loopback port with a temporary store.
    pub async fn start() -> Self {
        Self::start_with(Security::Open).await
    }

    /// Starts a server, open or secure (`comfaas auth init --tls`, the
    /// server started with its include).
    pub async fn start_with(security: Security) -> Self {
        Self::start_listening(security, false).await
    }

    /// As [`TestNats::start_with`], also listening for MQTT clients on a
    /// free port ([`EmbeddedServer::mqtt_port`]); secure: over TLS, with
    /// the MQTT device [`MQTT_DEVICE`] (`comfaas auth add-mqtt-device`).
    pub async fn start_with_mqtt(security: Security) -> Self {
        Self::start_listening(security, true).await
    }

    async fn start_listening(security: Security, mqtt: bool) -> Self {
        let auth = match security {
            Security::Open => None,
            Security::Secure => {
                let temp = tempfile::tempdir().expect("tempdir");
                let dir = comfaas::auth::init(
                    &temp.path().join("auth"),
                    comfaas_schemas::names::DEFAULT_PREFIX,
                    &comfaas::auth::InitOptions {
                        tls: true,
                        nodes: vec!["edge-1".to_owned(), "cloud-1".to_owned()],
                        hosts: Vec::new(),
                        edge_domain: comfaas_platform::auth::DEFAULT_EDGE_DOMAIN.to_owned(),
                    },
                )
                .expect("auth init");
                let mut dir = dir;
                if mqtt {
                    dir.add_mqtt_device(MQTT_DEVICE).expect("add MQTT device");
                }
                Some(TestAuth {
                    dir: std::sync::Mutex::new(dir),
                    _temp: temp,
                })
            }
        };
        let server = EmbeddedServer::start(ServerOptions {
            include: auth.as_ref().map(|a| a.snapshot().server_conf()),
            mqtt: mqtt.then(|| comfaas_testbed::server::MqttListener {
                port: 0,
                tls: auth
                    .as_ref()
                    .and_then(|a| a.snapshot().server_tls())
                    .map(|t| (PathBuf::from(t.cert_file), PathBuf::from(t.key_file))),
            }),
            ..server_options("")
        })
        .await
        .expect("start nats-server (run scripts/setup.sh to install it)");
        Self { server, auth }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Connection options for services (open), or for the operator
    /// (secure).
    pub fn options(&self) -> NatsOptions {
        self.options_for(&Role::Operator)
    }

    /// Connection options with the identity of `role` (open: no identity).
    /// An executor node without an identity yet gets one (`add-node`,
    /// then a reload of the server): call [`TestNats::identity_for`] first.
    pub fn options_for(&self, role: &Role) -> NatsOptions {
        match &self.auth {
            None => NatsOptions::for_url(self.url()),
            Some(auth) => {
                let auth = auth.snapshot();
                let file = match role {
                    Role::Executor { node } => auth.node_file(node),
                    other => auth.role_file(other.kind()),
                };
                auth.nats_options(self.url(), file)
            }
        }
    }

    /// Connection options of the device `name` (`device`: the default
    /// one), added to the server first when new.
    pub async fn device_options(&self, name: &str) -> NatsOptions {
        let Some(auth) = &self.auth else {
            return NatsOptions::for_url(self.url());
        };
        let (file, added) = {
            let mut dir = auth.dir.lock().expect("auth lock");
            let file = dir.device_file(name);
            if file.is_file() {
                (file, false)
            } else {
                (dir.add_device(name).expect("add device"), true)
            }
        };
        let options = auth.snapshot().nats_options(self.url(), file);
        if added {
            self.reload_until_accepted(&options).await;
        }
        options
    }

    /// Makes sure the node `node` has an identity (secure mode), adding it
    /// and reloading the server when it has none.
    pub async fn identity_for(&self, node: &str) {
        let Some(auth) = &self.auth else { return };
        let added = {
            let mut dir = auth.dir.lock().expect("auth lock");
            if dir.node_file(node).is_file() {
                false
            } else {
                dir.add_node(node).expect("add node");
                true
            }
        };
        if added {
            let options = self.options_for(&Role::Executor {
                node: node.to_owned(),
            });
            self.reload_until_accepted(&options).await;
        }
    }

    /// Reloads the server's configuration and waits until `options` may
    /// connect (the reload is asynchronous).
    pub async fn reload_until_accepted(&self, options: &NatsOptions) {
        // The server says when a reload is complete; a client that connects
        // before then may see its subscriptions re-checked mid-way.
        const RELOADED: &str = "Reloaded server configuration";
        let reloads = self.server.log_lines(RELOADED).len();
        self.server.reload().expect("reload");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.server.log_lines(RELOADED).len() > reloads
                && options.connect("comfaas test reload probe").await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not accept a new identity within 10 s of a reload"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new client: open, or the observer's (it may watch loads,
    /// metrics and results).
    pub async fn client(&self) -> async_nats::Client {
        self.options_for(&Role::Observer)
            .connect("comfaas test observer")
            .await
            .expect("connect")
    }

    /// A new client with the identity of `role`.
    pub async fn client_as(&self, role: &Role) -> async_nats::Client {
        if let Role::Executor { node } = role {
            self.identity_for(node).await;
        }
        self.options_for(role)
            .connect(&format!("comfaas test {}", role.kind()))
            .await
            .expect("connect")
    }

    /// Server log lines of permission violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.server.log_lines("Violation")
    }

    /// Waits (at most 5 s) until the server has logged a violation naming
    /// `subject` (its log is read as it comes, so give it a moment).
    pub async fn wait_violation(&self, subject: &str) {
        let quoted = format!("\"{subject}\"");
        for _ in 0..100 {
            if self.violations().iter().any(|l| l.contains(&quoted)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no violation logged for {subject}: {:#?}",
            self.violations()
        );
    }

    /// Waits (at most 30 s) until node `node` under the default prefix
    /// reports its load: it is up and serving its work subject.
    pub async fn wait_for_node(&self, node: &str) {
        let client = self.client().await;
        let sub = client
            .subscribe(Subjects::default().node_load(node))
            .await
            .expect("subscribe");
        first_message(sub, &format!("node {node}")).await;
    }

    /// Waits (at most 30 s) until a dispatcher under the default prefix
    /// publishes its metrics: it subscribes to invocations before its first
    /// report, so a request sent after this finds it.
    pub async fn wait_for_dispatcher(&self) {
        let client = self.client().await;
        let sub = client
            .subscribe(Subjects::default().dispatch_metrics_all())
            .await
            .expect("subscribe");
        first_message(sub, "a dispatcher").await;
    }
}

/// The first message on `sub`, waiting at most 30 s for `who` to send it.
async fn first_message(mut sub: async_nats::Subscriber, who: &str) -> async_nats::Message {
    next_message(&mut sub, Duration::from_secs(30), who).await
}

/// The next message on `sub`, which `what` must send within `within`.
pub async fn next_message(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    what: &str,
) -> async_nats::Message {
    tokio::time::timeout(within, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within {within:?}"))
        .expect("subscription open")
}

/// A service started by [`Platform`]: it runs until [`Service::stop`] or
/// the end of the test (dropping the handle does not stop it).
pub struct Service {
    /// Cancel to stop it gracefully.
    pub shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Whether it has stopped (returned or panicked) on its own.
    pub fn has_stopped(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Service {
    /// Stops the service and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

/// A NATS server plus whatever services a test starts on it.
pub struct Platform {
    /// The server.
    pub nats: TestNats,
    /// A client for the test's own requests (secure: the operator's).
    pub client: async_nats::Client,
    /// The client invocations and input uploads go through (secure: the
    /// default device's; open: `client` again).
    pub device: async_nats::Client,
    /// The registry; it signs what it deploys with [`Platform::operator`].
    pub registry: Registry,
    /// The operator's signing key: nodes started with
    /// [`NodeSpec::trusting`] this key's public key install what
    /// [`Platform::deploy`] deploys, and refuse anything unsigned.
    pub operator: Signer,
    /// Subject names.
    pub subjects: Subjects,
    /// Temporary folder for data dirs and function folders.
    pub scratch: tempfile::TempDir,
}

/// Options of an in-process executor.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub node: String,
    /// Tier.
    pub tier: Tier,
    /// Slots.
    pub slots: u32,
    /// Queue.
    pub queue: u32,
    /// Make venvs with uv (else `python3 -m venv` + pip).
    pub use_uv: bool,
    /// Most MPI processes per job.
    pub max_procs: u32,
    /// More folders of wheels, besides the wheelhouse.
    pub extra_wheels: Vec<PathBuf>,
    /// Disk the node's input cache may use.
    pub input_cache_bytes: u64,
    /// Largest output a run may write (to the object store past 1 MB).
    pub max_output_object_bytes: u64,
    /// Another server to connect to (a site of its own), and the JetStream
    /// domain of the registry and data there.
    pub site: Option<(String, Option<String>)>,
    /// Period of its load report, ms.
    pub heartbeat_ms: u64,
    /// Operator keys whose signed deployments it installs (none: any).
    pub trusted_operators: Vec<String>,
    /// How it confines runs (bwrap by default, as in production).
    pub sandbox: comfaas_runtime::SandboxConfig,
    /// Where it serves Prometheus metrics (empty: off).
    pub metrics_addr: String,
    /// What it does with runs' stderr (`[logs]`; published by default).
    pub logs: comfaas_exec::LogsConfig,
    /// Publish successful answers to requests on the result subject too.
    pub publish_request_results: bool,
}

impl NodeSpec {
    /// An edge node with 2 slots and a queue of 16.
    pub fn edge(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            tier: Tier::Edge,
            slots: 2,
            queue: 16,
            use_uv: true,
            max_procs: 4,
            extra_wheels: Vec::new(),
            input_cache_bytes: 8 << 30,
            max_output_object_bytes: 1 << 30,
            site: None,
            heartbeat_ms: 1000,
            trusted_operators: Vec::new(),
            sandbox: comfaas_runtime::SandboxConfig::default(),
            metrics_addr: String::new(),
            logs: comfaas_exec::LogsConfig::default(),
            publish_request_results: false,
        }
    }

    /// This node, installing only deployments signed by `operator`.
    pub fn trusting(self, operator: &Signer) -> Self {
        Self {
            trusted_operators: vec![operator.public_key()],
            ..self
        }
    }

    /// A cloud node with 2 slots and a queue of 16.
    pub fn cloud(node: &str) -> Self {
        Self {
            tier: Tier::Cloud,
            ..Self::edge(node)
        }
    }

    /// A cloud node on a cloud site's own server (`url`), reaching the
    /// edge's JetStream domain (registry, inputs) across the leaf link.
    pub fn cloud_at(node: &str, url: &str) -> Self {
        Self {
            site: Some((
                url.to_owned(),
                Some(comfaas_testbed::sites::EDGE_SITE.to_owned()),
            )),
            ..Self::cloud(node)
        }
    }

    /// The executor's configuration: connected with `nats`, its data
    /// under `scratch/nodes/<node>`, trusting `trusted` operators instead
    /// of its own list when given (a secure site's operator).
    pub fn exec_config(
        self,
        nats: NatsOptions,
        scratch: &Path,
        trusted: Option<Vec<String>>,
    ) -> ExecConfig {
        ExecConfig {
            nats,
            data_dir: scratch.join("nodes").join(&self.node),
            node: self.node,
            tier: self.tier,
            site: self.tier.as_str().to_owned(),
            slots: self.slots,
            queue: self.queue,
            use_uv: self.use_uv,
            max_procs: self.max_procs,
            input_cache_bytes: self.input_cache_bytes,
            max_output_object_bytes: self.max_output_object_bytes,
            heartbeat_ms: self.heartbeat_ms,
            trusted_operators: trusted.unwrap_or(self.trusted_operators),
            // Tests reach no package index: wheels come from the wheelhouse
            // scripts/setup.sh fills, crates from cargo's local registry.
            find_links: [vec![wheelhouse()], self.extra_wheels].concat(),
            no_index: true,
            cargo_offline: true,
            cargo_target_dir: repo_root().join("target").join("comfaas-functions"),
            sandbox: self.sandbox,
            metrics_addr: self.metrics_addr,
            logs: self.logs,
            publish_request_results: self.publish_request_results,
            ..ExecConfig::default()
        }
    }
}

impl Platform {
    /// `comfaas-dispatch` as a process of its own on this platform's
    /// server (open mode), returned once it serves: it has created the
    /// streams and stores an executor uses.
    pub async fn dispatch_process(&self) -> Process {
        let process = Process::spawn("comfaas-dispatch", &["--nats-url", self.nats.url()]);
        self.nats.wait_for_dispatcher().await;
        process
    }

    /// `comfaas-exec` as a process of its own on this platform's server
    /// (open mode): node `node`, its data in the scratch folder, with the
    /// `extra` flags (`--slots`, `--queue`, ...).
    pub fn exec_process(&self, node: &str, extra: &[&str]) -> Process {
        let data_dir = self.scratch.path().join(node);
        let data_dir = data_dir.to_string_lossy();
        let args: Vec<&str> = ["--nats-url", self.nats.url(), "--node", node, "--data-dir"]
            .into_iter()
            .chain([data_dir.as_ref()])
            .chain(extra.iter().copied())
            .collect();
        Process::spawn("comfaas-exec", &args)
    }

    /// A fresh server, no services yet.
    pub async fn start() -> Self {
        Self::start_with(Security::Open).await
    }

    /// A fresh secure server (NKeys per role, TLS), no services yet.
    pub async fn start_secure() -> Self {
        Self::start_with(Security::Secure).await
    }

    /// A fresh server, open or secure, no services yet.
    pub async fn start_with(security: Security) -> Self {
        Self::on_nats(TestNats::start_with(security).await).await
    }

    /// As [`Platform::start_with`], the server also listening for MQTT
    /// devices ([`TestNats::start_with_mqtt`]).
    pub async fn start_with_mqtt(security: Security) -> Self {
        Self::on_nats(TestNats::start_with_mqtt(security).await).await
    }

    /// The platform on an already started (open) server.
    pub async fn on(server: EmbeddedServer) -> Self {
        Self::on_nats(TestNats { server, auth: None }).await
    }

    async fn on_nats(nats: TestNats) -> Self {
        let client = nats.client_as(&Role::Operator).await;
        let device = match nats.auth {
            None => client.clone(),
            Some(_) => nats
                .device_options("device")
                .await
                .connect("comfaas test device")
                .await
                .expect("connect as the device"),
        };
        // The operator creates the registry (in secure mode only the
        // operator and the dispatcher create streams and buckets).
        // Secure: the site's own operator key signs, and every node trusts
        // it; open: a key of the test's, trusted by nodes that ask for it.
        let operator = match &nats.auth {
            None => Signer::generate(),
            Some(auth) => Signer::from_file(&auth.snapshot().role_file("operator"))
                .expect("the site's operator key"),
        };
        let registry = Registry::open(&async_nats::jetstream::new(client.clone()))
            .await
            .expect("open registry")
            .signing_with(
                Signer::from_seed(&operator.seed().expect("seed")).expect("operator key"),
            );
        Self {
            operator,
            subjects: nats.options().subjects(),
            nats,
            client,
            device,
            registry,
            scratch: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// In a secure platform, panics listing the permission violations the
    /// server logged: a legitimate path must need no permission its role
    /// lacks. (Open: nothing to check.)
    pub fn assert_no_violations(&self) {
        let violations = self.nats.violations();
        assert!(
            violations.is_empty(),
            "permission violations on the legitimate path:\n{}",
            violations.join("\n")
        );
    }

    /// Flags for the `comfaas` binary to reach this platform as `role`
    /// (`device`, `operator`, …): the URL, and in secure mode its key and
    /// the CA.
    pub fn cli_args(&self, role: &str) -> Vec<String> {
        let mut args = vec!["--nats-url".to_owned(), self.nats.url().to_owned()];
        if let Some(auth) = &self.nats.auth {
            let auth = auth.snapshot();
            args.push("--nkey".to_owned());
            args.push(auth.role_file(role).display().to_string());
            if let Some(ca) = auth.tls_ca() {
                args.push("--tls-ca".to_owned());
                args.push(ca.display().to_string());
            }
        }
        args
    }

    /// Whether this platform is secure.
    pub fn security(&self) -> Security {
        if self.nats.auth.is_some() {
            Security::Secure
        } else {
            Security::Open
        }
    }

    /// A server with one dispatcher, one edge and one cloud executor.
    pub async fn with_edge_and_cloud() -> Self {
        Self::with_edge_and_cloud_in(Security::Open).await
    }

    /// As [`with_edge_and_cloud`](Self::with_edge_and_cloud), open or secure.
    pub async fn with_edge_and_cloud_in(security: Security) -> Self {
        let p = Self::start_with(security).await;
        drop(p.dispatcher().await);
        drop(p.executor(NodeSpec::edge("edge-1")).await);
        drop(p.executor(NodeSpec::cloud("cloud-1")).await);
        p
    }

    /// Starts a dispatcher. It runs until stopped or the test ends.
    pub async fn dispatcher(&self) -> Service {
        self.dispatcher_with(DispatchConfig::default()).await
    }

    /// Starts a dispatcher with `config` (its NATS options are replaced).
    pub async fn dispatcher_with(&self, config: DispatchConfig) -> Service {
        let dispatcher = Dispatcher::connect(DispatchConfig {
            nats: self.nats.options_for(&Role::Dispatcher),
            ..config
        })
        .await
        .expect("start dispatcher");
        // It subscribes to invocations before its first metrics report:
        // waiting for that report means a request sent next finds it.
        let reports = self
            .client
            .subscribe(self.subjects.dispatch_metrics(dispatcher.id()))
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        let service = self.spawn(|token| dispatcher.run(token));
        first_message(reports, "the dispatcher").await;
        service
    }

    /// Starts an in-process executor. It runs until stopped or the test ends.
    pub async fn executor(&self, spec: NodeSpec) -> Service {
        let nats = match &spec.site {
            Some((url, domain)) => NatsOptions {
                js_domain: domain.clone(),
                ..NatsOptions::for_url(url)
            },
            None => {
                self.nats.identity_for(&spec.node).await;
                self.nats.options_for(&Role::Executor {
                    node: spec.node.clone(),
                })
            }
        };
        // A secure site's nodes install only what its operator signed.
        let trusted = self
            .nats
            .auth
            .as_ref()
            .map(|_| vec![self.operator.public_key()]);
        let config = spec.exec_config(nats, self.scratch.path(), trusted);
        let executor = Executor::connect(config).await.expect("start executor");
        self.spawn(|token| executor.run(token))
    }

    fn spawn<F, Fut>(&self, run: F) -> Service
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(shutdown.clone()));
        Service { shutdown, handle }
    }

    /// Writes a function folder under the scratch dir and returns its path.
    pub fn function(&self, name: &str, manifest_extra: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.scratch.path().join("src").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let manifest = format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n{manifest_extra}\n"
        );
        std::fs::write(dir.join("comfaas.toml"), manifest).expect("write manifest");
        for (path, text) in files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(file, text).expect("write file");
        }
        dir
    }

    /// Deploys `dir`, signed by [`Platform::operator`], and waits until
    /// every node in `nodes` serves it.
    pub async fn deploy(&self, dir: &Path, nodes: &[&str]) -> Deployment {
        let deployment = comfaas::deploy::deploy_dir(&self.registry, dir)
            .await
            .expect("deploy");
        self.wait_state(&deployment, nodes, InstallState::Ready)
            .await;
        deployment
    }

    /// Waits until every node in `nodes` reports `state` for `deployment`
    /// (and, for `Ready`, until dispatchers have heard it too: until each
    /// node's next report, which the dispatchers hear after the one that
    /// said ready, on the same subject, in order; at most
    /// [`READY_HEARD_WAIT`] for a node that reports seldom).
    pub async fn wait_state(&self, deployment: &Deployment, nodes: &[&str], state: InstallState) {
        let mut loads = self
            .client
            .subscribe(self.subjects.node_load_all())
            .await
            .expect("subscribe");
        let mut pending: Vec<&str> = nodes.to_vec();
        // Reached `Ready`, but the dispatchers may not have heard it yet.
        let mut unheard: Vec<&str> = Vec::new();
        let mut heard_by = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if pending.is_empty() {
                if unheard.is_empty() {
                    break;
                }
                heard_by.get_or_insert(Instant::now() + READY_HEARD_WAIT);
            }
            let until = heard_by.map_or(deadline, |by: Instant| by.min(deadline));
            let message = match tokio::time::timeout_at(until.into(), loads.next()).await {
                Ok(message) => message.expect("load stream"),
                Err(_) if pending.is_empty() => break,
                Err(_) => panic!(
                    "nodes {pending:?} did not reach {state:?} for {}",
                    deployment.manifest.name
                ),
            };
            let load: NodeLoad = decode(&message.payload).expect("node load");
            unheard.retain(|n| *n != load.node);
            if let Some(failed) = load.functions.iter().find(|f| {
                f.name == deployment.manifest.name
                    && f.digest == deployment.bundle.digest
                    && f.state == InstallState::Failed
                    && state != InstallState::Failed
            }) {
                panic!(
                    "{} failed to install on {}: {:?}",
                    failed.name, load.node, failed.reason
                );
            }
            let reached = load.functions.iter().any(|f| {
                f.name == deployment.manifest.name
                    && f.digest == deployment.bundle.digest
                    && f.state == state
            });
            if reached && pending.contains(&load.node.as_str()) {
                pending.retain(|n| *n != load.node);
                if state == InstallState::Ready {
                    unheard.extend(nodes.iter().find(|n| **n == load.node));
                }
            }
        }
    }

    /// Sends a request on `<prefix>.invoke.<function>`.
    pub async fn invoke(&self, function: &str, input: &str) -> async_nats::Message {
        self.invoke_with(function, input, HeaderMap::new()).await
    }

    /// Sends a request with raw bytes and headers.
    pub async fn invoke_bytes(
        &self,
        function: &str,
        input: Vec<u8>,
        headers: HeaderMap,
    ) -> async_nats::Message {
        request(
            &self.device,
            &self.subjects.invoke(function),
            headers,
            input.into(),
        )
        .await
    }

    /// Sends a request with headers.
    pub async fn invoke_with(
        &self,
        function: &str,
        input: &str,
        headers: HeaderMap,
    ) -> async_nats::Message {
        self.invoke_bytes(function, input.as_bytes().to_vec(), headers)
            .await
    }

    /// Publishes an event for `function` with `headers`, as the device,
    /// and waits until the events stream has it.
    pub async fn publish_event(&self, function: &str, headers: &[(&str, &str)], body: &str) {
        // Devices publish events, through JetStream, waiting for the ack.
        let js = async_nats::jetstream::new(self.device.clone());
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        js.publish_with_headers(self.subjects.event(function), map, body.to_owned().into())
            .await
            .expect("publish event")
            .await
            .expect("event stored");
    }

    /// Stores `bytes` as an input object (`comfaas_inputs`) at this
    /// platform's server; its name, for `Comfaas-Input-Object`.
    pub async fn upload_input(&self, bytes: &[u8]) -> String {
        let file = self
            .scratch
            .path()
            .join(format!("input-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, bytes).expect("write input");
        let js = async_nats::jetstream::new(self.device.clone());
        comfaas_platform::resources::inputs_store(&js)
            .await
            .expect("inputs store");
        let name = comfaas_platform::objects::upload_file(
            &js,
            comfaas_schemas::names::INPUTS_BUCKET,
            &file,
        )
        .await
        .expect("upload input")
        .name;
        let _ = std::fs::remove_file(&file);
        name
    }

    /// The folder of function `count`: a Python script printing the length
    /// of its input.
    pub fn count_function(&self) -> PathBuf {
        self.function(
            "count",
            "",
            &[(
                "main.py",
                "import sys\nprint(len(sys.stdin.buffer.read()))\n",
            )],
        )
    }

    /// The next `DispatchMetrics` published by any dispatcher.
    pub async fn next_metrics(&self) -> DispatchMetrics {
        let mut sub = self
            .client
            .subscribe(self.subjects.dispatch_metrics_all())
            .await
            .expect("subscribe");
        let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("metrics within 10 s")
            .expect("metrics stream");
        decode(&message.payload).expect("metrics")
    }
}

/// A request with a 60 s limit, panicking on transport errors.
pub async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> async_nats::Message {
    client
        .send_request(
            subject.to_owned(),
            async_nats::Request::new()
                .headers(headers)
                .payload(payload)
                .timeout(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap_or_else(|e| panic!("request on {subject}: {e}"))
}

/// A header of a reply, or "".
pub fn header(message: &async_nats::Message, name: &str) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// A spawned binary, killed on drop.
pub struct Process {
    /// The child.
    pub child: tokio::process::Child,
}

impl Process {
    /// Starts a workspace binary with `args`, its output discarded unless
    /// `COMFAAS_TEST_LOG` is set.
    pub fn spawn(name: &str, args: &[&str]) -> Self {
        let quiet = std::env::var_os("COMFAAS_TEST_LOG").is_none();
        let child = tokio::process::Command::new(binary(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .stderr(if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { child }
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A clustered site (`nats/cluster.conf` on loopback) and the services a
/// test starts on it: each connects with every server's URL, and what the
/// platform creates there has one replica per server (up to three).
pub struct ClusterPlatform {
    /// The servers; kill and restart members through it.
    pub cluster: comfaas_testbed::cluster::Cluster,
    /// A client of the test's own, connected with every URL.
    pub client: async_nats::Client,
    /// The registry (unsigned: nodes started here trust any deployment).
    pub registry: Registry,
    /// Subject names.
    pub subjects: Subjects,
    /// Temporary folder for data dirs and function folders.
    pub scratch: tempfile::TempDir,
}

impl ClusterPlatform {
    /// Starts a cluster of `size` servers and sets this process's replica
    /// count to match (at most 3); no services yet.
    pub async fn start(size: usize) -> Self {
        let cluster =
            comfaas_testbed::cluster::Cluster::start(comfaas_testbed::cluster::ClusterOptions {
                configs: repo_root().join("nats"),
                site: "edge".to_owned(),
                size,
                first_port: None,
                store_root: None,
                max_file_store: Some(TEST_MAX_FILE_STORE),
            })
            .await
            .expect("start the cluster (run scripts/setup.sh to install nats-server)");
        comfaas_platform::resources::set_replicas(size.min(3)).expect("replicas");
        let options = NatsOptions::for_url(cluster.urls());
        let client = options.connect("comfaas test").await.expect("connect");
        let registry = Registry::open(&async_nats::jetstream::new(client.clone()))
            .await
            .expect("open registry");
        Self {
            cluster,
            client,
            registry,
            subjects: options.subjects(),
            scratch: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Options for services: every server's URL, this site's replicas.
    pub fn options(&self) -> NatsOptions {
        NatsOptions {
            replicas: comfaas_platform::resources::replicas(),
            ..NatsOptions::for_url(self.cluster.urls())
        }
    }

    /// Starts an in-process dispatcher and waits for its first report.
    pub async fn dispatcher(&self) -> Service {
        let dispatcher = Dispatcher::connect(DispatchConfig {
            nats: self.options(),
            ..DispatchConfig::default()
        })
        .await
        .expect("start dispatcher");
        let reports = self
            .client
            .subscribe(self.subjects.dispatch_metrics(dispatcher.id()))
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        let shutdown = CancellationToken::new();
        let mut handle = tokio::spawn(dispatcher.run(shutdown.clone()));
        // A dispatcher that stops before its first report says why.
        tokio::select! {
            _ = first_message(reports, "the dispatcher") => {}
            stopped = &mut handle => panic!("the dispatcher stopped before serving: {stopped:?}"),
        }
        Service { shutdown, handle }
    }

    /// Starts an in-process executor.
    pub async fn executor(&self, spec: NodeSpec) -> Service {
        let config = spec.exec_config(self.options(), self.scratch.path(), None);
        let executor = Executor::connect(config).await.expect("start executor");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(executor.run(shutdown.clone()));
        Service { shutdown, handle }
    }

    /// Deploys `dir` and waits until every node in `nodes` serves it.
    pub async fn deploy(&self, dir: &Path, nodes: &[&str]) -> Deployment {
        let deployment = comfaas::deploy::deploy_dir(&self.registry, dir)
            .await
            .expect("deploy");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let installs = comfaas::deploy::wait_installed(
                &self.client,
                &self.subjects,
                &deployment,
                Duration::from_secs(10),
            )
            .await
            .expect("watch installs");
            let ready = nodes.iter().all(|n| {
                installs
                    .get(*n)
                    .is_some_and(|(state, _)| *state == InstallState::Ready)
            });
            if ready {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {nodes:?} did not install {}: {installs:?}",
                deployment.manifest.name
            );
        }
    }
}
