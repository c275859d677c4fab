//! Starting one confined process: the bubblewrap command line (what the
//! process sees), the user it starts as, and its limits, all in place
//! before anything of the function's runs, without a race and without
//! unsafe code (`pre_exec`).
//!
//! The process is `/bin/sh -c 'ulimit ...; exec bwrap ... 3<&0'`, started
//! as the function's user: the shell sets the rlimits on itself (lowering
//! one's own limits needs no privilege, whereas `prlimit` on another
//! user's process needs `CAP_SYS_RESOURCE`, which root lacks in some
//! containers), then becomes bwrap with stdin also on fd 3. bwrap's
//! `--block-fd 3` makes its sandboxed child (pid 1 of the new pid
//! namespace, which everything the function starts descends from) wait for
//! one byte on fd 3 before it executes anything of the function's, and
//! then close fd 3 (stdin stays open for the function). Meanwhile the
//! executor finds that child's pid, puts it into the run's cgroup, and only
//! then writes the byte to stdin. The shell also keeps bwrap off stdin's
//! fd 0, which `--block-fd 0` would close for the function.
//!
//! Every process of a run dies with the executor, even one killed with
//! SIGKILL: bwrap's `--die-with-parent` gives bwrap and the sandbox's pid 1
//! a parent-death signal (pid 1's end empties its pid namespace); without
//! bwrap, `setpriv --pdeathsig TERM` and a supervising shell that kills
//! the run's process tree do it. A parent-death signal fires when the
//! *thread* that spawned the process ends, not the process: so
//! [`Jail::command`]s are spawned only on async tasks (tokio's worker
//! threads live as long as the runtime), never inside `spawn_blocking`,
//! whose threads exit after a while idle and would take the run along.
//!
//! The layer under `sandbox`: it knows how to confine one process, and
//! nothing of installs, workers or runs (`process` and `handler` start
//! their processes through a [`Jail`]; `sandbox` decides what goes in it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfaas_schemas::{ByteSize, ResourceLimits};
use tokio::process::Command;

mod cgroup;
mod config;
mod uids;

pub(crate) use cgroup::Cgroups;
use cgroup::RunCgroup;
pub use config::{Isolation, SandboxConfig};
pub use uids::Identity;
pub(crate) use uids::UidTable;

/// The `PATH` after the installation's own folders: system tools only,
/// nothing of the executor's.
pub const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why the node cannot sandbox runs as configured.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bwrap is not installed where configured.
    #[error(
        "sandbox.isolation is \"bwrap\" but {} is missing or not executable: install bubblewrap \
         (Debian: apt-get install bubblewrap), or set sandbox.isolation = \"none\" to run functions \
         unconfined",
        .0.display()
    )]
    MissingBwrap(PathBuf),
    /// bwrap is there but cannot make a sandbox on this host.
    #[error("bwrap cannot make a sandbox here (are unprivileged user namespaces allowed?): {0}")]
    BwrapFails(String),
    /// A configured value is unusable.
    #[error("sandbox: {0}")]
    Config(String),
    /// A folder runs must reach is closed to their users.
    #[error(
        "sandbox: functions' users must pass through {} to reach their files, but it has mode \
         {mode:o}: chmod o+x it, or choose a data_dir under folders others may enter",
        .dir.display()
    )]
    Unreachable {
        /// The folder.
        dir: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// A file operation failed.
    #[error("sandbox: {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// How long bwrap may take to clone its sandboxed child.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit status bwrap reports for a sandboxed process killed by signal N.
const SIGNALLED: i32 = 128;

/// What every confined process of a node shares: the bwrap program and
/// the host folders every run sees.
#[derive(Debug)]
pub(crate) struct Bwrap {
    /// The bubblewrap program.
    pub program: PathBuf,
    /// Arguments that show the system (`/usr`, `/etc`, the `/lib` links,
    /// configured extra folders), read-only.
    pub system: Vec<OsString>,
    /// The cgroups runs are bounded with.
    pub cgroups: Cgroups,
}

/// How to start the processes of one run or warm worker: inside bwrap (or,
/// with isolation `none`, as plain children), as whom, seeing what, within
/// which limits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Jail {
    pub(crate) bwrap: Option<Arc<Bwrap>>,
    pub(crate) identity: Option<Identity>,
    pub(crate) network: bool,
    pub(crate) limits: ResourceLimits,
    /// Whether `limits.cpu_time` applies (not to warm workers, which live
    /// across many calls).
    pub(crate) cpu_time: bool,
    pub(crate) read_only: Vec<PathBuf>,
    pub(crate) writable: Vec<PathBuf>,
    pub(crate) secrets: SecretFiles,
}

