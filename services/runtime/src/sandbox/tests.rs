//! The sandbox against real bwrap: what a run sees, who it is, and each
//! limit named when it is hit. As root (this project's test machines) the
//! runs get function users; otherwise they keep the tester's user.

use std::path::Path;
use std::time::Duration;

use comfaas_schemas::{ByteSize, Manifest, Runtime};

use super::*;
use crate::process::{run, Exit, RunOutcome, RunSpec};

fn installation(root: &Path) -> Installation {
    Installation {
        runtime: Runtime::Exec,
        bundle_dir: root.join("bundle"),
        env_dir: root.join("env"),
        program: PathBuf::from("/bin/sh"),
        args: Vec::new(),
        path: vec![root.join("env/bin")],
    }
}

fn manifest(name: &str, extra: &str) -> Manifest {
    Manifest::from_toml(&format!(
        "name = \"{name}\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\n{extra}"
    ))
    .unwrap()
}

fn value<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsString> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A node's data directory others may pass through (tempdirs are 0700).
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

struct Node {
    data: tempfile::TempDir,
    sandboxes: Sandboxes,
}

impl Node {
    fn start(defaults: ResourceLimits) -> Self {
        let data = data_dir();
        let sandboxes =
            Sandboxes::open(&SandboxConfig::default(), defaults, data.path(), "unit").unwrap();
        Self { data, sandboxes }
    }

    /// An installed version of `name` with a bundle file, and its sandbox.
    fn install(&self, name: &str, extra: &str) -> (Installation, Sandbox) {
        let root = self.data.path().join("functions");
        let dir = root.join(name).join("v1");
        self.sandboxes.make_version_dir(&root, name, &dir).unwrap();
        let installation = installation(&dir);
        std::fs::create_dir_all(&installation.bundle_dir).unwrap();
        std::fs::write(installation.bundle_dir.join("run.sh"), "echo hi\n").unwrap();
        let sandbox = self
            .sandboxes
            .sandbox(&installation, &manifest(name, extra), "edge-1")
            .unwrap();
        (installation, sandbox)
    }

    /// Runs `script` with `sh -c` in a fresh run directory of `sandbox`.
    async fn sh(&self, sandbox: &Sandbox, script: &str) -> RunOutcome {
        let dir = self
            .data
            .path()
            .join("runs")
            .join(format!("run-{}", uuid_like()));
        let run_dir = sandbox.enter(dir, "inv").await.unwrap();
        let outcome = run(RunSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: run_dir.dir().to_owned(),
            env: run_dir.env().to_vec(),
            input: RunInput::Bytes(bytes::Bytes::from_static(b"in")),
            timeout: Duration::from_secs(30),
            max_output: 1 << 20,
            spill: None,
            jail: run_dir.jail().clone(),
            log_bytes: 64 * 1024,
        })
        .await;
        run_dir.remove().await;
        outcome
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

fn stdout(outcome: &RunOutcome) -> String {
    assert_eq!(outcome.exit, Exit::Success, "{}", outcome.failure_detail());
    String::from_utf8_lossy(&outcome.stdout).trim().to_owned()
}

#[test]
fn runs_see_only_the_installation_the_manifest_env_and_the_system_tools() {
    let root = tempfile::tempdir().unwrap();
    let manifest = manifest("hello", "env = { LOG_LEVEL = \"debug\" }");
    let sandbox = Sandboxes::none()
        .sandbox(&installation(root.path()), &manifest, "edge-1")
        .unwrap();
    let keys: Vec<_> = sandbox.env().iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        [
            "PATH",
            "LANG",
            "LOG_LEVEL",
            "COMFAAS_FUNCTION",
            "COMFAAS_NODE",
            "COMFAAS_BUNDLE_DIR"
        ]
    );
    let env = sandbox.env();
    let bin = root.path().join("env/bin");
    assert_eq!(
        value(env, "PATH").unwrap(),
        &OsString::from(format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()))
    );
    assert_eq!(value(env, "LOG_LEVEL").unwrap(), "debug");
    assert_eq!(value(env, "COMFAAS_FUNCTION").unwrap(), "hello");
    assert_eq!(value(env, "COMFAAS_NODE").unwrap(), "edge-1");
    let workers = sandbox.worker_spec(&installation(root.path()), "/w".into());
    assert_eq!(workers.env, sandbox.env());
    assert_eq!(workers.program, PathBuf::from("/bin/sh"));
    assert_eq!(Sandboxes::none().report().isolation, "none");
}

