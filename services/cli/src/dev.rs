//! `comfaas dev`: the embedded default. One `nats-server` with JetStream in
//! a temporary directory, one dispatcher, one edge and one or more cloud
//! executors, all in this process, and every function under `functions/`
//! deployed. With `--sites edge,chicago,…`, one server per site joined by
//! leaf links, one executor per site, the dispatcher at the edge, and the
//! edge's data mirrored at the hub.

use std::path::{Path, PathBuf};
use std::time::Duration;

use comfaas_dispatch::{DispatchConfig, Dispatcher};
use comfaas_exec::{ExecConfig, Executor};
use comfaas_platform::nats::NatsOptions;
use comfaas_platform::registry::Registry;
use comfaas_platform::server::{wait_for_leaf_link, EmbeddedServer, ServerOptions};
use comfaas_schemas::{Tier, MANIFEST_FILE};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deploy;

/// What `comfaas dev` starts.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Client port of the embedded server.
    pub port: u16,
    /// Folder whose sub-folders with a `comfaas.toml` are deployed.
    pub functions: PathBuf,
    /// Cloud executors to start besides the edge one.
    pub clouds: u32,
    /// Slots per executor (0: one per core).
    pub slots: u32,
    /// Sites, one `nats-server` each (`edge` plus cloud sites, the first
    /// cloud being the hub the others join as leaf nodes); empty: one server.
    pub sites: Vec<String>,
    /// Folder of the server configurations (`hub.conf`, `leaf.conf`).
    pub nats_configs: PathBuf,
}

/// One executor `comfaas dev` starts.
struct Node {
    name: String,
    tier: Tier,
    site: String,
    nats: NatsOptions,
    max_procs: u32,
}

/// Most processes per job at the edge and in the cloud, as in the paper.
const EDGE_MAX_PROCS: u32 = 4;
const CLOUD_MAX_PROCS: u32 = 16;

/// Starts one server per site: the first cloud site is the hub, the edge
/// and the other clouds join it as leaf nodes, each site its own JetStream
/// domain. Returns the servers (edge first) and the executors to start.
async fn start_sites(options: &DevOptions) -> anyhow::Result<(Vec<EmbeddedServer>, Vec<Node>)> {
    if options.sites.is_empty() {
        let server = EmbeddedServer::start(ServerOptions {
            port: Some(options.port),
            ..ServerOptions::default()
        })
        .await?;
        let nats = NatsOptions::for_url(server.url());
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
        return Ok((vec![server], nodes));
    }
    let clouds: Vec<&String> = options.sites.iter().filter(|s| *s != "edge").collect();
    let (Some(hub), true) = (clouds.first(), options.sites.iter().any(|s| s == "edge")) else {
        anyhow::bail!("--sites needs `edge` and at least one cloud site, e.g. edge,chicago");
    };
    let leaf_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let configs = &options.nats_configs;
    let hub_server = EmbeddedServer::start(ServerOptions::hub(configs, hub, leaf_port)).await?;
    let leaf = |site: &str, port: Option<u16>| ServerOptions {
        port,
        ..ServerOptions::leaf(configs, site, leaf_port)
    };
    let edge = EmbeddedServer::start(leaf("edge", Some(options.port))).await?;
    let mut nodes = vec![Node {
        name: "edge-1".to_owned(),
        tier: Tier::Edge,
        site: "edge".to_owned(),
        nats: NatsOptions::for_url(edge.url()),
        max_procs: EDGE_MAX_PROCS,
    }];
    let mut servers = vec![edge];
    for (i, site) in clouds.iter().enumerate() {
        let server = if i == 0 {
            None
        } else {
            Some(EmbeddedServer::start(leaf(site, None)).await?)
        };
        let url = server
            .as_ref()
            .map_or(hub_server.url(), |s| s.url())
            .to_owned();
        println!(
            "site {site}: nats-server at {url}{}",
            if i == 0 { " (hub)" } else { "" }
        );
        nodes.push(Node {
            name: format!("{site}-1"),
            tier: Tier::Cloud,
            site: (*site).clone(),
            // Cloud nodes read the edge's registry and inputs across the link.
            nats: NatsOptions {
                js_domain: Some("edge".to_owned()),
                ..NatsOptions::for_url(url)
            },
            max_procs: CLOUD_MAX_PROCS,
        });
        servers.extend(server);
    }
    // The edge's data is kept in the cloud: the hub mirrors it.
    let hub_client = NatsOptions::for_url(hub_server.url())
        .connect("comfaas dev backup")
        .await?;
    let edge_client = NatsOptions::for_url(servers[0].url())
        .connect("comfaas dev probe")
        .await?;
    wait_for_leaf_link(&edge_client, &hub_client, Duration::from_secs(30)).await?;
    servers.push(hub_server);
    comfaas_platform::resources::backup_edge(&async_nats::jetstream::new(hub_client), "edge")
        .await?;
    Ok((servers, nodes))
}

