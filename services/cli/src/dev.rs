//! `comfaas dev`: the embedded default. One `nats-server` with JetStream in
//! a temporary directory, one dispatcher, one edge and one or more cloud
//! executors, all in this process, and every function under `functions/`
//! deployed. With `--sites edge,chicago,…`, one server per site, the edge
//! joined to each cloud site by a leaf connection through an emulated WAN
//! link, one executor per site, the dispatcher at the edge, and the edge's
//! data mirrored at the first cloud site. With `--cluster 3`, the site is
//! three routed servers (`nats/cluster.conf`), every stream, bucket and
//! object store at three replicas, and every service given every server's
//! URL. With `--mqtt-port`, the (edge) server also takes MQTT devices.
//!
//! It works from any folder: the server configurations are built in (a
//! `nats/` folder beside it, or `--nats-configs`, is used instead when
//! there), and a missing functions folder starts the platform with none.
//! Each stage is printed as it completes; the servers die with this process
//! and their stores are removed when it exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use comfaas_dispatch::{DispatchConfig, Dispatcher};
use comfaas_exec::{ExecConfig, Executor};
use comfaas_platform::nats::NatsOptions;
use comfaas_platform::registry::Registry;
use comfaas_platform::signing::Signer;
use comfaas_runtime::SandboxConfig;
use comfaas_schemas::{ByteSize, InvalidValue, Tier, MANIFEST_FILE};
use comfaas_testbed::cluster::{Cluster, ClusterOptions};
use comfaas_testbed::link::LinkSpec;
use comfaas_testbed::server::{EmbeddedServer, MqttListener, ServerOptions};
use comfaas_testbed::sites::{self, Sites, SitesOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthDir;
use crate::deploy;

/// What `comfaas dev` starts: its command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DevOptions {
    /// Port of the embedded nats-server (0: any free port)
    #[arg(long, default_value_t = 4222)]
    pub port: u16,
    /// Folder of functions to deploy (none when it does not exist)
    #[arg(long, default_value = "functions")]
    pub functions: PathBuf,
    /// Cloud executors to start (one site; with --sites, one per site)
    #[arg(long, default_value_t = 1, conflicts_with = "sites")]
    pub clouds: u32,
    /// Slots per executor [default: one per core]
    #[arg(long)]
    pub slots: Option<u32>,
    /// Most MPI processes per job on every executor, above the host's
    /// cores if need be (oversubscribed: `comfaas nodes` says so)
    /// [default: one per core; with --sites 4 at the edge, 16 in the cloud]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_procs: Option<u32>,
    /// Also listen for MQTT devices on this port (0: any free port):
    /// a publish on `comfaas/event/<fn>` is an event, results come on
    /// `comfaas/result/<fn>` [default: no MQTT]
    /// (on the edge's server with --sites; not with --cluster)
    #[arg(long, conflicts_with = "cluster")]
    pub mqtt_port: Option<u16>,
    /// One nats-server per site, e.g. edge,chicago,los-angeles,new-york,miami
    /// (the edge runs the dispatcher and joins every cloud site by its
    /// own leaf connection)
    #[arg(long, value_delimiter = ',')]
    pub sites: Vec<String>,
    /// Emulated link between the edge and a cloud site, one-way latency
    /// and bandwidth: SITE=LATENCY[/BANDWIDTH], e.g. chicago=20ms/100mbit
    /// (repeatable; the paper's cities have defaults, see docs)
    #[arg(long = "link", value_parser = sites::parse_site_link)]
    pub links: Vec<(String, LinkSpec)>,
    /// Bandwidth of the edge's uplink, shared by every link to a cloud
    /// site, e.g. 90mbit [default: 90mbit with --sites]
    #[arg(long, value_parser = comfaas_testbed::link::parse_bandwidth)]
    pub uplink: Option<u64>,
    /// Join the sites over plain loopback, without emulated links or
    /// uplink (those given with --link or --uplink still apply)
    #[arg(long)]
    pub no_wan: bool,
    /// The site as a cluster of this many routed nats-servers (1 to 3) on
    /// ports --port, --port + 1, …, everything created at
    /// min(N, 3) replicas unless --replicas says otherwise
    #[arg(long, conflicts_with_all = ["sites", "secure"])]
    pub cluster: Option<usize>,
    /// Folder of the server configurations for --sites and --cluster
    /// [default: ./nats when it exists, else the built-in copies]
    #[arg(long)]
    pub nats_configs: Option<PathBuf>,
    /// Auth on: every service connects with its own role's NKey under
    /// least-privilege permissions, TLS on every client and leaf link
    #[arg(long)]
    pub secure: bool,
    /// Credentials folder for --secure, made when missing
    /// [default: $XDG_STATE_HOME/comfaas/auth, or ~/.local/state/comfaas/auth]
    #[arg(long, requires = "secure")]
    pub auth_dir: Option<PathBuf>,
    /// Address of the live web dashboard (see `comfaas dashboard`)
    #[arg(long, default_value = crate::dashboard::DEFAULT_ADDR)]
    pub dashboard_addr: std::net::SocketAddr,
    /// Do not serve the dashboard
    #[arg(long)]
    pub no_dashboard: bool,
    /// First port of the Prometheus endpoints on 127.0.0.1: the
    /// dispatcher's, then one per executor in order (0: off)
    #[arg(long, default_value_t = 9464)]
    pub metrics_port: u16,
    /// Most disk each server's JetStream may reserve, e.g. 2GB or 1536MiB
    /// (its `max_file_store`; a size as a manifest writes one: units of
    /// 1024, as nats-server reads them); the streams and stores shrink to
    /// fit [default: nats-server's, 75% of the disk free when it starts]
    #[arg(long, value_parser = parse_store_limit)]
    pub store_limit: Option<u64>,
}

