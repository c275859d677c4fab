//! The shipped binaries, started as an operator would: nats-server by hand,
//! `comfaas-dispatch` and `comfaas-exec` with `--nats-url`, `comfaas deploy`,
//! then any NATS client. Also: a killed executor stops being chosen.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::Tier;
use comfaas_tests::{binary, header, repo_root, request, NodeSpec, Platform, Process, TestNats};

fn comfaas(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("comfaas"))
        .args(["--nats-url", url])
        .args(args)
        .output()
        .expect("run comfaas")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_path_with_the_real_binaries() {
    let nats = TestNats::start().await;
    let url = nats.url().to_owned();
    let data = tempfile::tempdir().unwrap();
    let _dispatch = Process::spawn("comfaas-dispatch", &["--nats-url", &url]);
    let data_dir = data.path().to_string_lossy().into_owned();
    let _exec = Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            &url,
            "--node",
            "edge-a",
            "--tier",
            "edge",
            "--site",
            "lab",
            "--data-dir",
            &data_dir,
        ],
    );

    nats.wait_for_dispatcher().await;
    nats.wait_for_node("edge-a").await;

    let hello = repo_root().join("functions/hello");
    let out = comfaas(&url, &["deploy", hello.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deployed hello 1.0.0"), "{stdout}");
    assert!(stdout.contains("edge-a: ready"), "{stdout}");

    // Any NATS client, no comfaas code: a plain request with raw JSON.
    let client = nats.client().await;
    let reply = request(
        &client,
        "comfaas.invoke.hello",
        HeaderMap::new(),
        r#"{"name":"x"}"#.into(),
    )
    .await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(header(&reply, h::NODE), "edge-a");
    assert_eq!(header(&reply, h::TIER), "edge");
    let output: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(output["greeting"], "hello, x");
    let reply = request(
        &client,
        "comfaas.invoke.nope",
        HeaderMap::new(),
        "{}".into(),
    )
    .await;
    assert_eq!(header(&reply, h::STATUS), "error");
    assert_eq!(header(&reply, "Nats-Service-Error-Code"), "404");

    // The CLI's own views and invoke.
    let out = comfaas(
        &url,
        &["invoke", "hello", "--data", r#"{"name":"cli"}"#, "-v"],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello, cli"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Comfaas-Node: edge-a"));
    let out = comfaas(&url, &["invoke", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error 404: function `nope` is not deployed")
    );
    let out = comfaas(&url, &["nodes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("edge-a") && stdout.contains("lab") && stdout.contains("python"),
        "{stdout}"
    );
    let out = comfaas(&url, &["ls"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello") && stdout.contains("edge-a:ready"),
        "{stdout}"
    );

    // Removing it: executors drop it, invocations get 404.
    let out = comfaas(&url, &["rm", "hello"]);
    assert!(out.status.success());
    // Removal propagates through the registry watch: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = request(
            &client,
            "comfaas.invoke.hello",
            HeaderMap::new(),
            "{}".into(),
        )
        .await;
        if header(&reply, "Nats-Service-Error-Code") == "404" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hello still served after rm: {:?}",
            reply.headers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = comfaas(&url, &["rm", "hello"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("function `hello` is not deployed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_is_refused_naming_the_field() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("name = \"Bad Name\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"m.py\"", "field `name`"),
        ("name = \"x\"\nversion = \"1\"\nruntime = \"cobol\"\nentry = \"m.py\"", "unknown variant `cobol`"),
        ("name = \"x\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"m.py\"\ntimout = \"1s\"", "unknown field `timout`"),
        ("name = \"x\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"../m.py\"", "field `entry`"),
        ("name = [", "comfaas.toml:1:9: invalid array"),
        ("name = \"x\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"m.py\"\n  timout = \"1s\"", "comfaas.toml:5:3: unknown field `timout`"),
        ("name = \"x\"\nversion = \"1 0\"\nruntime = \"python\"\nentry = \"m.py\"", "comfaas.toml:2:1: field `version`"),
    ];
    for (manifest, expect) in cases {
        std::fs::write(dir.path().join("comfaas.toml"), manifest).unwrap();
        let out = comfaas(
            nats.url(),
            &["deploy", dir.path().to_str().unwrap(), "--wait", "0"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{manifest}");
        assert!(stderr.contains(expect), "{manifest}: {stderr}");
        // The path in front, as compilers print it, for editors to jump to.
        let manifest_path = dir.path().join("comfaas.toml");
        assert!(
            stderr.contains(&format!("comfaas: {}", manifest_path.display())),
            "{manifest}: {stderr}"
        );
    }
    let out = comfaas(nats.url(), &["deploy", "/nonexistent/fn"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/fn/comfaas.toml")
    );
    // Nothing was registered.
    let out = comfaas(nats.url(), &["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no functions deployed"));
}

/// A key the configuration does not have (a typo) is warned about, naming
/// the file and the key; the command still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_configuration_keys_are_warned_about() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("comfaas.toml");
    std::fs::write(
        &file,
        format!("nats_url = \"{}\"\njs_domian = \"edge\"\n", nats.url()),
    )
    .unwrap();
    let out = std::process::Command::new(binary("comfaas"))
        .args(["--config", file.to_str().unwrap(), "ls"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "configuration {}: unknown key `js_domian` is ignored",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("`nats_url`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_stops_being_chosen_within_3_s() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::cloud("survivor")).await);
    let url = p.nats.url().to_owned();
    let data_dir = p
        .scratch
        .path()
        .join("victim")
        .to_string_lossy()
        .into_owned();
    let mut victim = Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            &url,
            "--node",
            "victim",
            "--tier",
            "edge",
            "--data-dir",
            &data_dir,
        ],
    );
    p.deploy(
        &repo_root().join("functions/hello"),
        &["victim", "survivor"],
    )
    .await;
    // Both serve before the kill.
    let mut served_by = std::collections::HashSet::new();
    for _ in 0..40 {
        served_by.insert(header(&p.invoke("hello", "{}").await, h::NODE));
        if served_by.len() == 2 {
            break;
        }
    }
    assert_eq!(served_by.len(), 2, "both nodes serve: {served_by:?}");

    victim.kill().await;
    let killed = Instant::now();
    // Every invocation after the kill is answered, and never by the victim.
    for _ in 0..10 {
        let reply = p.invoke("hello", "{}").await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        assert_eq!(header(&reply, h::NODE), "survivor");
    }
    // The dispatcher's table marks it dead within 3 s of the kill.
    loop {
        let metrics = p.next_metrics().await;
        let victim_alive = metrics.nodes.iter().any(|n| n.node == "victim" && n.alive);
        if !victim_alive {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "victim still alive after 3 s: {metrics:?}"
        );
    }
    assert!(metrics_tier_ok(&p).await);
}

async fn metrics_tier_ok(p: &Platform) -> bool {
    let metrics = p.next_metrics().await;
    metrics
        .nodes
        .iter()
        .any(|n| n.node == "survivor" && n.alive && n.tier == Tier::Cloud)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_gives_504() {
    let p = Platform::start().await;
    drop(
        p.dispatcher_with(comfaas_dispatch::DispatchConfig {
            queue_wait_ms: 500,
            // Frozen, the node also misses its heartbeats: declared dead, it
            // would answer 503 "left" (see `nodedeath`) before the deadline
            // this test is about.
            dead_after_heartbeats: 30,
            ..Default::default()
        })
        .await,
    );
    let url = p.nats.url().to_owned();
    let data_dir = p
        .scratch
        .path()
        .join("frozen")
        .to_string_lossy()
        .into_owned();
    let frozen = Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            &url,
            "--node",
            "frozen",
            "--data-dir",
            &data_dir,
        ],
    );
    p.deploy(&repo_root().join("functions/hello"), &["frozen"])
        .await;
    let pid = nix::unistd::Pid::from_raw(frozen.child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT, "1s");
    let reply = p.invoke_with("hello", "{}", headers).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(header(&reply, h::STATUS), "error");
    assert_eq!(header(&reply, h::ERROR_CODE), "504");
    assert!(
        header(&reply, h::ERROR).contains("node frozen did not answer"),
        "{:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_bad_arguments_clearly() {
    let nats = TestNats::start().await;
    let cases: [(&[&str], &str); 10] = [
        (
            &["dev", "--port", "0", "--sites", "chicago,miami"],
            "--sites needs `edge`",
        ),
        (
            &["dev", "--port", "0", "--link", "chicago=20ms"],
            "--link, --uplink and --no-wan need --sites",
        ),
        (
            &[
                "dev",
                "--port",
                "0",
                "--sites",
                "edge,chicago",
                "--uplink",
                "90mbps",
            ],
            "bandwidth `90mbps`: the unit must be",
        ),
        (
            &[
                "dev",
                "--port",
                "0",
                "--sites",
                "edge,chicago",
                "--link",
                "miami=5ms",
            ],
            "`miami` is not a cloud site",
        ),
        (
            &[
                "dev",
                "--port",
                "0",
                "--sites",
                "edge,chicago",
                "--link",
                "chicago=fast",
            ],
            "latency `fast`",
        ),
        (
            &["dev", "--port", "0", "--sites", "edge,chi.cago"],
            "must be a unique name of letters",
        ),
        (
            &["invoke", "pi-mpi-c", "--procs", "16-4"],
            "the range is empty",
        ),
        (
            &[
                "invoke",
                "hello",
                "--input-file",
                "/nonexistent/readings.bin",
            ],
            "read /nonexistent/readings.bin",
        ),
        (
            &["rollback", "ghost"],
            "function `ghost` is not deployed; a removed function keeps no history",
        ),
        (
            &["invoke", "hello", "--placement", "moon"],
            "header Comfaas-Placement",
        ),
    ];
    // A dispatcher answers the last case (placement is checked there).
    let _dispatch = Process::spawn("comfaas-dispatch", &["--nats-url", nats.url()]);
    nats.wait_for_dispatcher().await;
    for (args, expect) in cases {
        // `comfaas dev` starts its own server: it refuses `--nats-url`.
        let out = if args[0] == "dev" {
            std::process::Command::new(binary("comfaas"))
                .args(args)
                .output()
                .expect("run comfaas")
        } else {
            comfaas(nats.url(), args)
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
