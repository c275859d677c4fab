//! `comfaas deploy DIR`: validate, pack, store, and wait until executors
//! have installed it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use comfaas_platform::registry::{Deployed, Registry, RegistryError, SameVersion};
use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, Deployment, InstallState, Manifest, NodeLoad, MANIFEST_FILE};
use futures::StreamExt;
use serde::Serialize;

use crate::output;

/// Reads and validates `dir/comfaas.toml`; an error names the file, line
/// and column (`dir/comfaas.toml:3:1: field `name`: ...`).
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Manifest::from_toml(&text).map_err(|e| anyhow::anyhow!("{}", e.in_file(&path)))
}

/// Validates, packs and stores the function in `dir`, replacing whatever
/// was deployed under its version: the folder on disk is what runs (what
/// `comfaas dev` and the tests want). `comfaas deploy` uses
/// [`deploy_dir_with`] and refuses that unless `--force`.
pub async fn deploy_dir(registry: &Registry, dir: &Path) -> anyhow::Result<Deployment> {
    Ok(deploy_dir_with(registry, dir, SameVersion::Replace)
        .await?
        .into_deployment())
}

/// Validates the manifest, checks its entry is a file the bundle holds,
/// packs and stores the function in `dir`; a version deployed before with
/// other content is refused or replaced as `same_version` says.
pub async fn deploy_dir_with(
    registry: &Registry,
    dir: &Path,
    same_version: SameVersion,
) -> anyhow::Result<Deployed> {
    let manifest = read_manifest(dir)?;
    comfaas_runtime::check_entry(dir, &manifest.entry)?;
    let folder = dir.to_path_buf();
    let bundle = tokio::task::spawn_blocking(move || comfaas_runtime::pack(&folder))
        .await?
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    match registry
        .deploy(manifest, bundle.bytes.into(), &bundle.digest, same_version)
        .await
    {
        Err(e @ RegistryError::VersionTaken { .. }) => Err(anyhow::anyhow!(
            "{e}: raise `version` in {}, or deploy with --force to replace it \
             (nodes then install the new content)",
            dir.join(MANIFEST_FILE).display()
        )),
        other => Ok(other?),
    }
}

/// Install state of one deployment on each node that reported it.
pub type Installs = BTreeMap<String, (InstallState, Option<String>)>;

/// Waits until every node heard from has installed (or failed to install)
/// `deployment`, or `timeout` passes, but never less than a heartbeat
/// round: an empty answer means no node is running, not that none was
/// heard yet. Returns what each node reported.
pub async fn wait_installed(
    client: &async_nats::Client,
    subjects: &Subjects,
    deployment: &Deployment,
    timeout: Duration,
) -> anyhow::Result<Installs> {
    wait_installed_showing(client, subjects, deployment, timeout, None).await
}

/// [`wait_installed`], showing each node's install state as it changes on
/// `progress` (a line per node on stderr, drawn only on a terminal).
pub async fn wait_installed_showing(
    client: &async_nats::Client,
    subjects: &Subjects,
    deployment: &Deployment,
    timeout: Duration,
    mut progress: Option<&mut InstallProgress>,
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
            || started.elapsed() >= timeout.max(settle)
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
        if let Some(progress) = progress.as_deref_mut() {
            progress.show(&load.node, state.as_ref());
        }
        nodes.insert(load.node, state);
    }
    if let Some(progress) = progress {
        progress.finish();
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
    print_deployed(deployment);
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

/// The line naming what was deployed.
fn print_deployed(deployment: &Deployment) {
    let m = &deployment.manifest;
    println!(
        "deployed {} {} ({}, bundle {} of {} bytes, {})",
        m.name,
        m.version,
        m.runtime,
        deployment
            .bundle
            .digest
            .get(..19)
            .unwrap_or(&deployment.bundle.digest),
        deployment.bundle.size,
        match &deployment.signature {
            Some(s) => format!("signed by {}", s.signer),
            None => "unsigned".to_owned(),
        }
    );
}

/// Waits up to `wait_s` seconds (0: not at all, and says so; else at
/// least a heartbeat round) for nodes to install `deployment`, showing
/// their states as they change (on a terminal), prints what they report
/// (with `json`, as [`DeployReport`]), and fails when none could.
pub async fn wait_and_report(
    client: &async_nats::Client,
    subjects: &Subjects,
    deployment: &Deployment,
    wait_s: u64,
    json: bool,
) -> anyhow::Result<()> {
    if wait_s == 0 {
        // Nothing was heard: say so rather than report an empty node set.
        if json {
            report_json(deployment, &Installs::default())?;
        } else {
            print_deployed(deployment);
            println!("  not waited for executors (--wait 0): `comfaas ls` shows each node's state");
        }
        return Ok(());
    }
    let mut progress = InstallProgress::new(deployment);
    let timeout = Duration::from_secs(wait_s);
    let installs =
        wait_installed_showing(client, subjects, deployment, timeout, Some(&mut progress)).await?;
    let ready = if json {
        report_json(deployment, &installs)?
    } else {
        report(deployment, &installs)
    };
    if !ready {
        anyhow::bail!(
            "no node could install {} {}",
            deployment.manifest.name,
            deployment.manifest.version
        );
    }
    Ok(())
}

/// What `comfaas deploy --json` (and `rollback --json`) prints.
#[derive(Debug, Serialize)]
pub struct DeployReport<'a> {
    /// Function name.
    pub name: &'a str,
    /// The version deployed.
    pub version: &'a str,
    /// Its runtime.
    pub runtime: &'static str,
    /// The bundle's digest (`sha256:<hex>`).
    pub digest: &'a str,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The operator key that signed it, if any.
    pub signed_by: Option<&'a str>,
    /// What each node reported (none: nothing was waited for, or no
    /// executor runs).
    pub nodes: Vec<NodeInstall<'a>>,
    /// Whether at least one node serves it (or none was asked).
    pub ready: bool,
}

