//! `comfaas dev` as a new user runs it: the real binary, in a folder
//! outside the repository (no `functions/`, no `nats/`). It prints each
//! stage and a hint with the URL it really listens on; its nats-server dies
//! with it and its store is removed when it stops; a port in use is one
//! clear line; `--max-procs` lets a small machine run a job of more
//! processes than it has cores; `--mqtt-port` takes MQTT devices; on a
//! small disk (`--store-limit`) every store is made smaller and it serves.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use comfaas_tests::{binary, repo_root};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::mqtt::{device_at, Login, Publish};

/// A running `comfaas dev` and what it printed until it was up.
struct Dev {
    child: tokio::process::Child,
    lines: Vec<String>,
    /// What it writes on stderr (its services' warnings), read as it comes
    /// so that it never blocks on a full pipe.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _cwd: tempfile::TempDir,
}

impl Dev {
    /// Starts `comfaas dev ARGS` in a new empty folder and waits (at most
    /// 5 minutes: functions may compile) until it says it is up. Its
    /// servers get the suite's JetStream limit unless ARGS give one.
    async fn start(args: &[&str]) -> Self {
        let cwd = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(binary("comfaas"))
            .arg("dev")
            .args(args)
            .args(comfaas_tests::store_limit_args(args))
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        let mut lines = Vec::new();
        let up = tokio::time::timeout(Duration::from_secs(300), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                let up = line.contains("Ctrl-C stops everything");
                lines.push(line);
                if up {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !up {
            let _ = child.start_kill();
            let _ = child.wait().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "comfaas dev {args:?} did not come up:\n{}\n{}",
                lines.join("\n"),
                stderr.lock().unwrap().join("\n")
            );
        }
        // Keep draining what it prints so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self {
            child,
            lines,
            stderr,
            _cwd: cwd,
        }
    }

    /// The text it printed until it was up.
    fn output(&self) -> String {
        self.lines.join("\n")
    }