#[tokio::test]
async fn a_run_gets_a_private_directory_removed_afterwards() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = Sandboxes::none()
        .sandbox(&installation(root.path()), &manifest("pi", ""), "edge-1")
        .unwrap();
    let dir = root.path().join("runs/run-1");
    let mut run = sandbox.enter(dir.clone(), "inv-1").await.unwrap();
    assert!(dir.is_dir());
    assert_eq!(run.dir(), dir);
    assert_eq!(run.spill_file(), root.path().join("runs/run-1.stdout"));
    assert_eq!(value(run.env(), "HOME").unwrap(), dir.as_os_str());
    assert_eq!(value(run.env(), "TMPDIR").unwrap(), dir.as_os_str());
    assert_eq!(value(run.env(), "COMFAAS_INVOCATION_ID").unwrap(), "inv-1");
    assert!(value(run.env(), "COMFAAS_INPUT_FILE").is_none());

    run.share_input(&RunInput::Bytes(bytes::Bytes::from_static(b"42")))
        .await
        .unwrap();
    let file = dir.join("input");
    assert_eq!(
        value(run.env(), "COMFAAS_INPUT_FILE").unwrap(),
        file.as_os_str()
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"42");
    std::fs::write(run.spill_file(), b"spilled").unwrap();
    let spill = run.spill_file();
    run.remove().await;
    assert!(!dir.exists() && !spill.exists());
}

#[tokio::test]
async fn a_large_input_is_shared_where_it_already_is_read_only() {
    let root = tempfile::tempdir().unwrap();
    let sandbox = Sandboxes::none()
        .sandbox(&installation(root.path()), &manifest("pi", ""), "edge-1")
        .unwrap();
    let mut run = sandbox
        .enter(root.path().join("run-2"), "inv-2")
        .await
        .unwrap();
    let cached = root.path().join("cached-input");
    run.share_input(&RunInput::File(cached.clone()))
        .await
        .unwrap();
    assert_eq!(
        value(run.env(), "COMFAAS_INPUT_FILE").unwrap(),
        cached.as_os_str()
    );
    assert!(run.jail().read_only.contains(&cached));
    run.remove().await;
}

#[tokio::test]
async fn a_missing_bwrap_refuses_to_start_and_none_is_explicit() {
    let data = data_dir();
    let config = SandboxConfig {
        bwrap: "/nonexistent/bwrap".into(),
        ..SandboxConfig::default()
    };
    let refused = Sandboxes::open(&config, ResourceLimits::default(), data.path(), "n")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("apt-get install bubblewrap"), "{refused}");
    let config = SandboxConfig {
        bwrap: "/nonexistent/bwrap".into(),
        ..SandboxConfig::none()
    };
    let none = Sandboxes::open(&config, ResourceLimits::default(), data.path(), "n").unwrap();
    assert_eq!(none.report().isolation, "none");
}

