//! The functions this node serves: one entry per deployed function, with
//! the version wanted, its install state and the version serving. A new
//! version installs beside the one serving and replaces it only once ready;
//! a failed install leaves the old one serving; a version's files go when
//! the last run on it ends. The install pipeline lives in `install`; this
//! table only records what it wants and what it got.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use comfaas_runtime::{HandlerPool, Installation, Sandbox};
use comfaas_schemas::{Deployment, FunctionState, InstallState, InstallTimes, Procs};

/// An installed version, shared by the runs using it. Its files are removed
/// when the last holder lets go (it was replaced or removed, and the last
/// run on it ended).
#[derive(Debug)]
pub struct Served {
    /// Version label.
    pub version: String,
    /// How to run it.
    pub installation: Installation,
    /// What its runs and warm workers may see.
    pub sandbox: Sandbox,
    /// The manifest's run time limit.
    pub timeout: Option<Duration>,
    /// The manifest's MPI process count or range.
    pub procs: Option<Procs>,
    /// Warm workers, in handler mode.
    pub pool: Option<Arc<HandlerPool>>,
    /// The folder holding the version's bundle, environment and workers.
    pub root: PathBuf,
}

/// What a lookup found for a function name.
pub enum Lookup {
    /// Ready to run.
    Ready(Arc<Served>),
    /// Deployed but not servable here (installing, or its install failed).
    NotReady(String),
    /// Not deployed.
    Unknown,
}

/// The node's functions, shared by the installer, the worker and the heartbeat.
#[derive(Clone, Default)]
pub struct FunctionTable {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    changed: Arc<tokio::sync::Notify>,
}

/// One function as this node knows it.
struct Entry {
    wanted: Deployment,
    state: InstallState,
    reason: Option<String>,
    serving: Option<Arc<Served>>,
    /// Where the last ended install's time went.
    install: Option<InstallTimes>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let root = std::mem::take(&mut self.root);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                tracing::debug!("cannot remove {}: {e}", root.display());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

impl FunctionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves when an install starts, ends or a function is removed, so
    /// the heartbeat tells dispatchers at once instead of up to a period later.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Finds what to run for `name`.
    pub fn lookup(&self, name: &str) -> Lookup {
        match self.lock().get(name) {
            None => Lookup::Unknown,
            Some(Entry {
                serving: Some(s), ..
            }) => Lookup::Ready(s.clone()),
            Some(e) => Lookup::NotReady(match (&e.state, &e.reason) {
                (InstallState::Failed, Some(reason)) => {
                    format!("its install failed: {reason}")
                }
                _ => "it is still installing".to_owned(),
            }),
        }
    }

