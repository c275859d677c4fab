//! `comfaas dev`: the embedded default. One `nats-server` with JetStream in
//! a temporary directory, one dispatcher, one edge and one or more cloud
//! executors, all in this process, and every function under `functions/`
//! deployed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use comfaas_dispatch::{DispatchConfig, Dispatcher};
use comfaas_exec::{ExecConfig, Executor};
use comfaas_platform::nats::NatsOptions;
use comfaas_platform::registry::Registry;
use comfaas_platform::server::{EmbeddedServer, ServerOptions};
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
}

/// Runs the embedded platform until `shutdown`.
pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = EmbeddedServer::start(ServerOptions {
        port: Some(options.port),
        ..ServerOptions::default()
    })
    .await?;
    let url = server.url().to_owned();
    println!(
        "nats-server with JetStream at {url} (store {})",
        server.store_dir().display()
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
    let mut nodes = vec![("edge-1".to_owned(), Tier::Edge, "edge".to_owned())];
    for i in 1..=options.clouds {
        nodes.push((format!("cloud-{i}"), Tier::Cloud, "cloud".to_owned()));
    }
    // Wheels fetched by scripts/setup.sh spare the index a trip; one cargo
    // target folder lets both executors share the Rust build.
    let wheelhouse = std::env::var_os("COMFAAS_WHEELHOUSE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/comfaas/wheels"))
        })
        .filter(|d| d.is_dir());
    for (node, tier, site) in nodes {
        let config = ExecConfig {
            nats: nats.clone(),
            find_links: wheelhouse.iter().cloned().collect(),
            cargo_target_dir: data.path().join("cargo-target"),
            data_dir: data.path().join(&node),
            node,
            tier,
            site,
            slots: options.slots,
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
    server.stop().await;
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
