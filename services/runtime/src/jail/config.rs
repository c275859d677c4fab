//! How a node sandboxes its runs, as configured (`[sandbox]` in the
//! executor's configuration).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What confines a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// bubblewrap: user, mount, pid, ipc and (unless the manifest asks for
    /// the network) network namespaces, started as the function's own
    /// user, with rlimits and cgroup limits.
    #[default]
    Bwrap,
    /// Plain child processes with the executor's user and view of the
    /// host, no limits but the timeout and the output cap. Only when set
    /// explicitly (benchmarks, a developer's laptop without bwrap): never a
    /// fallback.
    None,
}

impl Isolation {
    /// The name used in the configuration and in the node's load report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bwrap => "bwrap",
            Self::None => "none",
        }
    }
}

/// The `[sandbox]` section of the executor's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// What confines a run.
    pub isolation: Isolation,
    /// The bubblewrap program.
    pub bwrap: PathBuf,
    /// First uid (and gid) of the range functions get their users from,
    /// when the executor runs as root.
    pub uid_base: u32,
    /// How many uids the range holds: the most functions a node ever
    /// serves (a function keeps its uid across restarts).
    pub uid_count: u32,
    /// More host paths every run may read (an interpreter outside `/usr`,
    /// say `/opt/python`); each must be reachable by the functions' users.
    pub read_only: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            isolation: Isolation::Bwrap,
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            uid_base: 200_000,
            uid_count: 10_000,
            read_only: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// No sandbox at all, chosen explicitly.
    pub fn none() -> Self {
        Self {
            isolation: Isolation::None,
            ..Self::default()
        }
    }
}