/// One node's install state in a [`DeployReport`].
#[derive(Debug, Serialize)]
pub struct NodeInstall<'a> {
    /// The node.
    pub node: &'a str,
    /// `installing`, `ready` or `failed`.
    pub state: &'static str,
    /// Why it failed or is still installing, if the node said.
    pub reason: Option<&'a str>,
}

/// Prints what [`wait_installed`] found as one JSON [`DeployReport`];
/// `false` when no node is ready.
pub fn report_json(deployment: &Deployment, installs: &Installs) -> anyhow::Result<bool> {
    let m = &deployment.manifest;
    let ready = installs.is_empty() || installs.values().any(|(s, _)| *s == InstallState::Ready);
    output::json(&DeployReport {
        name: &m.name,
        version: &m.version,
        runtime: m.runtime.as_str(),
        digest: &deployment.bundle.digest,
        size: deployment.bundle.size,
        signed_by: deployment.signature.as_ref().map(|s| s.signer.as_str()),
        nodes: installs
            .iter()
            .map(|(node, (state, reason))| NodeInstall {
                node,
                state: state_name(*state),
                reason: reason.as_deref(),
            })
            .collect(),
        ready,
    })?;
    Ok(ready)
}

/// One line per node on stderr showing its install state as it changes,
/// drawn only when stderr is a terminal.
pub struct InstallProgress {
    bars: indicatif::MultiProgress,
    nodes: BTreeMap<String, (indicatif::ProgressBar, Option<InstallState>)>,
    what: String,
}

impl InstallProgress {
    /// Progress of installing `deployment`.
    pub fn new(deployment: &Deployment) -> Self {
        Self {
            bars: indicatif::MultiProgress::new(),
            nodes: BTreeMap::new(),
            what: format!(
                "{} {}",
                deployment.manifest.name, deployment.manifest.version
            ),
        }
    }

    /// Shows `node`'s state (`None`: it has not started on it yet).
    pub fn show(&mut self, node: &str, state: Option<&(InstallState, Option<String>)>) {
        let what = &self.what;
        let bars = &self.bars;
        let (bar, shown) = self.nodes.entry(node.to_owned()).or_insert_with(|| {
            let bar = bars.add(output::spinner(format!("{node}: waiting for {what}")));
            (bar, None)
        });
        let now = state.map(|(s, _)| *s);
        if *shown == now && now.is_some() {
            return;
        }
        *shown = now;
        let text = match state {
            None => format!("{node}: waiting for {what}"),
            Some((s, Some(reason))) => format!("{node}: {} {what} ({reason})", state_name(*s)),
            Some((s, None)) => format!("{node}: {} {what}", state_name(*s)),
        };
        match now {
            Some(InstallState::Ready | InstallState::Failed) => bar.finish_with_message(text),
            _ => bar.set_message(text),
        }
    }

    /// Stops drawing (the final report follows on stdout).
    pub fn finish(&mut self) {
        for (bar, _) in self.nodes.values() {
            bar.finish_and_clear();
        }
        let _ = self.bars.clear();
    }
}

/// `installing`, `ready` or `failed`.
pub fn state_name(state: InstallState) -> &'static str {
    match state {
        InstallState::Installing => "installing",
        InstallState::Ready => "ready",
        InstallState::Failed => "failed",
    }
}