/// A limit a run hit, as the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The run's memory (cgroup) limit.
    Memory(ByteSize),
    /// The run's process and thread limit.
    Procs(u32),
    /// A process's CPU time limit.
    CpuTime(Duration),
    /// A process's file size limit.
    FileSize(ByteSize),
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(size) => write!(f, "memory limit of {size} reached"),
            Self::Procs(n) => write!(f, "process limit of {n} reached"),
            Self::CpuTime(d) => write!(
                f,
                "CPU time limit of {} reached",
                humantime::format_duration(*d)
            ),
            Self::FileSize(size) => write!(f, "file size limit of {size} reached"),
        }
    }
}

/// A started process's confinement: its cgroup, until it is released.
#[derive(Debug)]
pub(crate) struct Confined {
    cgroup: Option<RunCgroup>,
    limits: ResourceLimits,
    cpu_time: bool,
}

impl Jail {
    /// No confinement: a plain child process (isolation `none`, and tests
    /// of the process bounds themselves).
    pub fn none() -> Self {
        Self {
            bwrap: None,
            identity: None,
            network: true,
            limits: ResourceLimits::default(),
            cpu_time: false,
            read_only: Vec::new(),
            writable: Vec::new(),
            secrets: SecretFiles::default(),
        }
    }

    /// The user the processes run as, when it is not the executor's.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// Whether processes start inside bwrap (and so wait for
    /// [`Confined`]'s release byte on stdin).
    fn is_confined(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The same jail for a warm worker: no CPU time limit (its calls are
    /// bound by their timeouts), `dir` writable.
    pub(crate) fn for_worker(&self, dir: &Path) -> Self {
        let mut jail = self.clone();
        jail.cpu_time = false;
        jail.writable.push(dir.to_owned());
        jail
    }

    /// Creates `dir` as a private directory of the run's user (mode 0700),
    /// with each secret as `secrets/<NAME>` (mode 0400, the run's user).
    pub(crate) async fn make_private_dir(&self, dir: &Path) -> std::io::Result<()> {
        let (dir, identity, secrets) = (dir.to_owned(), self.identity, self.secrets.clone());
        tokio::task::spawn_blocking(move || private_dir(&dir, identity, &secrets))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The command that starts `program` with `args` in `cwd` with exactly
    /// `env`, inside the jail.
    pub(crate) fn command(
        &self,
        program: &Path,
        args: &[OsString],
        cwd: &Path,
        env: &[(OsString, OsString)],
    ) -> Command {
        let Some(bwrap) = &self.bwrap else {
            let mut command = unconfined(program);
            command
                .args(args)
                .current_dir(cwd)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)));
            return command;
        };
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(launcher(&self.limits, self.cpu_time, &bwrap.cgroups))
            .arg(&bwrap.program);
        command.args([
            "--unshare-user",
            // No user namespaces of its own inside: the kernel's surface
            // they open stays closed.
            "--disable-userns",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            // bwrap's own processes die with the executor; the sandbox's
            // pid 1 with bwrap; everything else with pid 1.
            "--die-with-parent",
            // No TIOCSTI into a terminal, no signals to the executor's group.
            "--new-session",
            "--block-fd",
            "3",
        ]);
        if !self.network {
            command.arg("--unshare-net");
        }
        command.args(&bwrap.system);
        // The private /tmp first: a run's own folders may lie below /tmp.
        command.args(DEVICES);
        for path in &self.read_only {
            command.arg("--ro-bind").arg(path).arg(path);
        }
        for path in &self.writable {
            command.arg("--bind").arg(path).arg(path);
        }
        // The run's environment is set by bwrap inside the jail: the shell
        // and bwrap themselves start from a fixed one, so nothing of the
        // manifest's `env` (say `LD_AUDIT`) acts on them, outside it.
        command.arg("--clearenv");
        for (key, value) in env {
            command.arg("--setenv").arg(key).arg(value);
        }
        command
            .arg("--chdir")
            .arg(cwd)
            .arg("--")
            .arg(program)
            .args(args)
            .current_dir("/")
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("LANG", "C.UTF-8");
        if let Some(identity) = self.identity {
            // std drops the supplementary groups when root sets a uid: bwrap
            // starts unprivileged and makes its user namespace itself.
            command.uid(identity.uid).gid(identity.gid);
        }
        command
    }