/// Parses `--store-limit`: a [`ByteSize`] of at least 1 MiB.
fn parse_store_limit(text: &str) -> Result<u64, String> {
    let ByteSize(bytes) = text.parse().map_err(|e: InvalidValue| e.to_string())?;
    if bytes < 1 << 20 {
        return Err(format!("`{text}` is under 1MiB, the least a store needs"));
    }
    Ok(bytes)
}

/// The Prometheus address of the `index`th service `comfaas dev` starts
/// (0: the dispatcher, then the executors), empty when metrics are off or
/// the port is taken (said in one line: a busy port must not stop `dev`).
fn metrics_addr(options: &DevOptions, index: u16) -> String {
    if options.metrics_port == 0 {
        return String::new();
    }
    let port = options.metrics_port.saturating_add(index);
    let addr = format!("127.0.0.1:{port}");
    match port_taken(port) {
        None => addr,
        Some(e) => {
            eprintln!("metrics not served on {addr}: {e} (--metrics-port picks other ports)");
            String::new()
        }
    }
}

/// Why `port` on loopback cannot be listened on, if it cannot (in use).
fn port_taken(port: u16) -> Option<std::io::Error> {
    std::net::TcpListener::bind(("127.0.0.1", port)).err()
}

/// Prints where the metrics of a service are scraped, if anywhere.
fn print_metrics_url(who: &str, addr: &str) {
    if !addr.is_empty() {
        println!(
            "  {who} metrics: http://{addr}{}",
            comfaas_platform::metrics::METRICS_PATH
        );
    }
}

/// The server configurations of `nats/`, built in so `comfaas dev` works
/// outside the repository.
const BUILT_IN_CONFIGS: [(&str, &str); 4] = [
    ("hub.conf", include_str!("../../../nats/hub.conf")),
    ("leaf.conf", include_str!("../../../nats/leaf.conf")),
    ("cluster.conf", include_str!("../../../nats/cluster.conf")),
    ("mqtt.conf", include_str!("../../../nats/mqtt.conf")),
];

/// The folder of server configurations: `--nats-configs` (which must
/// exist), else `./nats` when it holds them, else the built-in copies
/// written to `scratch`.
fn nats_configs(options: &DevOptions, scratch: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &options.nats_configs {
        anyhow::ensure!(
            dir.join("hub.conf").is_file(),
            "--nats-configs {}: no hub.conf there (leave the flag out for the built-in configurations)",
            dir.display()
        );
        return Ok(dir.clone());
    }
    let local = PathBuf::from("nats");
    if local.join("hub.conf").is_file() {
        return Ok(local);
    }
    let dir = scratch.join("nats");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for (name, text) in BUILT_IN_CONFIGS {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("write {}", dir.join(name).display()))?;
    }
    Ok(dir)
}

/// Refuses, in one line, a port something else already listens on
/// (nats-server would otherwise fail with a log excerpt). 0 is any port.
fn check_port_free(port: u16, what: &str, flag: &str) -> anyhow::Result<()> {
    if port == 0 {
        return Ok(());
    }
    match port_taken(port) {
        None => Ok(()),
        Some(e) => anyhow::bail!(
            "port {port} ({what}) is in use ({e}): another nats-server or `comfaas dev`? \
             Choose another with {flag} PORT (0: any free port)"
        ),
    }
}

/// The ports `options` asks for, each checked free.
fn check_ports(options: &DevOptions) -> anyhow::Result<()> {
    let servers = options.cluster.unwrap_or(1);
    for i in 0..servers {
        let port = u16::try_from(i)
            .ok()
            .and_then(|i| options.port.checked_add(i))
            .filter(|_| options.port != 0)
            .unwrap_or(0);
        check_port_free(port, "nats-server clients", "--port")?;
    }
    if let Some(port) = options.mqtt_port {
        check_port_free(port, "MQTT", "--mqtt-port")?;
    }
    Ok(())
}

/// Prints one stage of start-up as it completes, with the time since
/// start, so a slow one (a Rust function compiling) is seen as it happens.
pub struct Stages {
    started: Instant,
}