#[tokio::test]
async fn a_data_dir_functions_cannot_reach_is_refused_when_root() {
    if !nix::unistd::geteuid().is_root() {
        // Without root there are no function users to be kept out.
        let dir = tempfile::tempdir().unwrap();
        assert!(Sandboxes::open(
            &SandboxConfig::default(),
            ResourceLimits::default(),
            &dir.path().join("data"),
            "n"
        )
        .is_ok());
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let refused = Sandboxes::open(
        &SandboxConfig::default(),
        ResourceLimits::default(),
        &closed.path().join("data"),
        "n",
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("chmod o+x"), "{refused}");
}

#[tokio::test]
async fn a_run_sees_its_files_and_the_system_and_nothing_else() {
    let node = Node::start(ResourceLimits::default());
    let (installation, sandbox) = node.install("seer", "");
    let (_, other) = node.install("other", "");
    std::fs::write(node.data.path().join("node.creds"), "SUAxyz").unwrap();
    let bundle = installation.bundle_dir.display();
    let data = node.data.path().display();
    let script = format!(
        "cat {bundle}/run.sh; \
         ls {data}/functions/other >/dev/null 2>&1 && echo other-visible || echo No such file; \
         cat {data}/node.creds >/dev/null 2>&1 && echo creds-readable || echo No such file; \
         echo x > {bundle}/new 2>&1 || echo bundle-read-only; \
         echo x > ./mine && echo own-dir-writable; \
         ls /proc | grep -c '^[0-9]'; \
         id -u; \
         cat /sys/class/net/*/operstate 2>/dev/null | wc -l; \
         test -e /dev/shm && test -w /tmp && echo tmp-ok"
    );
    let out = stdout(&node.sh(&sandbox, &script).await);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "echo hi", "{out}");
    assert!(lines[1].contains("No such file"), "{out}");
    assert!(lines[2].contains("No such file"), "{out}");
    assert_eq!(lines[3], "bundle-read-only", "{out}");
    assert_eq!(lines[4], "own-dir-writable", "{out}");
    let pids: u32 = lines[5].parse().unwrap();
    assert!(pids <= 6, "a pid namespace of its own: {out}");
    let uid: u32 = lines[6].parse().unwrap();
    if let Some(identity) = sandbox.identity() {
        assert_eq!(uid, identity.uid);
        assert_ne!(Some(identity), other.identity(), "a user per function");
    } else {
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
    }
    assert_eq!(lines[8], "tmp-ok", "{out}");
    assert!(!node.sandboxes.report().isolation.is_empty());
}

#[tokio::test]
async fn the_input_reaches_stdin_inside_the_sandbox() {
    let node = Node::start(ResourceLimits::default());
    let (_, sandbox) = node.install("reader", "");
    assert_eq!(stdout(&node.sh(&sandbox, "cat; echo").await), "in");
}

#[tokio::test]
async fn a_daemon_dies_with_its_run() {
    let node = Node::start(ResourceLimits::default());
    let (_, sandbox) = node.install("daemon", "");
    let marker = node.data.path().join("runs").join("daemon-alive");
    // Double fork and setsid: the daemon would outlive a process group kill.
    let script = format!(
        "setsid sh -c '(sleep 1; echo alive > {}) &' & sleep 0.2; echo started",
        marker.display()
    );
    let out = node.sh(&sandbox, &script).await;
    assert_eq!(stdout(&out), "started");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!marker.exists(), "the daemon outlived its run");
}