    /// Starts the process spawned from [`Jail::command`] as `pid`, whose
    /// stdin is `stdin`: confines it ([`Jail::confine`]), then, inside
    /// bwrap, releases it with one byte on stdin. Nothing of the function
    /// runs before its limits are in place.
    pub(crate) async fn start(
        &self,
        pid: Option<u32>,
        stdin: &mut tokio::process::ChildStdin,
    ) -> Result<Confined, String> {
        use tokio::io::AsyncWriteExt as _;
        let confined = self.confine(pid).await?;
        if self.is_confined() {
            // A bwrap that already failed closed its stdin: its stderr says why.
            let _ = stdin.write_all(&[0]).await;
        }
        Ok(confined)
    }

    /// Confines the bwrap started as `pid` (from [`Jail::command`]): finds
    /// its sandboxed child and puts it into a new cgroup (its rlimits are set
    /// already); [`Jail::start`] then lets it run. A bwrap that failed
    /// before making its child is not an error here: nothing of the
    /// function runs, and its exit status and stderr say why.
    async fn confine(&self, pid: Option<u32>) -> Result<Confined, String> {
        let Some(bwrap) = self.bwrap.clone() else {
            return Ok(self.confined(None));
        };
        let pid = pid.ok_or("bwrap has no pid")?;
        let limits = self.limits;
        let confined = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let Some(child) = sandboxed_child(pid)? else {
                return Ok(None);
            };
            let cgroup = bwrap
                .cgroups
                .create(&limits)
                .map_err(|e| format!("cannot create the run's cgroup: {e}"))?;
            let applied = cgroup
                .as_ref()
                .map_or(Ok(()), |group| group.attach(child))
                .map_err(|e| format!("cannot move the run into its cgroup: {e}"));
            match applied {
                Ok(()) => Ok(cgroup),
                // It died during setup: its stderr tells why.
                Err(_) if !alive(child) => Ok(cgroup),
                Err(e) => {
                    if let Some(group) = cgroup {
                        group.remove();
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(self.confined(confined))
    }

    fn confined(&self, cgroup: Option<RunCgroup>) -> Confined {
        Confined {
            cgroup,
            limits: self.limits,
            cpu_time: self.cpu_time,
        }
    }
}

impl Confined {
    /// The limit a run that ended with `code` or `signal` hit, if one did.
    pub fn limit_hit(&self, code: Option<i32>, signal: Option<i32>) -> Option<LimitHit> {
        let killed_by = |sig: nix::sys::signal::Signal| {
            let sig = sig as i32;
            signal == Some(sig) || code == Some(SIGNALLED + sig)
        };
        use nix::sys::signal::Signal;
        if let (true, Some(cpu)) = (self.cpu_time, self.limits.cpu_time) {
            if killed_by(Signal::SIGXCPU) {
                return Some(LimitHit::CpuTime(cpu));
            }
        }
        if let Some(size) = self.limits.file_size {
            if killed_by(Signal::SIGXFSZ) {
                return Some(LimitHit::FileSize(size));
            }
        }
        let group = self.cgroup.as_ref()?;
        if let Some(memory) = self.limits.memory.filter(|_| group.oom_kills() > 0) {
            return Some(LimitHit::Memory(memory));
        }
        if let Some(procs) = self.limits.procs.filter(|_| group.forks_refused() > 0) {
            return Some(LimitHit::Procs(procs));
        }
        None
    }

    /// Kills what is left in the cgroup and removes it, off the async threads.
    pub fn release(self) {
        if let Some(group) = self.cgroup {
            drop(tokio::task::spawn_blocking(move || group.remove()));
        }
    }

    /// As [`Confined::release`], from a drop (no runtime may be at hand).
    pub fn release_now(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(_) => self.release(),
            Err(_) => {
                if let Some(group) = self.cgroup {
                    group.remove();
                }
            }
        }
    }
}

/// util-linux's `setpriv`, which gives the process it becomes a parent-death
/// signal (`--pdeathsig`) without unsafe code in the executor.
pub const SETPRIV: &str = "/usr/bin/setpriv";

/// What a process without bwrap becomes after `setpriv`: a shell that runs
/// the program (`$@`, stdin passed on through fd 3, as an asynchronous
/// command's stdin would be `/dev/null`) and, on SIGTERM (its parent-death
/// signal: the executor died), kills every process descending from it and
/// then its process group. The tree is walked, not just the group, as MPI
/// ranks leave the group; each process is stopped before its children are
/// listed (it cannot fork one more meanwhile) and killed after them; the
/// walk starts at the shell itself (the program's pid may not be in `$!`
/// yet when the signal comes), whose other children are only the finished
/// command substitutions of the walk. A
/// process that left the tree (a double fork) is not found: only bwrap's
/// pid namespace holds those. SIGKILL as the death signal would kill the
/// shell alone. The program's exit status is passed on; a death by signal
/// is passed on as that signal (those a run dies of, never a stop signal).
const SUPERVISOR: &str = concat!(
    "exec 3<&0; ",
    "k() { for c in $(cat /proc/$1/task/*/children 2>/dev/null); do ",
    "kill -STOP $c 2>/dev/null; k $c; kill -KILL $c 2>/dev/null; done; }; ",
    "trap 'k $$; kill -KILL 0' TERM; ",
    "\"$@\" <&3 3<&- & wait $!; s=$?; trap - TERM; ",
    "case $s in 129|13[0-9]|14[0-3]|15[23]) kill -$((s - 128)) $$;; esac; exit $s",
);

/// The command that starts `program` unconfined (isolation `none`), dying
/// with the thread that spawns it: under a [`SUPERVISOR`] with SIGTERM as
/// its parent-death signal, when `setpriv` is there and `program` is a file
/// (else plainly, so a missing program still fails to spawn).
fn unconfined(program: &Path) -> Command {
    if !(Path::new(SETPRIV).is_file() && program.is_absolute() && program.is_file()) {
        return Command::new(program);
    }
    let mut command = Command::new(SETPRIV);
    command
        .args([
            "--pdeathsig",
            "TERM",
            "--",
            "/bin/sh",
            "-c",
            SUPERVISOR,
            "sh",
        ])
        .arg(program);
    command
}

/// A minimal `/dev` (no `--dev`: a devtmpfs of its own costs a millisecond
/// a run), `/proc` of the run's own pid namespace, and private `/tmp` and
/// `/dev/shm` (MPI's shared memory).
const DEVICES: [&str; 27] = [
    "--proc",
    "/proc",
    "--dev-bind",
    "/dev/null",
    "/dev/null",
    "--dev-bind",
    "/dev/zero",
    "/dev/zero",
    "--dev-bind",
    "/dev/urandom",
    "/dev/urandom",
    "--dev-bind",
    "/dev/random",
    "/dev/random",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/dev/shm",
    "--symlink",
    "/proc/self/fd",
    "/dev/fd",
    "--symlink",
    "/proc/self/fd/0",
    "/dev/stdin",
    "--symlink",
    "/proc/self/fd/1",
    "/dev/stdout",
];

/// The pid of the process bwrap `pid` cloned into the new namespaces,
/// once it exists; `None` if bwrap ended first (nothing of the function
/// runs then). An error if it cannot be found while bwrap lives on: that
/// run must not be released unbounded.
fn sandboxed_child(pid: u32) -> Result<Option<u32>, String> {
    let children = format!("/proc/{pid}/task/{pid}/children");
    let started = Instant::now();
    loop {
        let found = std::fs::read_to_string(&children)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        if found.is_some() {
            return Ok(found);
        }
        if !alive(pid) {
            return Ok(None);
        }
        if started.elapsed() > SETUP_TIMEOUT {
            return Err(format!(
                "bwrap made no sandbox within {}s",
                SETUP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
    })
}

/// The shell script that sets a run's rlimits on itself, then becomes
/// bwrap (`$0`, its arguments `$@`) with stdin on fd 3 as well: open files,
/// file size (in 512-byte blocks, as `sh` counts), CPU time (soft: SIGXCPU;
/// a second later, hard: SIGKILL), and, where no cgroup bounds the run,
/// processes (per user: each function has its own; with a cgroup the run's
/// own count is the bound, as a per-user count would add up a function's
/// concurrent runs) and memory (the data segment, in KiB). A limit that
/// cannot be set stops it before bwrap starts.
fn launcher(limits: &ResourceLimits, cpu_time: bool, cgroups: &Cgroups) -> String {
    let mut steps = Vec::new();
    if let Some(files) = limits.open_files {
        steps.push(format!("ulimit -n {files}"));
    }
    if let Some(size) = limits.file_size {
        steps.push(format!("ulimit -f {}", (size.0 / 512).max(1)));
    }
    if let (true, Some(cpu)) = (cpu_time, limits.cpu_time) {
        let seconds = cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0);
        steps.push(format!("ulimit -S -t {seconds}"));
        steps.push(format!("ulimit -H -t {}", seconds + 1));
    }
    if !cgroups.bounds_runs() {
        if let Some(procs) = limits.procs {
            // bash and busybox call it -u, dash -p.
            steps.push(format!(
                "{{ ulimit -u {procs} 2>/dev/null || ulimit -p {procs}; }}"
            ));
        }
        if let Some(memory) = limits.memory {
            steps.push(format!("ulimit -d {}", (memory.0 / 1024).max(1)));
        }
    }
    steps.push("exec \"$0\" \"$@\" 3<&0".to_owned());
    steps.join(" && ")
}

/// The secrets a run finds as files (name, value), shared by its runs and
/// workers. Its `Debug` names them and never shows a value, so no log of
/// a jail, a sandbox or what holds them can leak one.
#[derive(Clone, Default)]
pub(crate) struct SecretFiles(Arc<Vec<(String, Vec<u8>)>>);

impl SecretFiles {
    /// The secrets `secrets` (name, value).
    pub(crate) fn new(secrets: Vec<(String, Vec<u8>)>) -> Self {
        Self(Arc::new(secrets))
    }
}

impl std::ops::Deref for SecretFiles {
    type Target = [(String, Vec<u8>)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Creates `dir` (0700, owned by `identity`) and its `secrets/` (0500) with
/// one 0400 file per secret, written before anything of the run exists.
fn private_dir(
    dir: &Path,
    identity: Option<Identity>,
    secrets: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        // Folders above are only passed through by the run's user (bwrap
        // must reach its directory), never listed.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let own = |path: &Path| match identity {
        Some(id) => std::os::unix::fs::chown(path, Some(id.uid), Some(id.gid)),
        None => Ok(()),
    };
    if !secrets.is_empty() {
        let folder = dir.join("secrets");
        std::fs::DirBuilder::new().mode(0o700).create(&folder)?;
        for (name, value) in secrets {
            comfaas_schemas::validate_secret_name(name).map_err(std::io::Error::other)?;
            let file = folder.join(name);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&file)?;
            out.write_all(value)?;
            own(&file)?;
        }
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o500))?;
        own(&folder)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    own(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_with_their_values() {
        let cases = [
            (
                LimitHit::Memory(ByteSize(256 << 20)),
                "memory limit of 256 MiB reached",
            ),
            (LimitHit::Procs(64), "process limit of 64 reached"),
            (
                LimitHit::CpuTime(Duration::from_secs(2)),
                "CPU time limit of 2s reached",
            ),
            (
                LimitHit::FileSize(ByteSize(64 << 20)),
                "file size limit of 64 MiB reached",
            ),
        ];
        for (hit, text) in cases {
            assert_eq!(hit.to_string(), text);
        }
    }

    #[test]
    fn the_launcher_sets_each_limit_before_bwrap() {
        let limits = ResourceLimits {
            memory: Some(ByteSize(256 << 20)),
            procs: Some(64),
            open_files: Some(256),
            file_size: Some(ByteSize(64 << 20)),
            cpu_time: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            launcher(&limits, true, &Cgroups::None),
            "ulimit -n 256 && ulimit -f 131072 && ulimit -S -t 2 && ulimit -H -t 3 && \
             { ulimit -u 64 2>/dev/null || ulimit -p 64; } && ulimit -d 262144 && \
             exec \"$0\" \"$@\" 3<&0"
        );
        let cgroups = Cgroups::V2 {
            parent: PathBuf::from("/sys/fs/cgroup/comfaas"),
        };
        assert_eq!(
            launcher(&limits, false, &cgroups),
            "ulimit -n 256 && ulimit -f 131072 && exec \"$0\" \"$@\" 3<&0",
            "a worker has no CPU time limit; the cgroup bounds memory and processes"
        );
        // The script really sets them: the shell reports what it set.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(launcher(&limits, true, &Cgroups::None))
            .arg("/bin/sh")
            .arg("-c")
            .arg("ulimit -n; ulimit -S -t; ulimit -H -t; ulimit -d")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "256\n2\n3\n262144\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn exit_statuses_tell_cpu_and_file_size_limits() {
        let confined = Confined {
            cgroup: None,
            limits: ResourceLimits {
                cpu_time: Some(Duration::from_secs(2)),
                file_size: Some(ByteSize(1 << 20)),
                ..ResourceLimits::default()
            },
            cpu_time: true,
        };
        let xcpu = nix::sys::signal::Signal::SIGXCPU as i32;
        let xfsz = nix::sys::signal::Signal::SIGXFSZ as i32;
        assert_eq!(
            confined.limit_hit(None, Some(xcpu)),
            Some(LimitHit::CpuTime(Duration::from_secs(2)))
        );
        assert_eq!(
            confined.limit_hit(Some(128 + xcpu), None),
            Some(LimitHit::CpuTime(Duration::from_secs(2))),
            "as bwrap reports a signalled child"
        );
        assert_eq!(
            confined.limit_hit(Some(128 + xfsz), None),
            Some(LimitHit::FileSize(ByteSize(1 << 20)))
        );
        assert_eq!(confined.limit_hit(Some(1), None), None);
        assert_eq!(
            confined.limit_hit(Some(137), None),
            None,
            "no cgroup to ask"
        );
    }

    /// Whether `pid` goes (or is a zombie) within 10 s.
    fn goes(pid: u32) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    #[test]
    fn an_unconfined_run_dies_with_the_thread_that_started_it() {
        // The thread stands for the executor: it starts a run whose program
        // starts a child, and ends without a word (no kill, no wait).
        let pids = std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use tokio::io::AsyncBufReadExt as _;
                // One child in the run's process group, one that left it.
                let script = "sleep 60 & a=$!; setsid sleep 60 & echo $$ $a $!; wait";
                let mut command = Jail::none().command(
                    Path::new("/bin/sh"),
                    &["-c".into(), script.into()],
                    Path::new("/"),
                    &[("PATH".into(), SYSTEM_PATH.into())],
                );
                command
                    .stdout(std::process::Stdio::piped())
                    .process_group(0);
                let mut child = command.spawn().unwrap();
                let mut line = String::new();
                tokio::io::BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .await
                    .unwrap();
                std::mem::forget(child);
                line
            })
        })
        .join()
        .unwrap();
        let pids: Vec<u32> = pids
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 3, "{pids:?}");
        for pid in pids {
            assert!(goes(pid), "process {pid} of the run outlived its parent");
        }
    }

    #[tokio::test]
    async fn an_unconfined_run_keeps_its_stdin_and_exit_status() {
        let jail = Jail::none();
        let run = |script: &str| {
            let mut command = jail.command(
                Path::new("/bin/sh"),
                &["-c".into(), script.into()],
                Path::new("/"),
                &[("PATH".into(), SYSTEM_PATH.into())],
            );
            command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            command
        };
        let mut child = run("cat; exit 3").spawn().unwrap();
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"through").await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.stdout, b"through");
        assert_eq!(out.status.code(), Some(3));
        use std::os::unix::process::ExitStatusExt as _;
        let out = run("kill -SEGV $$").output().await.unwrap();
        assert_eq!(out.status.signal(), Some(11), "{:?}", out.status);
        let out = run("exit 147").output().await.unwrap();
        assert_eq!(out.status.code(), Some(147), "not a stop signal");
    }

    #[tokio::test]
    async fn a_private_directory_holds_the_secrets_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let mut jail = Jail::none();
        jail.secrets = SecretFiles::new(vec![("API_KEY".to_owned(), b"s3cret".to_vec())]);
        assert!(
            !format!("{jail:?}").contains("s3cret"),
            "secrets never print"
        );
        let dir = root.path().join("run");
        jail.make_private_dir(&dir).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("secrets")), 0o500);
        assert_eq!(mode(&dir.join("secrets/API_KEY")), 0o400);
        assert_eq!(
            std::fs::read(dir.join("secrets/API_KEY")).unwrap(),
            b"s3cret"
        );

        jail.secrets = SecretFiles::new(vec![("../escape".to_owned(), b"x".to_vec())]);
        assert!(jail
            .make_private_dir(&root.path().join("run2"))
            .await
            .is_err());
        assert!(!root.path().join("escape").exists());
    }
}