impl Default for Stages {
    fn default() -> Self {
        Self::new()
    }
}

impl Stages {
    /// Counting from now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    /// Prints `what`, done at this moment.
    pub fn done(&self, what: &str) {
        println!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

/// Refuses the client flags every command takes but `comfaas dev` cannot
/// honour (it starts its own server, names its own identities and uses the
/// default prefix), rather than ignore them silently. `--replicas` applies.
pub fn refuse_client_flags(
    flags: &comfaas_platform::nats::NatsFlags,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let given: Vec<&str> = [
        ("--nats-url", flags.nats_url.is_some()),
        ("--creds", flags.creds_file.is_some()),
        ("--nkey", flags.nkey_file.is_some()),
        ("--tls-ca", flags.tls_ca_file.is_some()),
        ("--js-domain", flags.js_domain.is_some()),
        ("--config", config.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    anyhow::ensure!(
        given.is_empty(),
        "comfaas dev starts its own server and identities: {} do(es) not apply \
         (choose its port with --port, auth with --secure and --auth-dir)",
        given.join(", ")
    );
    Ok(())
}

/// Where `comfaas dev --secure` keeps its credentials by default.
fn default_auth_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("comfaas").join("auth")
}

/// The executors `comfaas dev` starts, by name.
fn node_names(options: &DevOptions) -> Vec<String> {
    if options.sites.is_empty() {
        std::iter::once("edge-1".to_owned())
            .chain((1..=options.clouds).map(|i| format!("cloud-{i}")))
            .collect()
    } else {
        options.sites.iter().map(|s| format!("{s}-1")).collect()
    }
}

/// The credentials of `comfaas dev --secure`: the folder given (or the
/// default one), made with TLS when missing, with an identity for every
/// node this run starts.
fn prepare_auth(options: &DevOptions) -> anyhow::Result<AuthDir> {
    let dir = options.auth_dir.clone().unwrap_or_else(default_auth_dir);
    let mut auth = if dir.join(crate::auth::USERS_FILE).is_file() {
        AuthDir::open(&dir)?
    } else {
        crate::auth::init(
            &dir,
            comfaas_schemas::names::DEFAULT_PREFIX,
            &crate::auth::InitOptions {
                tls: true,
                nodes: Vec::new(),
                hosts: Vec::new(),
                edge_domain: sites::EDGE_SITE.to_owned(),
            },
        )?
    };
    for node in node_names(options) {
        if !auth.node_file(&node).is_file() {
            auth.add_node(&node)?;
        }
    }
    if options.mqtt_port.is_some() && auth.mqtt_password(MQTT_DEVICE).is_none() {
        auth.add_mqtt_device(MQTT_DEVICE)?;
    }
    // A folder made by an older comfaas holds the permissions of that
    // version: write them again from the identities, as this one grants.
    auth.write()?;
    Ok(auth)
}

/// The MQTT device `comfaas dev --secure --mqtt-port` makes (user name).
const MQTT_DEVICE: &str = "device";

/// One executor `comfaas dev` starts.
struct Node {
    name: String,
    tier: Tier,
    site: String,
    nats: NatsOptions,
    max_procs: u32,
}

/// How long services may take to finish what they run once asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Most processes per job at the edge and in the cloud, as in the paper.
const EDGE_MAX_PROCS: u32 = 4;
const CLOUD_MAX_PROCS: u32 = 16;

/// The emulated links of `options`: the defaults of the paper's cities,
/// overridden by `--link`, none with `--no-wan`.
fn links(options: &DevOptions, clouds: &[String]) -> anyhow::Result<BTreeMap<String, LinkSpec>> {
    let mut links = BTreeMap::new();
    if !options.no_wan {
        for site in clouds {
            if let Some(spec) = sites::default_link(site) {
                links.insert(site.clone(), spec);
            }
        }
    }
    for (site, spec) in &options.links {
        if !clouds.contains(site) {
            anyhow::bail!("--link {site}=…: `{site}` is not a cloud site of --sites");
        }
        links.insert(site.clone(), *spec);
    }
    Ok(links)
}

/// The servers `comfaas dev` runs: one, one per site, or a cluster.
enum Servers {
    Single(EmbeddedServer),
    Sites(Sites),
    Cluster(Cluster),
}

impl Servers {
    /// The edge server's MQTT port, when it listens for MQTT.
    fn mqtt_port(&self) -> Option<u16> {
        match self {
            Self::Single(server) => server.mqtt_port(),
            Self::Sites(sites) => sites.edge.server.mqtt_port(),
            Self::Cluster(_) => None,
        }
    }

    /// What services at the edge (the dispatcher, the CLI) connect to:
    /// the edge server's URL, or every cluster member's.
    fn edge_url(&self) -> String {
        match self {
            Self::Single(server) => server.url().to_owned(),
            Self::Sites(sites) => sites.edge.server.url().to_owned(),
            Self::Cluster(cluster) => cluster.urls(),
        }
    }

    /// Where the edge keeps its JetStream data.
    fn edge_store(&self) -> String {
        match self {
            Self::Single(server) => server.store_dir().display().to_string(),
            Self::Sites(sites) => sites.edge.server.store_dir().display().to_string(),
            Self::Cluster(cluster) => (0..cluster.size())
                .filter_map(|i| cluster.store_dir(i))
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    async fn stop(self) {
        match self {
            Self::Single(server) => server.stop().await,
            Self::Sites(sites) => sites.stop().await,
            Self::Cluster(cluster) => cluster.stop().await,
        }
    }
}

/// The executors of a single site at `url`: `edge-1` and `cloud-<i>`.
fn single_site_nodes(options: &DevOptions, url: &str) -> Vec<Node> {
    let nats = NatsOptions::for_url(url);
    let mut nodes = vec![Node {
        name: "edge-1".to_owned(),
        tier: Tier::Edge,
        site: "edge".to_owned(),
        nats: nats.clone(),
        max_procs: 0,
    }];
    for i in 1..=options.clouds {
        nodes.push(Node {
            name: format!("cloud-{i}"),
            tier: Tier::Cloud,
            site: "cloud".to_owned(),
            nats: nats.clone(),
            max_procs: 0,
        });
    }
    nodes
}

/// Starts one server, or one per site (see [`comfaas_testbed::sites`])
/// with the edge's data mirrored at the first cloud site. Returns them and
/// the executors to start.
async fn start_servers(
    options: &DevOptions,
    auth: Option<&AuthDir>,
    scratch: &Path,
) -> anyhow::Result<(Servers, Vec<Node>)> {
    let port = (options.port != 0).then_some(options.port);
    if options.sites.is_empty() {
        if !options.links.is_empty() || options.uplink.is_some() || options.no_wan {
            anyhow::bail!("--link, --uplink and --no-wan need --sites");
        }
        if let Some(size) = options.cluster {
            let cluster = Cluster::start(ClusterOptions {
                configs: nats_configs(options, scratch)?,
                site: sites::EDGE_SITE.to_owned(),
                size,
                first_port: port,
                store_root: None,
                max_file_store: options.store_limit,
            })
            .await?;
            for i in 0..cluster.size() {
                println!(
                    "cluster {}: server {} at {}",
                    cluster.site(),
                    cluster.name(i).unwrap_or_default(),
                    cluster.url(i).unwrap_or_default()
                );
            }
            let nodes = single_site_nodes(options, &cluster.urls());
            return Ok((Servers::Cluster(cluster), nodes));
        }
        if options.nats_configs.is_some() {
            anyhow::bail!("--nats-configs is for --sites and --cluster (one server needs none)");
        }
        let server = EmbeddedServer::start(ServerOptions {
            port,
            max_file_store: options.store_limit,
            include: auth.map(AuthDir::server_conf),
            mqtt: mqtt_listener(options, auth),
            ..ServerOptions::default()
        })
        .await?;
        let nodes = single_site_nodes(options, server.url());
        return Ok((Servers::Single(server), nodes));
    }
    let clouds: Vec<String> = options
        .sites
        .iter()
        .filter(|s| *s != sites::EDGE_SITE)
        .cloned()
        .collect();
    if clouds.is_empty() || !options.sites.iter().any(|s| s == sites::EDGE_SITE) {
        anyhow::bail!("--sites needs `edge` and at least one cloud site, e.g. edge,chicago");
    }
    let links = links(options, &clouds)?;
    let uplink = options
        .uplink
        .or((!options.no_wan).then_some(sites::DEFAULT_UPLINK_BITS_PER_S));
    let started = Sites::start(SitesOptions {
        configs: nats_configs(options, scratch)?,
        clouds,
        links,
        uplink,
        edge_port: port,
        edge_mqtt: mqtt_listener(options, auth),
        max_file_store: options.store_limit,
        security: auth.map(|auth| sites::SiteSecurity {
            include: auth.server_conf(),
            leaf_port: auth.leaf_port_block(),
            leaf: comfaas_testbed::server::LeafAuth {
                user: comfaas_platform::auth::LEAF_USER.to_owned(),
                password: auth.leaf_password().to_owned(),
                ca_file: auth.tls_ca(),
            },
            probe: auth.nats_options("", auth.role_file("dispatcher")),
        }),
    })
    .await?;
    if let Some(uplink) = &started.uplink {
        println!("edge uplink: {uplink} each way, shared by every link");
    }
    let mut nodes = Vec::new();
    for site in started.all() {
        let edge = site.name == sites::EDGE_SITE;
        let link = site
            .link
            .as_ref()
            .map_or(String::new(), |l| format!(", link {}", l.spec()));
        println!(
            "site {}: nats-server at {}{link}",
            site.name,
            site.server.url()
        );
        nodes.push(Node {
            name: format!("{}-1", site.name),
            tier: if edge { Tier::Edge } else { Tier::Cloud },
            site: site.name.clone(),
            nats: site.nats(),
            max_procs: if edge {
                EDGE_MAX_PROCS
            } else {
                CLOUD_MAX_PROCS
            },
        });
    }
    // The edge's data is kept in the cloud: the first cloud site mirrors it.
    let backup = &started.clouds[0];
    let client = as_role(auth, backup.server.url(), "operator")
        .connect("comfaas dev backup")
        .await?;
    comfaas_platform::resources::backup_edge(&async_nats::jetstream::new(client), sites::EDGE_SITE)
        .await?;
    println!(
        "site {}: mirrors the edge's events and results",
        backup.name
    );
    Ok((Servers::Sites(started), nodes))
}

/// The MQTT listener `--mqtt-port` asks for: over TLS with the site's
/// certificate when secure.
fn mqtt_listener(options: &DevOptions, auth: Option<&AuthDir>) -> Option<MqttListener> {
    options.mqtt_port.map(|port| MqttListener {
        port,
        tls: auth
            .and_then(AuthDir::server_tls)
            .map(|tls| (PathBuf::from(tls.cert_file), PathBuf::from(tls.key_file))),
    })
}

/// Options at `url`, with the identity of `role` (`operator`, …) when
/// secure.
fn as_role(auth: Option<&AuthDir>, url: &str, role: &str) -> NatsOptions {
    match auth {
        Some(auth) => auth.nats_options(url, auth.role_file(role)),
        None => NatsOptions::for_url(url),
    }
}

/// The replica count of what `comfaas dev` creates: `replicas` when
/// given (`--replicas`, `COMFAAS_REPLICAS`), else one per cluster member up
/// to three, else 1.
fn dev_replicas(options: &DevOptions, replicas: Option<usize>) -> usize {
    replicas.unwrap_or_else(|| options.cluster.map_or(1, |size| size.clamp(1, 3)))
}

/// Runs the embedded platform until `shutdown`. `replicas`: the count
/// asked for (see [`dev_replicas`]).
pub async fn run(
    options: DevOptions,
    replicas: Option<usize>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = if options.secure {
        Some(prepare_auth(&options)?)
    } else {
        None
    };
    let auth = auth.as_ref();
    let replicas = dev_replicas(&options, replicas);
    if replicas > options.cluster.unwrap_or(1) {
        anyhow::bail!(
            "--replicas {replicas} needs as many servers: start them with --cluster {replicas}"
        );
    }
    comfaas_platform::resources::set_replicas(replicas)?;
    check_ports(&options)?;
    let stages = Stages::new();
    // Removed when dev returns (the server stores are their own handles').
    let data = tempfile::Builder::new().prefix("comfaas-dev-").tempdir()?;
    println!("starting nats-server…");
    let (servers, nodes) = start_servers(&options, auth, data.path()).await?;
    let url = servers.edge_url();
    let nats = as_role(auth, &url, "operator");
    let probe = nats.connect("comfaas dev probe").await?;
    let version = comfaas_platform::nats::server_version(&probe)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| e.to_string());
    drop(probe);
    let limit = options.store_limit.map_or(String::new(), |bytes| {
        format!("; at most {} MiB of disk", bytes >> 20)
    });
    stages.done(&format!(
        "nats-server {version} with JetStream at {url} (store {}; streams, buckets and stores at R{replicas}{limit})",
        servers.edge_store()
    ));
    let mqtt_port = servers.mqtt_port();
    if let Some(port) = mqtt_port {
        let scheme = if auth.and_then(AuthDir::tls_ca).is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        stages.done(&format!(
            "MQTT devices at {scheme}://127.0.0.1:{port}: publish on {}, results on {}",
            comfaas_schemas::names::mqtt::topic(&nats.subjects().event("<fn>")),
            comfaas_schemas::names::mqtt::topic(&nats.subjects().result("<fn>"))
        ));
    }

    let mut services = JoinSet::new();
    let dispatch_metrics = metrics_addr(&options, 0);
    let dispatcher = Dispatcher::connect(DispatchConfig {
        nats: as_role(auth, &url, "dispatcher"),
        id: "dispatch-dev".to_owned(),
        metrics_addr: dispatch_metrics.clone(),
        ..DispatchConfig::default()
    })
    .await?;
    services.spawn(service(
        "the dispatcher dispatch-dev".to_owned(),
        dispatcher.run(shutdown.clone()),
        shutdown.clone(),
    ));
    stages.done("dispatcher dispatch-dev up");
    print_metrics_url("dispatcher", &dispatch_metrics);
    // Wheels fetched by scripts/setup.sh spare the index a trip; one cargo
    // target folder lets both executors share the Rust build.
    let wheelhouse = Some(comfaas_runtime::default_wheelhouse()).filter(|d| d.is_dir());
    // Secure: each node on its own key, installing only what the
    // operator signed.
    let operator = auth
        .map(|a| Signer::from_file(&a.role_file("operator")))
        .transpose()?;
    let trusted_operators: Vec<String> = operator.iter().map(Signer::public_key).collect();
    let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for (index, node) in (0u32..).zip(nodes) {
        let node_nats = match auth {
            Some(a) => NatsOptions {
                nkey_file: Some(a.node_file(&node.name)),
                tls_ca_file: a.tls_ca(),
                ..node.nats
            },
            None => node.nats,
        };
        let config = ExecConfig {
            nats: node_nats,
            trusted_operators: trusted_operators.clone(),
            find_links: wheelhouse.iter().cloned().collect(),
            cargo_target_dir: data.path().join("cargo-target"),
            data_dir: data.path().join(&node.name),
            node: node.name,
            tier: node.tier,
            site: node.site,
            slots: options.slots.unwrap_or(0),
            max_procs: options.max_procs.unwrap_or(node.max_procs),
            // Executors sharing this host hand out uids from ranges of
            // their own, so no two functions share a user.
            sandbox: node_sandbox(index),
            metrics_addr: metrics_addr(&options, u16::try_from(index + 1).unwrap_or(u16::MAX)),
            ..ExecConfig::default()
        };
        let what = format!(
            "executor {} ({}, {} slots, at most {} processes per job{}) up",
            config.node,
            config.tier,
            config.slots(),
            config.max_procs(),
            oversubscribed(config.max_procs())
        );
        let (node_name, node_metrics) = (config.node.clone(), config.metrics_addr.clone());
        let executor = Executor::connect(config).await?;
        services.spawn(service(
            format!("the executor {node_name}"),
            executor.run(shutdown.clone()),
            shutdown.clone(),
        ));
        stages.done(&what);
        print_metrics_url(&node_name, &node_metrics);
    }

    let client = nats.connect("comfaas dev").await?;
    // Deploying before the executors serve would call a function installed
    // that no node has.
    nodes_heard(
        &client,
        &nats.subjects(),
        &node_names,
        &mut services,
        &stages,
    )
    .await?;
    // Failed runs (function, id, code, the start of their traceback) are printed as they happen.
    services.spawn(service(
        "the printer of failed runs".to_owned(),
        crate::logs::print_failed_runs(
            client.clone(),
            nats.jetstream(client.clone()),
            nats.subjects(),
            shutdown.clone(),
        ),
        shutdown.clone(),
    ));
    let mut registry = Registry::open(&nats.jetstream(client.clone())).await?;
    if let Some(operator) = operator {
        // Secure: the nodes install only what the operator signed.
        registry = registry.signing_with(operator);
    }
    deploy_all(&client, &registry, &nats, &options.functions, &stages).await;
    // The live web page, read-only, as the observer. A port in use costs
    // the page, not the platform: said in one line, and dev goes on.
    if !options.no_dashboard {
        let observer = as_role(auth, &url, "observer");
        let watcher = observer.connect("comfaas dev dashboard").await?;
        let source = crate::dashboard::Source {
            jetstream: observer.jetstream(watcher.clone()),
            client: watcher,
            subjects: observer.subjects(),
        };
        match crate::dashboard::Dashboard::bind(source, options.dashboard_addr).await {
            Ok(dashboard) => {
                stages.done(&format!("dashboard at {}", dashboard.url()?));
                services.spawn(service(
                    "the dashboard".to_owned(),
                    dashboard.run(shutdown.clone()),
                    shutdown.clone(),
                ));
            }
            Err(e) => eprintln!(
                "comfaas: warning: {e:#}; choose another with --dashboard-addr, or --no-dashboard"
            ),
        }
    }
    println!();
    stages.done("comfaas is up. Try:");
    match auth {
        None => {
            println!("  comfaas --nats-url {url} invoke hello --data '{{\"name\":\"x\"}}' -v");
            println!(
                "  nats -s {url} req {} '{{\"name\":\"x\"}}'",
                nats.subjects().invoke("hello")
            );
            println!("  COMFAAS_NATS_URL={url} comfaas nodes");
            if replicas > 1 {
                println!(
                    "  services of your own: COMFAAS_NATS_URL={url} COMFAAS_REPLICAS={replicas} comfaas-exec --node my-node"
                );
            }
        }
        Some(a) => {
            let ca = a
                .tls_ca()
                .map(|c| c.display().to_string())
                .unwrap_or_default();
            println!(
                "credentials (NKey seeds, one per role and node) in {}",
                a.dir().display()
            );
            println!(
                "  as a device:   comfaas --nats-url {url} --nkey {} --tls-ca {ca} invoke hello --data '{{\"name\":\"x\"}}' -v",
                a.role_file("device").display()
            );
            println!(
                "  as the operator: comfaas --nats-url {url} --nkey {} --tls-ca {ca} nodes",
                a.role_file("operator").display()
            );
            // A device may subscribe only to its own inbox prefix.
            let device_inbox = crate::auth::public_key(&a.role_file("device"))
                .map(|key| comfaas_schemas::names::inbox_prefix_of(&key))?;
            println!(
                "  nats CLI:      nats -s {url} --nkey {} --tlsca {ca} --inbox-prefix {device_inbox} req {} '{{\"name\":\"x\"}}'",
                a.role_file("device").display(),
                nats.subjects().invoke("hello")
            );
            println!(
                "  more devices:  comfaas auth add-device NAME {} (then the server reloads its configuration)",
                a.dir().display()
            );
        }
    }
    if let Some(port) = mqtt_port {
        let event = comfaas_schemas::names::mqtt::topic(&nats.subjects().event("hello"));
        let result = comfaas_schemas::names::mqtt::topic(&nats.subjects().result("hello"));
        match auth {
            None => {
                println!("  MQTT: mosquitto_sub -h 127.0.0.1 -p {port} -t {result} -v &");
                println!("        mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t {event} -m '{{\"name\":\"x\"}}'");
            }
            Some(a) => {
                let ca = a
                    .tls_ca()
                    .map(|c| format!(" --cafile {}", c.display()))
                    .unwrap_or_default();
                println!(
                    "  MQTT device `{MQTT_DEVICE}` (password in {}; more: comfaas auth add-mqtt-device NAME {}):",
                    a.mqtt_password_file(MQTT_DEVICE).display(),
                    a.dir().display()
                );
                println!(
                    "        mosquitto_pub -h 127.0.0.1 -p {port}{ca} -u {MQTT_DEVICE} -P \"$(cat {})\" -q 1 -t {event} -m '{{\"name\":\"x\"}}'",
                    a.mqtt_password_file(MQTT_DEVICE).display()
                );
            }
        }
    }
    println!("Ctrl-C stops everything.");

    // A service that stops on its own stops everything: a platform
    // without its dispatcher or a node is not the one shown above.
    let failed = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        Some(ended) = services.join_next() => service_ended(ended),
    };
    if let Some(e) = &failed {
        eprintln!("comfaas dev: {e:#}; stopping everything");
        shutdown.cancel();
    }
    println!("stopping…");
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(result) = services.join_next().await {
            if let Ok(Err(e)) = result {
                eprintln!("service stopped with an error: {e:#}");
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "services still busy after {}s: stopping them anyway",
            STOP_GRACE.as_secs()
        );
        services.shutdown().await;
    }
    servers.stop().await;
    failed.map_or(Ok(()), Err)
}

/// A service `comfaas dev` runs, named `what`: its error says which it was,
/// and it ending on its own before `shutdown` is an error too.
async fn service(
    what: String,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run.await.with_context(|| format!("{what} stopped"))?;
    if !shutdown.is_cancelled() {
        anyhow::bail!("{what} stopped on its own");
    }
    Ok(())
}

/// The error of a service task that ended; none when it ended without
/// one, which [`service`] does only once stopped.
fn service_ended(
    ended: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> Option<anyhow::Error> {
    match ended {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(anyhow::anyhow!("a service failed: {e}")),
    }
}

/// How long `comfaas dev` waits for its executors to serve: a node waits
/// for the stores it uses, which on a disk without room are never made.
const NODES_UP_WITHIN: Duration = Duration::from_secs(60);

/// Waits until each executor in `names` has reported its load (it serves
/// then: a node subscribes to its work before its first report), saying
/// every few seconds which are still silent. An error when one stays
/// silent past [`NODES_UP_WITHIN`], or when a service stops meanwhile.
async fn nodes_heard(
    client: &async_nats::Client,
    subjects: &comfaas_schemas::names::Subjects,
    names: &[String],
    services: &mut JoinSet<anyhow::Result<()>>,
    stages: &Stages,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let mut loads = client.subscribe(subjects.node_load_all()).await?;
    let mut silent: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let since = Instant::now();
    let mut tick = tokio::time::interval(STILL_WAITING_EVERY);
    tick.tick().await;
    while !silent.is_empty() {
        let list = || silent.iter().copied().collect::<Vec<_>>().join(", ");
        tokio::select! {
            message = loads.next() => {
                let message = message.context("the connection to nats-server closed")?;
                if let Ok(load) = comfaas_schemas::decode::<comfaas_schemas::NodeLoad>(&message.payload) {
                    silent.remove(load.node.as_str());
                }
            }
            Some(ended) = services.join_next() => {
                return Err(service_ended(ended)
                    .unwrap_or_else(|| anyhow::anyhow!("stopped before the executors served")));
            }
            _ = tick.tick() => {
                let waited = since.elapsed().as_secs();
                if since.elapsed() >= NODES_UP_WITHIN {
                    anyhow::bail!(
                        "executor {} not serving after {waited}s (the warnings above say what it waits for)",
                        list()
                    );
                }
                stages.done(&format!("waiting for executor {} to serve ({waited}s so far)…", list()));
            }
        }
    }
    Ok(())
}

/// Deploys every function folder under `root`, reporting each; a broken
/// one is reported and skipped.
pub async fn deploy_all(
    client: &async_nats::Client,
    registry: &Registry,
    nats: &NatsOptions,
    root: &Path,
    stages: &Stages,
) {
    let say = |what: &str| stages.done(what);
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say(&format!(
                "no functions folder at {}: starting with none (deploy with `comfaas deploy DIR`, or pass --functions DIR)",
                root.display()
            ));
            return;
        }
        Err(e) => {
            eprintln!("no functions deployed: cannot read {}: {e}", root.display());
            return;
        }
    };
    dirs.sort();
    if dirs.is_empty() {
        say(&format!(
            "no functions under {}: starting with none",
            root.display()
        ));
    }
    let mut deployed = Vec::new();
    for dir in dirs {
        match deploy::deploy_dir(registry, &dir).await {
            Ok(d) => {
                say(&format!(
                    "deploying {} {} ({}): uploaded, nodes installing…",
                    d.manifest.name, d.manifest.version, d.manifest.runtime
                ));
                deployed.push(d);
            }
            Err(e) => eprintln!("skipping {}: {e:#}", dir.display()),
        }
    }
    let subjects = nats.subjects();
    for d in deployed {
        // A compiled runtime may build for a while: say so now and then,
        // so a quiet terminal is not mistaken for a hung one.
        let waiting = deploy::wait_installed(client, &subjects, &d, Duration::from_secs(300));
        tokio::pin!(waiting);
        let since = Instant::now();
        let mut tick = tokio::time::interval(STILL_WAITING_EVERY);
        tick.tick().await;
        let installed = loop {
            tokio::select! {
                installed = &mut waiting => break installed,
                _ = tick.tick() => say(&format!(
                    "{} {}: still installing ({} runtime, {}s so far)…",
                    d.manifest.name,
                    d.manifest.version,
                    d.manifest.runtime,
                    since.elapsed().as_secs()
                )),
            }
        };
        match installed {
            Ok(installs) => {
                let ready = installs
                    .values()
                    .filter(|(state, _)| *state == comfaas_schemas::InstallState::Ready)
                    .count();
                let (name, version) = (&d.manifest.name, &d.manifest.version);
                say(&match (ready, installs.len()) {
                    (_, 0) => format!("{name} {version} deployed; no executor has it yet"),
                    (0, _) => format!("{name} {version} not installed"),
                    (ready, all) if ready == all => format!("{name} {version} installed"),
                    (ready, all) => format!("{name} {version} installed on {ready} of {all} nodes"),
                });
                deploy::report(&d, &installs);
            }
            Err(e) => eprintln!("{}: {e:#}", d.manifest.name),
        }
    }
}

/// How often `comfaas dev` says what it still waits for: executors to
/// serve, a function to be installed.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(5);

/// What the start-up line of an executor allowing `max_procs` processes per
/// job adds when that is more than the host's cores.
fn oversubscribed(max_procs: u32) -> String {
    let cores = comfaas_exec::cores();
    if max_procs > cores {
        format!(", oversubscribing {cores} cores")
    } else {
        String::new()
    }
}

/// The sandbox of the `index`th executor of this host: the default, with a
/// uid range of its own.
fn node_sandbox(index: u32) -> SandboxConfig {
    let default = SandboxConfig::default();
    SandboxConfig {
        uid_base: default.uid_base + index * default.uid_count,
        ..default
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        dev: DevOptions,
    }

    fn check(args: &[&str], asked: Option<usize>, expect: usize) {
        let flags = Flags::try_parse_from(std::iter::once("dev").chain(args.iter().copied()))
            .expect("flags parse");
        assert_eq!(
            dev_replicas(&flags.dev, asked),
            expect,
            "{args:?} {asked:?}"
        );
    }

    #[test]
    fn a_store_limit_is_a_size_of_at_least_a_mebibyte() {
        assert_eq!(parse_store_limit("2GB"), Ok(2 << 30));
        assert_eq!(parse_store_limit("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_store_limit("1tib"), Ok(1 << 40));
        assert_eq!(parse_store_limit("1048576"), Ok(1 << 20));
        for bad in [
            "",
            "2",
            "GB",
            "2 PB",
            "-1GB",
            "1.5GB",
            "1KB",
            "99999999999TB",
        ] {
            let error = parse_store_limit(bad).unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{bad}: {error}");
        }
    }

    #[test]
    fn replicas_follow_the_cluster_unless_asked() {
        check(&[], None, 1);
        check(&["--cluster", "3"], None, 3);
        check(&["--cluster", "2"], None, 2);
        check(&["--cluster", "3"], Some(1), 1);
        check(&[], Some(3), 3);
    }

    #[test]
    fn a_cluster_goes_with_neither_sites_nor_secure() {
        let cluster: &[&str] = &["dev", "--cluster", "3"];
        assert!(Flags::try_parse_from(cluster).is_ok());
        for extra in [&["--sites", "edge,chicago"][..], &["--secure"][..]] {
            let args = [cluster, extra].concat();
            assert!(Flags::try_parse_from(&args).is_err(), "{args:?}");
        }
    }
}