    /// Every function's state, for the heartbeat.
    pub fn states(&self) -> Vec<FunctionState> {
        let mut states: Vec<FunctionState> = self
            .lock()
            .iter()
            .map(|(name, e)| FunctionState {
                name: name.clone(),
                version: e.wanted.manifest.version.clone(),
                digest: e.wanted.bundle.digest.clone(),
                state: e.state,
                reason: e.reason.clone(),
                serving: e.serving.as_ref().map(|s| s.version.clone()),
                install: e.install.clone(),
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Records a new wanted deployment: `true` when it must be installed,
    /// `false` when it is already the one installed or being installed.
    pub fn want(&self, deployment: &Deployment) -> bool {
        let mut entries = self.lock();
        let name = deployment.manifest.name.clone();
        match entries.get_mut(&name) {
            // The same bundle again: nothing to install.
            Some(e)
                if e.wanted.bundle.digest == deployment.bundle.digest
                    && e.state != InstallState::Failed =>
            {
                e.wanted = deployment.clone();
                false
            }
            Some(e) => {
                e.wanted = deployment.clone();
                e.state = InstallState::Installing;
                e.reason = None;
                e.install = None;
                self.changed.notify_one();
                true
            }
            None => {
                self.changed.notify_one();
                entries.insert(
                    name,
                    Entry {
                        wanted: deployment.clone(),
                        state: InstallState::Installing,
                        reason: None,
                        serving: None,
                        install: None,
                    },
                );
                true
            }
        }
    }

    /// Records that `deployment` was refused before any install (its
    /// signature did not hold): it is the deployment this node was asked
    /// for, failed with `reason`, and whatever version was serving goes on
    /// serving. Deploying a good one again installs it.
    pub fn refuse(&self, deployment: &Deployment, reason: &str) {
        self.want(deployment);
        self.finish(deployment, Err::<Served, _>(reason));
    }

    /// Applies an install's result if `deployment` is still the one wanted;
    /// otherwise `result` drops (and its files with it). Of a failure only
    /// the text is kept: it travels in every heartbeat.
    pub fn finish(&self, deployment: &Deployment, result: Result<Served, impl std::fmt::Display>) {
        self.finish_timed(deployment, result, None);
    }

    /// [`FunctionTable::finish`], keeping where the install's time went for
    /// the heartbeat's `FunctionState`.
    pub fn finish_timed(
        &self,
        deployment: &Deployment,
        result: Result<Served, impl std::fmt::Display>,
        times: Option<InstallTimes>,
    ) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&deployment.manifest.name) else {
            return; // removed meanwhile
        };
        if entry.wanted.bundle.digest != deployment.bundle.digest {
            return; // superseded by a newer deploy
        }
        entry.install = times;
        match result {
            Ok(served) => {
                entry.state = InstallState::Ready;
                entry.reason = None;
                entry.serving = Some(Arc::new(served));
            }
            Err(reason) => {
                entry.state = InstallState::Failed;
                // Bounded: it travels in every heartbeat.
                entry.reason = Some(comfaas_platform::reply::header_text(&reason.to_string()));
            }
        }
        self.changed.notify_one();
    }

    /// Forgets `name`; its serving version goes when its last run ends.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.changed.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use comfaas_schemas::{BundleRef, Manifest, SCHEMA_VERSION};

    use comfaas_runtime::Sandboxes;

    use super::*;

    fn deployment(name: &str, version: &str, digest: &str) -> Deployment {
        let manifest = Manifest::from_toml(&format!(
            "name = \"{name}\"\nversion = \"{version}\"\nruntime = \"python\"\nentry = \"main.py\""
        ))
        .unwrap();
        Deployment {
            schema: SCHEMA_VERSION,
            manifest,
            bundle: BundleRef {
                object: format!("sha256-{digest}"),
                digest: format!("sha256:{digest}"),
                size: 1,
            },
            deployed_unix_ms: 0,
            signature: None,
        }
    }

    /// A served version whose files are the folder `root`.
    fn served(version: &str, root: &Path) -> Served {
        std::fs::create_dir_all(root).unwrap();
        let installation = Installation {
            runtime: comfaas_schemas::Runtime::Python,
            bundle_dir: root.join("bundle"),
            env_dir: root.join("env"),
            program: "/usr/bin/python3".into(),
            args: Vec::new(),
            path: Vec::new(),
        };
        Served {
            version: version.to_owned(),
            sandbox: Sandboxes::none()
                .sandbox(
                    &installation,
                    &deployment("f", version, "00").manifest,
                    "edge-1",
                )
                .unwrap(),
            installation,
            timeout: None,
            procs: None,
            pool: None,
            root: root.to_owned(),
        }
    }

    fn serving(table: &FunctionTable, name: &str) -> Option<String> {
        match table.lookup(name) {
            Lookup::Ready(served) => Some(served.version.clone()),
            _ => None,
        }
    }

    fn not_ready(table: &FunctionTable, name: &str) -> Option<String> {
        match table.lookup(name) {
            Lookup::NotReady(why) => Some(why),
            _ => None,
        }
    }

    fn state(table: &FunctionTable, name: &str) -> (InstallState, Option<String>) {
        let states = table.states();
        let state = states.iter().find(|s| s.name == name).unwrap();
        (state.state, state.reason.clone())
    }

    /// Waits for a served version's files to go (removed off the runtime's threads).
    async fn gone(path: &Path) -> bool {
        for _ in 0..100 {
            if !path.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn installing_then_ready() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        assert!(matches!(table.lookup("f"), Lookup::Unknown));

        let v1 = deployment("f", "1", "aa");
        assert!(table.want(&v1));
        assert!(!table.want(&v1), "already installing");
        assert_eq!(not_ready(&table, "f").unwrap(), "it is still installing");
        assert_eq!(state(&table, "f"), (InstallState::Installing, None));

        table.finish(&v1, Ok::<_, String>(served("1", &dir.path().join("v1"))));
        assert_eq!(serving(&table, "f").unwrap(), "1");
        assert_eq!(state(&table, "f"), (InstallState::Ready, None));
        assert!(!table.want(&v1), "already installed");
        let states = table.states();
        assert_eq!(states[0].serving.as_deref(), Some("1"));
        assert_eq!(states[0].digest, "sha256:aa");
    }

    #[tokio::test]
    async fn a_failed_install_keeps_the_old_version_serving() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let v1 = deployment("f", "1", "aa");
        table.want(&v1);
        table.finish(&v1, Ok::<_, String>(served("1", &dir.path().join("v1"))));

        let v2 = deployment("f", "2", "bb");
        assert!(table.want(&v2));
        assert_eq!(
            serving(&table, "f").unwrap(),
            "1",
            "serves on while installing"
        );
        table.finish(&v2, Err::<Served, _>("no wheel for numpy\nsecond line"));
        assert_eq!(
            serving(&table, "f").unwrap(),
            "1",
            "serves on after a failure"
        );
        let (state, reason) = state(&table, "f");
        assert_eq!(state, InstallState::Failed);
        assert_eq!(reason.as_deref(), Some("no wheel for numpy second line"));
        assert_eq!(table.states()[0].version, "2", "the wanted version");
        assert!(
            table.want(&v2),
            "the same bundle is tried again after a failure"
        );
    }

    #[tokio::test]
    async fn a_refused_deployment_fails_and_the_old_version_serves_on() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let v1 = deployment("f", "1", "aa");
        table.want(&v1);
        table.finish(&v1, Ok::<_, String>(served("1", &dir.path().join("v1"))));
        // A forgery of the same bundle: refused, v1 serves on.
        let forged = deployment("f", "1-evil", "aa");
        table.refuse(&forged, "deployment refused: it is unsigned");
        assert_eq!(serving(&table, "f").unwrap(), "1");
        let states = table.states();
        assert_eq!(states[0].state, InstallState::Failed);
        assert_eq!(states[0].version, "1-evil");
        assert_eq!(
            states[0].reason.as_deref(),
            Some("deployment refused: it is unsigned")
        );
        // The genuine deployment again is installed again.
        assert!(table.want(&v1));
        // A refused first deployment is not servable and says why.
        table.refuse(
            &deployment("g", "1", "bb"),
            "deployment refused: signed by unknown key UX",
        );
        assert_eq!(
            not_ready(&table, "g").unwrap(),
            "its install failed: deployment refused: signed by unknown key UX"
        );
    }

