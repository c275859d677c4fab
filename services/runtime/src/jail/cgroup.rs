//! The memory and pids cgroup of each run (or warm worker): found once at
//! start (cgroup v2 with both controllers delegated to the executor's
//! cgroup, else cgroup v1 `memory` and `pids` hierarchies it can write,
//! else none, and the node says so), a group per run under a group of the
//! node's own, limits written before the run's first process is released,
//! counters read afterwards to tell which limit a failed run hit, and the
//! group emptied and removed when the run ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use comfaas_schemas::ResourceLimits;

/// The cgroups this node can bound runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroups {
    /// The unified hierarchy: runs' groups go under `parent`, which has
    /// `memory` and `pids` enabled for its children.
    V2 {
        /// The node's group.
        parent: PathBuf,
    },
    /// The v1 hierarchies: runs' groups go under these node groups.
    V1 {
        /// The node's group in the `memory` hierarchy.
        memory: PathBuf,
        /// The node's group in the `pids` hierarchy.
        pids: PathBuf,
    },
    /// Neither is writable here: rlimits alone.
    None,
}

/// One run's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub(crate) struct RunCgroup {
    v2: bool,
    memory: PathBuf,
    pids: PathBuf,
}

impl Cgroups {
    /// Finds what this host lets the executor use, with a group of its own
    /// for node `node` (emptied of what a previous run of it left).
    pub fn detect(node: &str) -> Self {
        // The run's first process is found through its parent's children
        // list (CONFIG_PROC_CHILDREN): without it there is nothing to attach.
        let me = std::process::id();
        if !Path::new(&format!("/proc/{me}/task/{me}/children")).exists() {
            return Self::None;
        }
        let (Ok(mountinfo), Ok(own)) = (
            std::fs::read_to_string("/proc/self/mountinfo"),
            std::fs::read_to_string("/proc/self/cgroup"),
        ) else {
            return Self::None;
        };
        let mounts = parse_mountinfo(&mountinfo);
        let own = parse_own_cgroups(&own);
        // Named by the executor's pid too: several executors of one name
        // (tests, a restart overlapping) never share a group.
        let group = format!("comfaas-{node}-{}", std::process::id());
        if let Some(parent) = v2_parent(&mounts, &own, &group) {
            return Self::V2 { parent };
        }
        let v1 = |controller: &str| {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
            let path = own.iter().find_map(|(controllers, path)| {
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path.as_str())
            })?;
            usable_dir(&join_cgroup(&mount.point, path).join(&group))
        };
        match (v1("memory"), v1("pids")) {
            (Some(memory), Some(pids)) => Self::V1 { memory, pids },
            _ => Self::None,
        }
    }

    /// `v1`, `v2` or `none`, for the load report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2",
            Self::V1 { .. } => "v1",
            Self::None => "none",
        }
    }

    /// Whether runs' memory and processes are bounded by cgroups (else by
    /// rlimits alone).
    pub fn bounds_runs(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// A new group for one run, with `limits` written; `None` without cgroups.
    pub fn create(&self, limits: &ResourceLimits) -> std::io::Result<Option<RunCgroup>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let group = match self {
            Self::None => return Ok(None),
            Self::V2 { parent } => RunCgroup {
                v2: true,
                memory: parent.join(&name),
                pids: parent.join(&name),
            },
            Self::V1 { memory, pids } => RunCgroup {
                v2: false,
                memory: memory.join(&name),
                pids: pids.join(&name),
            },
        };
        std::fs::create_dir(&group.memory)?;
        if !group.v2 {
            if let Err(e) = std::fs::create_dir(&group.pids) {
                let _ = std::fs::remove_dir(&group.memory);
                return Err(e);
            }
        }
        if let Err(e) = group.write_limits(limits) {
            group.remove();
            return Err(e);
        }
        Ok(Some(group))
    }
}

impl RunCgroup {
    fn write_limits(&self, limits: &ResourceLimits) -> std::io::Result<()> {
        if let Some(memory) = limits.memory {
            let bytes = memory.0.to_string();
            if self.v2 {
                std::fs::write(self.memory.join("memory.max"), &bytes)?;
                // No swap: the limit is the memory the run may use.
                let _ = std::fs::write(self.memory.join("memory.swap.max"), "0");
            } else {
                std::fs::write(self.memory.join("memory.limit_in_bytes"), &bytes)?;
                let _ = std::fs::write(self.memory.join("memory.memsw.limit_in_bytes"), &bytes);
            }
        }
        if let Some(procs) = limits.procs {
            std::fs::write(self.pids.join("pids.max"), procs.to_string())?;
        }
        Ok(())
    }

    /// Moves process `pid` (and so all it will start) into the group.
    pub fn attach(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.memory.join("cgroup.procs"), pid.to_string())?;
        if !self.v2 {
            std::fs::write(self.pids.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Processes the kernel killed for want of memory in the group.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        counter(&self.memory.join(file), "oom_kill")
    }

    /// Forks and clones the group's process limit refused.
    pub fn forks_refused(&self) -> u64 {
        counter(&self.pids.join("pids.events"), "max")
    }

    /// Kills whatever is left in the group and removes it, waiting up to a
    /// second for the processes to go (blocking).
    pub fn remove(self) {
        let dirs: Vec<&Path> = if self.v2 {
            vec![&self.memory]
        } else {
            vec![&self.memory, &self.pids]
        };
        if self.v2 && std::fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            // Killed at once, whatever forks meanwhile.
        } else {
            for dir in &dirs {
                kill_members(dir);
            }
        }
        for dir in dirs {
            for attempt in 0..200 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 199 => {
                        tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                    }
                    Err(_) => {
                        kill_members(dir);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
    }
}

/// SIGKILL to every process listed in a group.
fn kill_members(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines); 0
/// when absent.
fn counter(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// A mount, from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    options: String,
}

/// The mounts of `/proc/self/mountinfo`: mount point (field 5), then after
/// the `-` separator the filesystem type and its super options.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?.to_owned();
            let options = after.nth(1).unwrap_or_default().to_owned();
            Some(Mount {
                point: PathBuf::from(point),
                fstype,
                options,
            })
        })
        .collect()
}

