//! `comfaas deploy DIR`: validate, pack, store, and wait until executors
//! have installed it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use comfaas_platform::registry::Registry;
use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, Deployment, InstallState, Manifest, NodeLoad, MANIFEST_FILE};
use futures::StreamExt;

/// Reads and validates `dir/comfaas.toml`.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Manifest::from_toml(&text).with_context(|| format!("{} is invalid", path.display()))
}

/// Validates, packs and stores the function in `dir`; returns its deployment.
pub async fn deploy_dir(registry: &Registry, dir: &Path) -> anyhow::Result<Deployment> {
    let manifest = read_manifest(dir)?;
    let folder = dir.to_path_buf();
    let bundle = tokio::task::spawn_blocking(move || comfaas_runtime::pack(&folder))
        .await?
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    let deployment = registry
        .deploy(manifest, bundle.bytes.into(), &bundle.digest)
        .await?;
    Ok(deployment)
}

/// Install state of one deployment on each node that reported it.
pub type Installs = BTreeMap<String, (InstallState, Option<String>)>;

/// Waits until every node heard from has installed (or failed to install)
/// `deployment`, or `timeout` passes. Returns what each node reported.
pub async fn wait_installed(
    client: &async_nats::Client,
    subjects: &Subjects,
    deployment: &Deployment,
    timeout: Duration,
) -> anyhow::Result<Installs> {
    let mut loads = client.subscribe(subjects.node_load_all()).await?;
    let started = Instant::now();
    let mut nodes: BTreeMap<String, Option<(InstallState, Option<String>)>> = BTreeMap::new();
    // Every node heartbeats at least this often: after it, the set of nodes is known.
    let settle = Duration::from_millis(1500);
    loop {
        let done = !nodes.is_empty()
            && started.elapsed() >= settle
            && nodes
                .values()
                .all(|s| matches!(s, Some((InstallState::Ready | InstallState::Failed, _))));
        if done
            || started.elapsed() >= timeout
            || (nodes.is_empty() && started.elapsed() >= settle * 2)
        {
            break;
        }
        let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(250), loads.next()).await
        else {
            continue;
        };
        let Ok(load) = decode::<NodeLoad>(&message.payload) else {
            continue;
        };
        let state = load
            .functions
            .iter()
            .find(|f| f.name == deployment.manifest.name && f.digest == deployment.bundle.digest)
            .map(|f| (f.state, f.reason.clone()));
        nodes.insert(load.node, state);
    }
    Ok(nodes
        .into_iter()
        .map(|(node, state)| {
            (
                node,
                state.unwrap_or((InstallState::Installing, Some("not started yet".to_owned()))),
            )
        })
        .collect())
}

/// Prints what [`wait_installed`] found; `false` when no node is ready.
pub fn report(deployment: &Deployment, installs: &Installs) -> bool {
    let m = &deployment.manifest;
    println!(
        "deployed {} {} ({}, bundle {} of {} bytes, {})",
        m.name,
        m.version,
        m.runtime,
        &deployment.bundle.digest[..deployment.bundle.digest.len().min(19)],
        deployment.bundle.size,
        match &deployment.signature {
            Some(s) => format!("signed by {}", s.signer),
            None => "unsigned".to_owned(),
        }
    );
    if installs.is_empty() {
        println!("  no executor is running: it installs when one starts");
        return true;
    }
    for (node, (state, reason)) in installs {
        match reason {
            Some(reason) => println!("  {node}: {} ({reason})", state_name(*state)),
            None => println!("  {node}: {}", state_name(*state)),
        }
    }
    installs.values().any(|(s, _)| *s == InstallState::Ready)
}

/// Waits up to `wait_s` seconds (0: not at all) for nodes to install
/// `deployment`, prints what they report, and fails when none could.
pub async fn wait_and_report(
    client: &async_nats::Client,
    subjects: &Subjects,
    deployment: &Deployment,
    wait_s: u64,
) -> anyhow::Result<()> {
    let installs = if wait_s == 0 {
        Installs::default()
    } else {
        wait_installed(client, subjects, deployment, Duration::from_secs(wait_s)).await?
    };
    if !report(deployment, &installs) {
        anyhow::bail!(
            "no node could install {} {}",
            deployment.manifest.name,
            deployment.manifest.version
        );
    }
    Ok(())
}

/// `installing`, `ready` or `failed`.
pub fn state_name(state: InstallState) -> &'static str {
    match state {
        InstallState::Installing => "installing",
        InstallState::Ready => "ready",
        InstallState::Failed => "failed",
    }
}