/// Runs the embedded platform until `shutdown`.
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (servers, nodes) = start_sites(&options).await?;
    let url = servers[0].url().to_owned();
    println!(
        "nats-server with JetStream at {url} (store {})",
        servers[0].store_dir().display()
    );
    let data = tempfile::Builder::new().prefix("comfaas-dev-").tempdir()?;

    let mut services = JoinSet::new();
    let nats = NatsOptions::for_url(&url);
    let dispatcher = Dispatcher::connect(DispatchConfig {
        nats: nats.clone(),
        id: "dispatch-dev".to_owned(),
        ..DispatchConfig::default()
    })
    .await?;
    services.spawn(dispatcher.run(shutdown.clone()));
    // Wheels fetched by scripts/setup.sh spare the index a trip; one cargo
    // target folder lets both executors share the Rust build.
    let wheelhouse = Some(comfaas_runtime::default_wheelhouse()).filter(|d| d.is_dir());
    for node in nodes {
        let config = ExecConfig {
            nats: node.nats,
            find_links: wheelhouse.iter().cloned().collect(),
            cargo_target_dir: data.path().join("cargo-target"),
            data_dir: data.path().join(&node.name),
            node: node.name,
            tier: node.tier,
            site: node.site,
            slots: options.slots,
            max_procs: node.max_procs,
            ..ExecConfig::default()
        };
        println!("executor {} ({}) started", config.node, config.tier);
        let executor = Executor::connect(config).await?;
        services.spawn(executor.run(shutdown.clone()));
    }

    let client = nats.connect("comfaas dev").await?;
    let registry = Registry::open(&nats.jetstream(client.clone())).await?;
    deploy_all(&client, &registry, &nats, &options.functions).await;
    println!();
    println!("comfaas is up. Try:");
    println!("  comfaas invoke hello --data '{{\"name\":\"x\"}}' -v");
    println!(
        "  nats -s {url} req {} '{{\"name\":\"x\"}}'",
        nats.subjects().invoke("hello")
    );
    println!("  COMFAAS_NATS_URL={url} comfaas nodes");
    println!("Ctrl-C stops everything.");

    shutdown.cancelled().await;
    println!("stopping…");
    while let Some(result) = services.join_next().await {
        if let Ok(Err(e)) = result {
            eprintln!("service stopped with an error: {e:#}");
        }
    }
    for server in servers {
        server.stop().await;
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
) {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect(),
        Err(e) => {
            eprintln!("no functions deployed: cannot read {}: {e}", root.display());
            return;
        }
    };
    dirs.sort();
    let mut deployed = Vec::new();
    for dir in dirs {
        match deploy::deploy_dir(registry, &dir).await {
            Ok(d) => deployed.push(d),
            Err(e) => eprintln!("skipping {}: {e:#}", dir.display()),
        }
    }
    let subjects = nats.subjects();
    for d in deployed {
        match deploy::wait_installed(client, &subjects, &d, Duration::from_secs(300)).await {
            Ok(installs) => {
                deploy::report(&d, &installs);
            }
            Err(e) => eprintln!("{}: {e:#}", d.manifest.name),
        }
    }
}