#[tokio::test]
async fn each_limit_hit_is_named() {
    let node = Node::start(ResourceLimits::default());
    let (_, sandbox) = node.install(
        "greedy",
        "[limits]\nmemory = \"64MB\"\nprocs = 16\nfile_size = \"1MB\"\ncpu_time = \"1s\"\nopen_files = 32",
    );
    let failed = |outcome: &RunOutcome| {
        assert!(
            matches!(outcome.exit, Exit::Failed { .. }),
            "{:?} {}",
            outcome.exit,
            outcome.failure_detail()
        );
        outcome.describe_failure(Duration::from_secs(30))
    };
    let cpu = node.sh(&sandbox, "while :; do :; done").await;
    assert_eq!(cpu.limit, Some(LimitHit::CpuTime(Duration::from_secs(1))));
    assert!(failed(&cpu).starts_with("CPU time limit of 1s reached"));

    let file = node
        .sh(&sandbox, "exec head -c 2000000 /dev/zero > big")
        .await;
    assert_eq!(file.limit, Some(LimitHit::FileSize(ByteSize(1 << 20))));
    assert!(failed(&file).starts_with("file size limit of 1 MiB reached"));

    let files = node.sh(&sandbox, "ulimit -n; ulimit -H -n").await;
    assert_eq!(stdout(&files), "32\n32");

    let report = node.sandboxes.report();
    if report.cgroups != "none" {
        // bytearray fills its memory: every page is touched.
        let memory = node
            .sh(&sandbox, "exec python3 -c 'b = bytearray(200 << 20)'")
            .await;
        assert_eq!(memory.limit, Some(LimitHit::Memory(ByteSize(64 << 20))));
        assert!(failed(&memory).starts_with("memory limit of 64 MiB reached"));

        let procs = node
            .sh(&sandbox, "for i in $(seq 40); do sleep 5 & done; wait")
            .await;
        assert_eq!(
            procs.limit,
            Some(LimitHit::Procs(16)),
            "{}",
            procs.failure_detail()
        );
    }
    // Within its limits the function still runs.
    assert_eq!(stdout(&node.sh(&sandbox, "echo fine").await), "fine");
}

#[tokio::test]
async fn the_network_is_off_unless_asked_for() {
    let node = Node::start(ResourceLimits::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('connected')\" 2>&1 | tail -n 1"
    );
    let (_, closed) = node.install("offline", "");
    let out = stdout(&node.sh(&closed, &probe).await);
    assert!(out.contains("Connection refused"), "{out}");
    let (_, open) = node.install("online", "network = true");
    assert_eq!(stdout(&node.sh(&open, &probe).await), "connected");
}

#[tokio::test]
async fn secrets_arrive_as_files_of_the_run_user() {
    let node = Node::start(ResourceLimits::default());
    let (_, sandbox) = node.install("keeper", "secrets = [\"API_KEY\"]");
    let sandbox = sandbox.with_secrets(vec![("API_KEY".into(), b"s3cret".to_vec())]);
    let out = stdout(
        &node
            .sh(
                &sandbox,
                "cat secrets/API_KEY; echo; stat -c '%a %u' secrets/API_KEY; env | grep -c s3cret || true",
            )
            .await,
    );
    let uid = sandbox
        .identity()
        .map_or(nix::unistd::geteuid().as_raw(), |i| i.uid);
    assert_eq!(out, format!("s3cret\n400 {uid}\n0"));
}

/// The manifest's `env` is set by bwrap inside the jail (`--clearenv`,
/// `--setenv`); the launcher shell and bwrap start from a fixed
/// environment, so a variable such as `LD_AUDIT` cannot act on them,
/// outside the sandbox. The run still sees its variables.
#[tokio::test]
async fn the_manifest_env_is_set_inside_the_jail_not_on_its_launcher() {
    let node = Node::start(ResourceLimits::default());
    let (_, sandbox) = node.install(
        "envy",
        "env = { LD_AUDIT = \"/nowhere/audit.so\", MODE = \"x y\" }",
    );
    let dir = node.data.path().join("runs").join("run-envy");
    let run_dir = sandbox.enter(dir, "inv").await.unwrap();
    let command = run_dir
        .jail()
        .command(Path::new("/bin/true"), &[], run_dir.dir(), run_dir.env());
    let outer: Vec<_> = command
        .as_std()
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(outer, ["LANG", "PATH"], "the launcher's own environment");
    let args: Vec<_> = command
        .as_std()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let set = args
        .windows(3)
        .any(|w| w[0] == "--setenv" && w[1] == "LD_AUDIT" && w[2] == "/nowhere/audit.so");
    assert!(set && args.contains(&"--clearenv".to_owned()), "{args:?}");
    run_dir.remove().await;

    let outcome = node.sh(&sandbox, "echo \"$MODE\"").await;
    assert_eq!(String::from_utf8_lossy(&outcome.stdout).trim(), "x y");
}