    #[tokio::test]
    async fn a_failed_first_install_says_why() {
        let table = FunctionTable::new();
        let v1 = deployment("f", "1", "aa");
        table.want(&v1);
        table.finish(
            &v1,
            Err::<Served, _>("entry `main.py` is not a file in the bundle"),
        );
        assert_eq!(
            not_ready(&table, "f").unwrap(),
            "its install failed: entry `main.py` is not a file in the bundle"
        );
    }

    #[tokio::test]
    async fn a_superseded_install_is_ignored_and_its_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let (v1, v2) = (deployment("f", "1", "aa"), deployment("f", "2", "bb"));
        table.want(&v1);
        table.want(&v2);
        let late = dir.path().join("v1");
        table.finish(&v1, Ok::<_, String>(served("1", &late)));
        assert!(not_ready(&table, "f").is_some(), "v1 is not what is wanted");
        assert_eq!(state(&table, "f").0, InstallState::Installing);
        assert!(gone(&late).await);

        table.finish(&v2, Ok::<_, String>(served("2", &dir.path().join("v2"))));
        assert_eq!(serving(&table, "f").unwrap(), "2");
    }

    #[tokio::test]
    async fn a_replaced_version_goes_when_its_last_run_ends() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let (v1, v2) = (deployment("f", "1", "aa"), deployment("f", "2", "bb"));
        let old = dir.path().join("v1");
        table.want(&v1);
        table.finish(&v1, Ok::<_, String>(served("1", &old)));
        let Lookup::Ready(running) = table.lookup("f") else {
            panic!("ready")
        };
        table.want(&v2);
        table.finish(&v2, Ok::<_, String>(served("2", &dir.path().join("v2"))));
        assert_eq!(serving(&table, "f").unwrap(), "2");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(old.exists(), "a run still uses it");
        drop(running);
        assert!(gone(&old).await);
    }

    #[tokio::test]
    async fn removed_functions_are_unknown_and_late_installs_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let v1 = deployment("f", "1", "aa");
        table.want(&v1);
        table.remove("f");
        assert!(matches!(table.lookup("f"), Lookup::Unknown));
        let late = dir.path().join("v1");
        table.finish(&v1, Ok::<_, String>(served("1", &late)));
        assert!(matches!(table.lookup("f"), Lookup::Unknown));
        assert!(table.states().is_empty());
        assert!(gone(&late).await);
    }

    #[tokio::test]
    async fn every_change_wakes_the_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        let table = FunctionTable::new();
        let changed = |table: &FunctionTable| {
            let table = table.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), table.changed())
                    .await
                    .is_ok()
            }
        };
        assert!(!changed(&table).await);
        let v1 = deployment("f", "1", "aa");
        table.want(&v1);
        assert!(changed(&table).await, "install started");
        table.want(&v1);
        assert!(!changed(&table).await, "nothing new");
        table.finish(&v1, Ok::<_, String>(served("1", &dir.path().join("v1"))));
        assert!(changed(&table).await, "install ended");
        table.remove("f");
        assert!(changed(&table).await, "removed");
    }
}