    /// What it printed until it was up, and on stderr until now: for a
    /// failing test to show.
    fn log(&self) -> String {
        format!(
            "comfaas dev's stdout until up:\n{}\ncomfaas dev's stderr:\n{}",
            self.output(),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// The URL of its nats-server, from the line saying it is up.
    fn url(&self) -> String {
        let line = self
            .lines
            .iter()
            .find(|l| l.contains("with JetStream at "))
            .unwrap_or_else(|| panic!("no server line:\n{}", self.output()));
        line.split("with JetStream at ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned()
    }

    /// The JetStream store of its server.
    fn store(&self) -> PathBuf {
        let text = self.output();
        let store = text
            .split("(store ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("no store in:\n{text}"));
        PathBuf::from(store)
    }

    /// Its MQTT port, from the line announcing it.
    fn mqtt_port(&self) -> u16 {
        let text = self.output();
        text.split("MQTT devices at ")
            .nth(1)
            .and_then(|rest| rest.split("127.0.0.1:").nth(1))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no MQTT port in:\n{text}"))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

/// `comfaas ARGS` run to its end.
fn comfaas(args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("comfaas"))
        .args(args)
        .output()
        .unwrap()
}

/// Whether a NATS client can connect to `url` now.
async fn reachable(url: &str) -> bool {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .is_ok()
}

/// Waits (at most 20 s) until nothing answers at `url`.
async fn wait_unreachable(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reachable(url).await {
        assert!(
            Instant::now() < deadline,
            "nats-server at {url} still answers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A folder holding a copy of the repository's function `name`.
fn functions_with(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = repo_root().join("functions").join(name);
    let to = dir.path().join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Outside the repository, with no functions: it starts with none and
/// says so, prints each stage, its hint names the URL it listens on (a free
/// port, asked with `--port 0`), an MQTT device's event for a missing
/// function gets an error result over MQTT, and SIGTERM stops it with its
/// server gone and its store removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_anywhere_says_where_and_cleans_up() {
    let dev = Dev::start(&["--port", "0", "--clouds", "0", "--mqtt-port", "0"]).await;
    let text = dev.output();
    let url = dev.url();
    assert_ne!(url, "nats://127.0.0.1:0", "{text}");
    for stage in [
        "no functions folder at functions: starting with none",
        "dispatcher dispatch-dev up",
        "executor edge-1 (edge",
    ] {
        assert!(text.contains(stage), "missing `{stage}`:\n{text}");
    }
    assert!(
        text.contains(&format!("comfaas --nats-url {url} invoke hello")),
        "the hint names another URL:\n{text}"
    );
    assert!(reachable(&url).await);
    let out = comfaas(&["--nats-url", &url, "nodes"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("edge-1"),
        "{out:?}"
    );

    let report = device_at(
        dev.mqtt_port(),
        None,
        &["comfaas/result/nope"],
        &[Publish {
            topic: "comfaas/event/nope",
            payload: "{}",
            qos: 1,
        }],
        1,
    )
    .await;
    assert_eq!(report.messages.len(), 1, "{report:?}");
    assert!(
        report.messages[0].payload.contains("\"code\":404"),
        "{report:?}"
    );

    let store = dev.store();
    assert!(store.is_dir(), "{}", store.display());
    dev.signal(nix::sys::signal::Signal::SIGTERM);
    let mut dev = dev;
    let status = tokio::time::timeout(Duration::from_secs(60), dev.child.wait())
        .await
        .expect("dev stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!store.exists(), "{} left behind", store.display());
    wait_unreachable(&url).await;
}

/// `dev --secure --mqtt-port`: its MQTT device logs in with the password
/// dev wrote, over TLS, and gets its result; a wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_dev_takes_its_mqtt_device() {
    let auth = tempfile::tempdir().unwrap();
    let dir = auth.path().join("auth");
    let dir_arg = dir.to_str().unwrap();
    let dev = Dev::start(&[
        "--port",
        "0",
        "--clouds",
        "0",
        "--mqtt-port",
        "0",
        "--secure",
        "--auth-dir",
        dir_arg,
    ])
    .await;
    assert!(
        dev.output().contains("mqtts://127.0.0.1:"),
        "{}",
        dev.output()
    );
    let password = std::fs::read_to_string(dir.join("mqtt/device.password")).unwrap();
    let login = |password: &str| Login {
        user: "device".to_owned(),
        password: password.trim().to_owned(),
        ca: dir.join("tls/ca.pem"),
    };
    let report = device_at(
        dev.mqtt_port(),
        Some(&login(&password)),
        &["comfaas/result/#"],
        &[Publish {
            topic: "comfaas/event/nope",
            payload: "{}",
            qos: 1,
        }],
        1,
    )
    .await;
    assert!(!report.refused, "{report:?}");
    assert!(
        report
            .messages
            .iter()
            .any(|m| m.topic == "comfaas/result/nope" && m.payload.contains("\"code\":404")),
        "{report:?}"
    );
    let report = device_at(dev.mqtt_port(), Some(&login("wrong")), &[], &[], 0).await;
    assert!(report.refused, "{report:?}");
}

/// With `--sites`, the edge's server takes the MQTT devices, and their
/// events run there; `--store-limit` sets the sites' JetStream limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_sites_take_mqtt_devices_at_the_edge() {
    let dev = Dev::start(&[
        "--port",
        "0",
        "--sites",
        "edge,chicago",
        "--no-wan",
        "--mqtt-port",
        "0",
        "--store-limit",
        "1TiB",
    ])
    .await;
    // A limit over the disk: a stream of half a tebibyte is reserved,
    // where nats-server's default (75 % of the disk free) would refuse it.
    let js = async_nats::jetstream::new(async_nats::connect(dev.url()).await.unwrap());
    let roomy = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ROOMY".to_owned(),
            subjects: vec!["roomy.>".to_owned()],
            max_bytes: 512 << 30,
            ..Default::default()
        })
        .await;
    assert!(roomy.is_ok(), "{roomy:?}\n{}", dev.log());
    js.delete_stream("ROOMY").await.unwrap();
    let report = device_at(
        dev.mqtt_port(),
        None,
        &["comfaas/result/nope"],
        &[Publish {
            topic: "comfaas/event/nope",
            payload: "{}",
            qos: 1,
        }],
        1,
    )
    .await;
    assert_eq!(report.messages.len(), 1, "{report:?}");
    assert!(
        report.messages[0].payload.contains("\"code\":404"),
        "{report:?}"
    );
}

/// Killed outright (no chance to stop anything), `comfaas dev` takes its
/// nats-server with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dev_leaves_no_nats_server() {
    let mut dev = Dev::start(&["--port", "0", "--clouds", "0"]).await;
    let url = dev.url();
    assert!(reachable(&url).await);
    dev.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = dev.child.wait().await;
    wait_unreachable(&url).await;
}

/// A port something else listens on is refused in one line naming it and
/// the flag to change, before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let cwd = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["dev", "--port", port.as_str()], "--port"),
        (
            vec!["dev", "--port", "0", "--mqtt-port", port.as_str()],
            "--mqtt-port",
        ),
    ] {
        let out = std::process::Command::new(binary("comfaas"))
            .args(&args)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("port {port}")) && stderr.contains("is in use"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// `dev --help` lists no flag that a mode would ignore: such a pair is
/// refused, and `--slots` states one default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_refuses_flags_it_would_ignore() {
    let cwd = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--port", "0", "--clouds", "2", "--sites", "edge,chicago"],
            "--clouds",
        ),
        (
            &["--port", "0", "--mqtt-port", "0", "--cluster", "3"],
            "--mqtt-port",
        ),
        (
            &["--port", "0", "--nats-configs", "nats"],
            "--nats-configs is for --sites and --cluster",
        ),
        (&["--port", "0", "--max-procs", "0"], "--max-procs"),
        (&["--port", "0", "--store-limit", "2"], "`2` is under 1MiB"),
        (
            &["--port", "0", "--nats-url", "nats://10.0.0.1:4222"],
            "--nats-url do(es) not apply",
        ),
        (
            &[
                "--port",
                "0",
                "--sites",
                "edge,chicago",
                "--nats-configs",
                "/nonexistent",
            ],
            "--nats-configs /nonexistent: no hub.conf there",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(binary("comfaas"))
            .arg("dev")
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let help = String::from_utf8_lossy(&comfaas(&["dev", "--help"]).stdout).into_owned();
    // The flag's help: its line and, when clap puts the text on lines of
    // its own (long help), those up to the next flag.
    let slots: String = help
        .lines()
        .skip_while(|l| !l.contains("--slots"))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(slots.contains("--slots"), "{help}");
    assert_eq!(slots.matches("[default").count(), 1, "{slots}");
}

/// The host's cores.
fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Invokes `pi-mpi-c` with `procs` processes at `url` on the points in
/// `input`.
fn pi(url: &str, procs: u32, input: &std::path::Path) -> std::process::Output {
    comfaas(&[
        "--nats-url",
        url,
        "invoke",
        "pi-mpi-c",
        "--procs",
        &procs.to_string(),
        "--data",
        &format!("@{}", input.display()),
    ])
}

/// On a small machine a job of more processes than it has cores is
/// refused with a clear message, and runs under `--max-procs`, which the
/// node table shows as oversubscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_procs_runs_jobs_bigger_than_the_host() {
    let procs = cores() * 2;
    let functions = functions_with("pi-mpi-c");
    let folder = functions.path().to_str().unwrap();
    let input = functions.path().join("points.bin");
    std::fs::write(&input, comfaas_tests::points(10_000, 7)).unwrap();

    let dev = Dev::start(&["--port", "0", "--clouds", "0", "--functions", folder]).await;
    assert!(
        dev.output().contains("pi-mpi-c 1.0.0 installed"),
        "{}",
        dev.output()
    );
    let out = pi(&dev.url(), procs, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}\n{}", dev.log());
    assert!(
        stderr.contains(&format!("allows {procs} processes")),
        "{stderr}\n{}",
        dev.log()
    );
    drop(dev);

    let max = procs.to_string();
    let dev = Dev::start(&[
        "--port",
        "0",
        "--clouds",
        "0",
        "--functions",
        folder,
        "--max-procs",
        &max,
    ])
    .await;
    assert!(dev.output().contains("oversubscribing"), "{}", dev.output());
    let out = pi(&dev.url(), procs, &input);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.log()
    );
    let nodes = comfaas(&["--nats-url", &dev.url(), "nodes"]);
    let table = String::from_utf8_lossy(&nodes.stdout);
    assert!(
        table.contains(&format!("{procs}(>{}cores)", cores())),
        "{table}"
    );
}

/// On a small disk (JetStream may reserve 1.5 GiB: the first stores, made
/// in full, once took it all and the node waited for the last one for
/// ever, while dev said the function was installed) every store is made
/// smaller, the node serves and a function runs. With no room at all dev
/// stops with one clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_disk_gets_smaller_stores_and_no_disk_a_clear_error() {
    let functions = functions_with("pi-mpi-c");
    let folder = functions.path().to_str().unwrap();
    let input = functions.path().join("points.bin");
    std::fs::write(&input, comfaas_tests::points(1_000, 3)).unwrap();
    let quiet = ["--no-dashboard", "--metrics-port", "0"];
    let args = |limit: &'static str| {
        let mut args = vec!["--port", "0", "--clouds", "0", "--functions", folder];
        args.extend(quiet);
        args.extend(["--store-limit", limit]);
        args
    };

    let dev = Dev::start(&args("1536MiB")).await;
    assert!(
        dev.output().contains("at most 1536 MiB of disk")
            && dev.output().contains("pi-mpi-c 1.0.0 installed"),
        "{}",
        dev.log()
    );
    let out = pi(&dev.url(), 2, &input);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && answer.contains("\"pi\""),
        "{answer}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.log()
    );
    // Each shrunk store says so.
    let log = dev.log();
    assert!(
        log.contains("the object store comfaas_outputs gets")
            && log.contains("leaving room for the rest"),
        "{log}"
    );
    drop(dev);

    let cwd = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary("comfaas"))
            .arg("dev")
            .args(args("1MiB"))
            .current_dir(cwd.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("comfaas dev with no room must stop")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no disk left to reserve") && stderr.contains("max_file_store"),
        "{stderr}"
    );
}
