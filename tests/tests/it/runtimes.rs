//! Every runtime deployed and invoked through the dispatcher; MPI jobs at 1,
//! 2 and 4 processes; handler mode's warm workers; run safety.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{header, local_pi, points, repo_root, NodeSpec, Platform};

fn json(reply: &async_nats::Message) -> serde_json::Value {
    assert_eq!(header(reply, h::STATUS), "ok", "{:?}", reply.headers);
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

async fn one_node() -> Platform {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_and_other_runtimes_serve() {
    let p = one_node().await;
    for name in ["hello-c", "hello-java"] {
        p.deploy(&repo_root().join("functions").join(name), &["edge-1"])
            .await;
        let out = json(&p.invoke(name, "12345").await);
        assert_eq!(out["bytes"], 5, "{name}");
    }
    // `exec`: any executable in the bundle.
    let dir = p.function("shout", "", &[("run.sh", "#!/bin/sh\ntr a-z A-Z\n")]);
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"shout\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p.invoke("shout", "quiet please").await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(&reply.payload[..], b"QUIET PLEASE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_that_does_not_compile_fails_its_install_with_the_compiler_error() {
    let p = one_node().await;
    let dir = p.function(
        "broken-c",
        "",
        &[("main.c", "int main(void) { return nope; }\n")],
    );
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"broken-c\"\nversion = \"1\"\nruntime = \"c\"\nentry = \"main.c\"\n",
    )
    .unwrap();
    let deployment = comfaas::deploy::deploy_dir(&p.registry, &dir)
        .await
        .unwrap();
    p.wait_state(
        &deployment,
        &["edge-1"],
        comfaas_schemas::InstallState::Failed,
    )
    .await;
    let reply = p.invoke("broken-c", "").await;
    let message = header(&reply, h::ERROR);
    assert_eq!(header(&reply, h::ERROR_CODE), "503");
    assert!(
        message.contains("cc failed") && message.contains("nope"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pi_is_the_same_in_every_language_and_at_1_2_and_4_processes() {
    let p = one_node().await;
    for name in ["pi-mpi-c", "pi-mpi-py", "pi-mpi-rs"] {
        p.deploy(&repo_root().join("functions").join(name), &["edge-1"])
            .await;
    }
    let data = points(100_000, 7);
    let expected = local_pi(&data);
    for name in ["pi-mpi-c", "pi-mpi-py", "pi-mpi-rs"] {
        for procs in [1u32, 2, 4] {
            let mut headers = HeaderMap::new();
            headers.insert(h::PROCS, procs.to_string().as_str());
            let out = json(&p.invoke_bytes(name, data.clone(), headers).await);
            assert_eq!(out["points"], 100_000, "{name} at {procs}");
            assert_eq!(out["procs"], procs, "{name} at {procs}");
            let pi = out["pi"].as_f64().unwrap();
            assert!(
                (pi - expected).abs() < 1e-9,
                "{name} at {procs}: {pi} vs {expected}"
            );
        }
    }
    // More processes than the node allows: refused, not run.
    let mut headers = HeaderMap::new();
    headers.insert(h::PROCS, "16");
    let reply = p.invoke_bytes("pi-mpi-c", data.clone(), headers).await;
    assert_eq!(header(&reply, h::ERROR_CODE), "503");
    assert!(
        header(&reply, h::ERROR).contains("allows 16 processes"),
        "{:?}",
        reply.headers
    );
    // An input that is not a set of points is a clear error.
    let reply = p
        .invoke_bytes("pi-mpi-c", b"abc".to_vec(), HeaderMap::new())
        .await;
    assert_eq!(header(&reply, h::ERROR_CODE), "500");
    assert!(
        header(&reply, h::ERROR).contains("got 3 bytes"),
        "{:?}",
        reply.headers
    );
}

/// A process range runs on each node with as many processes as it allows,
/// the dispatcher's metrics record the count, and a range no node can meet
/// is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_range_is_fitted_to_the_chosen_node() {
    let p = one_node().await;
    drop(
        p.executor(NodeSpec {
            max_procs: 6,
            ..NodeSpec::cloud("cloud-1")
        })
        .await,
    );
    p.deploy(
        &repo_root().join("functions/pi-mpi-c"),
        &["edge-1", "cloud-1"],
    )
    .await;
    let data = points(20_000, 3);
    let expected = local_pi(&data);
    for (node, procs) in [("edge-1", 4), ("cloud-1", 6)] {
        let mut headers = HeaderMap::new();
        headers.insert(h::PROCS, "2-16");
        headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
        let reply = p.invoke_bytes("pi-mpi-c", data.clone(), headers).await;
        let out = json(&reply);
        assert_eq!(header(&reply, h::NODE), node);
        assert_eq!(out["procs"], procs, "{node}: {out}");
        assert!((out["pi"].as_f64().unwrap() - expected).abs() < 1e-9);
    }
    let metrics = p.next_metrics().await;
    assert!(
        metrics
            .recent
            .iter()
            .any(|r| r.node == "cloud-1" && r.procs == Some(6)),
        "{:?}",
        metrics.recent
    );
    for (range, says) in [
        ("8-16", "allows 8 processes"),
        ("0-4", "at least 1 process"),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(h::PROCS, range);
        let reply = p.invoke_bytes("pi-mpi-c", data.clone(), headers).await;
        assert_eq!(header(&reply, h::STATUS), "error", "{range}");
        assert!(
            header(&reply, h::ERROR).contains(says),
            "{range}: {:?}",
            reply.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_mode_keeps_workers_warm_and_replaces_dead_ones() {
    let p = one_node().await;
    let module = r#"
import os, sys, time
CALLS = 0
def handle(data):
    global CALLS
    CALLS += 1
    text = data.decode()
    if text == "raise":
        raise ValueError("bad reading")
    if text == "exit":
        os._exit(7)
    if text == "hang":
        time.sleep(60)
    print("a print goes to stderr, not into the protocol")
    # Each worker has a pid namespace (every one is pid 2) and a folder of its own.
    return {"worker": os.getcwd(), "calls": CALLS, "echo": text}
"#;
    let dir = p.function(
        "warm",
        "mode = \"handler\"\ntimeout = \"2s\"",
        &[("main.py", module)],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let first = json(&p.invoke("warm", "a").await);
    let second = json(&p.invoke("warm", "b").await);
    assert_eq!(
        first["worker"], second["worker"],
        "one warm worker serves both"
    );
    assert_eq!(second["calls"], 2, "the module stayed loaded");
    assert_eq!(second["echo"], "b");

    let reply = p.invoke("warm", "raise").await;
    assert_eq!(header(&reply, h::ERROR_CODE), "500");
    assert!(
        header(&reply, h::ERROR).contains("ValueError: bad reading"),
        "{:?}",
        reply.headers
    );
    assert_eq!(
        json(&p.invoke("warm", "c").await)["worker"],
        first["worker"],
        "an exception keeps the worker"
    );

    let reply = p.invoke("warm", "exit").await;
    assert_eq!(header(&reply, h::ERROR_CODE), "500");
    assert!(
        header(&reply, h::ERROR).contains("status 7"),
        "{:?}",
        reply.headers
    );
    let after_exit = json(&p.invoke("warm", "d").await);
    assert_ne!(
        after_exit["worker"], first["worker"],
        "a dead worker is replaced"
    );

    let reply = p.invoke("warm", "hang").await;
    assert_eq!(header(&reply, h::ERROR_CODE), "408");
    let after_hang = json(&p.invoke("warm", "e").await);
    assert_ne!(
        after_hang["worker"], after_exit["worker"],
        "a hung worker is killed and replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_module_that_fails_to_import_fails_the_install() {
    let p = one_node().await;
    let dir = p.function(
        "noimport",
        "mode = \"handler\"",
        &[(
            "main.py",
            "import no_such_module_anywhere\ndef handle(d):\n    return d\n",
        )],
    );
    let deployment = comfaas::deploy::deploy_dir(&p.registry, &dir)
        .await
        .unwrap();
    p.wait_state(
        &deployment,
        &["edge-1"],
        comfaas_schemas::InstallState::Failed,
    )
    .await;
    let reply = p.invoke("noimport", "").await;
    assert!(
        header(&reply, h::ERROR).contains("No module named 'no_such_module_anywhere'"),
        "{:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_see_no_executor_secrets_and_a_private_directory() {
    // nextest runs each test in its own process: this variable is the executor's.
    std::env::set_var("COMFAAS_TEST_SECRET_TOKEN", "hunter2");
    let p = one_node().await;
    let script = "import os, json\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), 'files': os.listdir('.')}))\nopen('scratch.txt', 'w').write('x')\n";
    let dir = p.function("envdump", "", &[("main.py", script)]);
    p.deploy(&dir, &["edge-1"]).await;
    let first = json(&p.invoke("envdump", "").await);
    let env = first["env"].as_object().unwrap();
    assert!(
        !env.values().any(|v| v == "hunter2"),
        "secret leaked: {env:?}"
    );
    assert!(env.keys().all(|k| !k.contains("SECRET")), "{env:?}");
    assert_eq!(env["COMFAAS_FUNCTION"], "envdump");
    assert_eq!(first["files"].as_array().unwrap().len(), 0, "starts empty");
    let second = json(&p.invoke("envdump", "").await);
    assert_ne!(
        first["cwd"], second["cwd"],
        "each run has its own directory"
    );
    assert!(
        !std::path::Path::new(first["cwd"].as_str().unwrap()).exists(),
        "and it is removed"
    );
}