/// `(controllers, path)` of each line of `/proc/self/cgroup`
/// (`4:memory:/a/b`; the v2 line has no controllers: `0::/a`).
fn parse_own_cgroups(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The node's group in the unified hierarchy, when the executor's own
/// group offers `memory` and `pids` and lets a child group enable them.
fn v2_parent(mounts: &[Mount], own: &[(String, String)], group: &str) -> Option<PathBuf> {
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let path = own
        .iter()
        .find_map(|(controllers, path)| controllers.is_empty().then_some(path))?;
    let base = join_cgroup(&mount.point, path);
    let has_both = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.controllers")).is_ok_and(|c| {
            let c: Vec<&str> = c.split_whitespace().collect();
            c.contains(&"memory") && c.contains(&"pids")
        })
    };
    if !has_both(&base) {
        return None;
    }
    // A group with processes (ours, unless it is the root) cannot enable
    // controllers for its children: then v2 is not ours to use.
    let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +pids");
    let node = usable_dir(&base.join(group))?;
    if !has_both(&node)
        || std::fs::write(node.join("cgroup.subtree_control"), "+memory +pids").is_err()
    {
        return None;
    }
    Some(node)
}

/// `dir` created if needed and proven writable by making and removing a
/// group in it; first, the groups executors that are gone left beside it
/// (named `comfaas-<node>-<pid>`) are emptied and removed.
fn usable_dir(dir: &Path) -> Option<PathBuf> {
    if let Some(parent) = dir.parent() {
        remove_stale_groups(parent);
    }
    if let Err(e) = std::fs::create_dir(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return None;
        }
    }
    let probe = dir.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir.to_owned())
}

/// Removes `comfaas-*-<pid>` groups in `parent` whose executor `pid` is gone.
fn remove_stale_groups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("comfaas-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let group = entry.path();
        if let Ok(runs) = std::fs::read_dir(&group) {
            for run in runs.flatten().filter(|r| r.path().is_dir()) {
                kill_members(&run.path());
                let _ = std::fs::remove_dir(run.path());
            }
        }
        let _ = std::fs::remove_dir(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/a
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mounts_and_own_groups_are_read_from_proc() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        assert_eq!(
            mounts[2],
            Mount {
                point: "/sys/fs/cgroup/memory".into(),
                fstype: "cgroup".into(),
                options: "rw,memory".into(),
            }
        );
        assert_eq!(mounts[5].fstype, "cgroup2");
        let own = parse_own_cgroups("8:pids:/\n4:memory:/process_api/ab\n2:cpu,cpuacct:/\n0::/\n");
        assert_eq!(own[1], ("memory".to_owned(), "/process_api/ab".to_owned()));
        assert_eq!(own[3], (String::new(), "/".to_owned()));
        assert_eq!(
            join_cgroup(Path::new("/sys/fs/cgroup/memory"), "/process_api/ab"),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/ab")
        );
    }

    #[test]
    fn counters_are_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 3\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), 3);
        assert_eq!(counter(&file, "max"), 12);
        assert_eq!(counter(&file, "absent"), 0);
        assert_eq!(counter(&dir.path().join("missing"), "max"), 0);
    }

    #[test]
    fn detection_names_what_it_found_and_its_groups_work() {
        let cgroups = Cgroups::detect("unit-test");
        let limits = ResourceLimits {
            memory: Some(comfaas_schemas::ByteSize(64 << 20)),
            procs: Some(8),
            ..ResourceLimits::default()
        };
        match &cgroups {
            Cgroups::None => {
                assert_eq!(cgroups.name(), "none");
                assert!(cgroups.create(&limits).unwrap().is_none());
            }
            Cgroups::V1 { memory, pids } => {
                assert_eq!(cgroups.name(), "v1");
                let group = cgroups.create(&limits).unwrap().unwrap();
                let limit = std::fs::read_to_string(group.memory.join("memory.limit_in_bytes"));
                assert_eq!(limit.unwrap().trim(), (64u64 << 20).to_string());
                assert_eq!(
                    std::fs::read_to_string(group.pids.join("pids.max"))
                        .unwrap()
                        .trim(),
                    "8"
                );
                assert!(group.memory.starts_with(memory) && group.pids.starts_with(pids));
                let (memory_dir, pids_dir) = (group.memory.clone(), group.pids.clone());
                group.remove();
                assert!(!memory_dir.exists() && !pids_dir.exists());
            }
            Cgroups::V2 { parent } => {
                assert_eq!(cgroups.name(), "v2");
                let group = cgroups.create(&limits).unwrap().unwrap();
                assert!(group.memory.starts_with(parent));
                let dir = group.memory.clone();
                group.remove();
                assert!(!dir.exists());
            }
        }
    }
}
