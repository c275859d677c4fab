//! Versions: installs beside the served one, atomic switch, rollback,
//! broken upgrades, venv isolation, and refused bundles.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use comfaas_platform::registry::SameVersion;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{decode, InstallState, Manifest, NodeLoad, Runtime};
use comfaas_tests::{header, write_wheel, NodeSpec, Platform};
use futures::StreamExt;

fn versioned(
    p: &Platform,
    name: &str,
    version: &str,
    extra: &str,
    body: &str,
) -> std::path::PathBuf {
    let dir = p.function(name, extra, &[("main.py", body)]);
    let manifest = std::fs::read_to_string(dir.join("comfaas.toml")).unwrap();
    std::fs::write(
        dir.join("comfaas.toml"),
        manifest.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
    )
    .unwrap();
    dir
}

fn says(version: &str) -> String {
    format!("import os\nprint('{version}', os.environ['COMFAAS_BUNDLE_DIR'])\n")
}

/// (version, bundle dir) from a reply of a `says` function.
fn said(reply: &async_nats::Message) -> (String, String) {
    assert_eq!(header(reply, h::STATUS), "ok", "{:?}", reply.headers);
    let text = String::from_utf8_lossy(&reply.payload).trim().to_owned();
    let (v, dir) = text.split_once(' ').unwrap();
    (v.to_owned(), dir.to_owned())
}

async fn one_node() -> Platform {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p
}

/// A dispatcher and node `edge-1`, whose package index also offers the
/// wheel `comfaas-probe` at each of `versions` (its module `comfaas_probe`
/// says its `VERSION`).
async fn one_node_with_probe(versions: &[&str]) -> Platform {
    let p = Platform::start().await;
    let wheels = p.scratch.path().join("wheels");
    for version in versions {
        write_wheel(&wheels, "comfaas-probe", "comfaas_probe", version);
    }
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            extra_wheels: vec![wheels],
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_invocation() {
    let p = one_node().await;
    p.deploy(&versioned(&p, "svc", "1", "", &says("v1")), &["edge-1"])
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let client = p.client.clone();
        let subject = p.subjects.invoke("svc");
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply =
                    comfaas_tests::request(&client, &subject, Default::default(), "".into()).await;
                seen.push(said(&reply).0);
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Rebuilt in another folder: same name, new bundle.
    let v2 = versioned(&p, "svc", "2", "", &says("v2"));
    p.deploy(&v2, &["edge-1"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in load {
        let seen = task.await.unwrap(); // said() asserted every reply was ok
        let first_v2 = seen
            .iter()
            .position(|v| v == "v2")
            .expect("v2 served after the upgrade");
        assert!(
            seen[first_v2..].iter().all(|v| v == "v2"),
            "no going back once switched: {seen:?}"
        );
        all.extend(seen);
    }
    assert!(all.iter().any(|v| v == "v1") && all.len() > 10, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_version_leaves_the_old_one_serving_and_rollback_works() {
    let p = one_node().await;
    let v1 = p
        .deploy(&versioned(&p, "svc", "1", "", &says("v1")), &["edge-1"])
        .await;
    // Redeploying the same bundle installs nothing new: same install folder.
    let (_, dir_before) = said(&p.invoke("svc", "").await);
    comfaas::deploy::deploy_dir(&p.registry, &versioned(&p, "svc", "1", "", &says("v1")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        said(&p.invoke("svc", "").await),
        ("v1".to_owned(), dir_before)
    );

    // Version 2 needs a package that does not exist: its install fails.
    let broken = versioned(
        &p,
        "svc",
        "2",
        "requirements = [\"no-such-package-anywhere==9.9\"]",
        &says("v2"),
    );
    let v2 = comfaas::deploy::deploy_dir(&p.registry, &broken)
        .await
        .unwrap();
    p.wait_state(&v2, &["edge-1"], InstallState::Failed).await;
    assert_eq!(
        said(&p.invoke("svc", "").await).0,
        "v1",
        "the old version still serves"
    );
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load_all())
        .await
        .unwrap();
    let load: NodeLoad = decode(&loads.next().await.unwrap().payload).unwrap();
    let state = load.functions.iter().find(|f| f.name == "svc").unwrap();
    assert_eq!(state.version, "2");
    assert_eq!(state.state, InstallState::Failed);
    assert_eq!(state.serving.as_deref(), Some("1"));
    assert!(
        state
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no-such-package-anywhere"),
        "{state:?}"
    );

    // A good version 3, then back to 1, then forward to 3 by name.
    let v3 = p
        .deploy(&versioned(&p, "svc", "3", "", &says("v3")), &["edge-1"])
        .await;
    assert_eq!(said(&p.invoke("svc", "").await).0, "v3");
    let back = p.registry.rollback("svc", Some("1")).await.unwrap();
    assert_eq!(back.bundle.digest, v1.bundle.digest);
    p.wait_state(&back, &["edge-1"], InstallState::Ready).await;
    assert_eq!(said(&p.invoke("svc", "").await).0, "v1");
    let forward = p.registry.rollback("svc", None).await.unwrap();
    assert_eq!(
        forward.bundle.digest, v3.bundle.digest,
        "plain rollback: the newest other bundle"
    );
    let err = p
        .registry
        .rollback("svc", Some("7"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no version `7` of `svc`") && err.contains("1, 1, 2, 3, 1, 3"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_functions_pin_two_versions_of_one_package_at_once() {
    let p = one_node_with_probe(&["1.0", "2.0"]).await;
    let body = "import comfaas_probe, time\ntime.sleep(0.2)\nprint(comfaas_probe.VERSION)\n";
    for (name, pin) in [("probe-a", "1.0"), ("probe-b", "2.0")] {
        let extra = format!("requirements = [\"comfaas-probe=={pin}\"]");
        p.deploy(&p.function(name, &extra, &[("main.py", body)]), &["edge-1"])
            .await;
    }
    // Both at the same time, interleaved.
    let calls = (0..6).map(|i| {
        let name = if i % 2 == 0 { "probe-a" } else { "probe-b" };
        let client = p.client.clone();
        let subject = p.subjects.invoke(name);
        async move {
            let reply =
                comfaas_tests::request(&client, &subject, Default::default(), "".into()).await;
            (
                name,
                String::from_utf8_lossy(&reply.payload).trim().to_owned(),
            )
        }
    });
    for (name, version) in futures::future::join_all(calls).await {
        let expected = if name == "probe-a" { "1.0" } else { "2.0" };
        assert_eq!(version, expected, "{name}");
    }
}

/// A gzip'd tar with one regular entry of `size` zero bytes at `path`,
/// written raw so that nothing checks the path on the way.
fn tarball(path: &str, size: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_cksum();
    builder
        .append(&header, std::io::repeat(0).take(size))
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

use std::io::Read;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bundles_are_refused_and_nothing_is_installed() {
    let p = one_node().await;
    let manifest = |name: &str| Manifest {
        name: name.into(),
        version: "1".into(),
        runtime: Runtime::Python,
        entry: "main.py".into(),
        description: String::new(),
        requirements: vec![],
        timeout: None,
        procs: None,
        placement: Default::default(),
        mode: Default::default(),
        workers: None,
        env: Default::default(),
        network: false,
        secrets: vec![],
        limits: Default::default(),
    };
    let cases = [
        (
            "escape",
            tarball("../../evil.py", 3),
            "escapes the bundle root",
        ),
        (
            "absolute",
            tarball("/tmp/comfaas-evil.py", 3),
            "escapes the bundle root",
        ),
        ("bomb", tarball("main.py", 300 << 20), "bundle is too large"),
    ];
    let functions_dir = p.scratch.path().join("nodes/edge-1/functions");
    for (name, bytes, expect) in cases {
        let digest = comfaas_runtime::bundle::digest_of(&bytes);
        let deployment = p
            .registry
            .deploy(manifest(name), bytes.into(), &digest, SameVersion::Refuse)
            .await
            .unwrap()
            .into_deployment();
        p.wait_state(&deployment, &["edge-1"], InstallState::Failed)
            .await;
        let reply = p.invoke(name, "").await;
        assert_eq!(header(&reply, h::ERROR_CODE), "503");
        assert!(
            header(&reply, h::ERROR).contains(expect),
            "{name}: {:?}",
            reply.headers
        );
        let left: Vec<_> = std::fs::read_dir(functions_dir.join(name))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
    }
    assert!(!p.scratch.path().join("nodes/edge-1/evil.py").exists());
    assert!(!std::path::Path::new("/tmp/comfaas-evil.py").exists());
    // Over the bundle size limit: refused before anything is stored.
    let huge = vec![0u8; (comfaas_platform::registry::MAX_BUNDLE_BYTES + 1) as usize];
    let err = p
        .registry
        .deploy(
            manifest("huge"),
            huge.into(),
            "sha256:00",
            SameVersion::Refuse,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert!(p.registry.get("huge").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_no_kept_revision_uses_are_collected() {
    let p = Platform::start().await;
    let v1 = comfaas::deploy::deploy_dir(&p.registry, &versioned(&p, "gc", "1", "", &says("v1")))
        .await
        .unwrap();
    let v2 = comfaas::deploy::deploy_dir(&p.registry, &versioned(&p, "gc", "2", "", &says("v2")))
        .await
        .unwrap();
    let keep =
        comfaas::deploy::deploy_dir(&p.registry, &versioned(&p, "keep", "1", "", &says("k")))
            .await
            .unwrap();
    // Both of gc's bundles are in its kept history: nothing goes.
    assert_eq!(p.registry.collect_garbage(Duration::ZERO).await.unwrap(), 0);
    // Young bundles are spared even when unused.
    p.registry.remove("gc").await.unwrap();
    assert_eq!(
        p.registry
            .collect_garbage(Duration::from_secs(600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(p.registry.collect_garbage(Duration::ZERO).await.unwrap(), 2);
    assert!(p.registry.fetch_bundle(&v1.bundle).await.is_err());
    assert!(p.registry.fetch_bundle(&v2.bundle).await.is_err());
    assert!(
        p.registry.fetch_bundle(&keep.bundle).await.is_ok(),
        "a deployed bundle stays"
    );
}

/// `comfaas deploy|rm|rollback …` against `p`, as an operator runs it:
/// (success, stdout, stderr).
async fn cli(p: &Platform, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(["--nats-url", p.nats.url()])
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(dir: &std::path::Path) -> &str {
    dir.to_str().unwrap()
}

/// A version names one content: deploying it again unchanged is a no-op,
/// with other content it is refused unless `--force`, which nodes then
/// install. `rm` drops the history: rollback says so, and the version
/// number is free again. `--wait 0` says it did not wait; an entry that is
/// not in the folder is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_names_one_content_and_rm_forgets_it() {
    let p = one_node().await;
    let v1 = versioned(&p, "svc", "1", "", &says("v1"));
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&v1)]).await;
    assert!(ok && stdout.contains("edge-1: ready"), "{stdout}{stderr}");
    assert_eq!(said(&p.invoke("svc", "").await).0, "v1");

    // The same content again: nothing is written, nothing reinstalls.
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&v1)]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("unchanged: svc 1 is already deployed with this content")
            && stdout.contains("edge-1: ready"),
        "{stdout}"
    );
    assert_eq!(p.registry.history("svc").await.unwrap().len(), 1);

    // Other content under the same number: refused, v1 goes on serving.
    let other = versioned(&p, "svc", "1", "", &says("other"));
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&other)]).await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(
            "version `1` of `svc` is already deployed with other content (bundle sha256:"
        ) && stderr.contains("raise `version` in")
            && stderr.contains("or deploy with --force to replace it"),
        "{stderr}"
    );
    assert_eq!(p.registry.history("svc").await.unwrap().len(), 1);
    assert_eq!(said(&p.invoke("svc", "").await).0, "v1");

    // Forced: the node installs the new content under the old number.
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&other), "--force"]).await;
    assert!(ok && stdout.contains("edge-1: ready"), "{stdout}{stderr}");
    assert_eq!(said(&p.invoke("svc", "").await).0, "other");

    // Not waited for: said, not "no executor is running".
    let v2 = versioned(&p, "svc", "2", "", &says("v2"));
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&v2), "--wait", "0"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("deployed svc 2") && stdout.contains("not waited for executors"),
        "{stdout}"
    );
    assert!(!stdout.contains("no executor is running"), "{stdout}");

    // Removed: its history goes with it, so rollback has nothing, and
    // version 1 may hold anything again.
    let (ok, stdout, stderr) = cli(&p, &["rm", "svc"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(p.registry.history("svc").await.unwrap().is_empty());
    let (ok, stdout, stderr) = cli(&p, &["rollback", "svc"]).await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("function `svc` is not deployed; a removed function keeps no history"),
        "{stderr}"
    );
    // (Written again: every `versioned` of a name writes the same folder.)
    let v1 = versioned(&p, "svc", "1", "", &says("v1"));
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&v1)]).await;
    assert!(ok && stdout.contains("edge-1: ready"), "{stdout}{stderr}");
    assert_eq!(said(&p.invoke("svc", "").await).0, "v1");

    // An entry that is not in the folder: refused before any upload.
    let lost = versioned(&p, "lost", "1", "", &says("x"));
    std::fs::remove_file(lost.join("main.py")).unwrap();
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&lost)]).await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("entry `main.py` (comfaas.toml) does not exist in"),
        "{stderr}"
    );
    assert!(p.registry.get("lost").await.unwrap().is_none());
}

/// `deploy --force` of the very content already deployed stores it again,
/// so a node whose install of it failed (a secret not set yet) tries again;
/// without `--force` the same content changes nothing, and the node stays
/// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_makes_a_failed_install_of_the_same_bundle_try_again() {
    let p = one_node().await;
    let dir = versioned(&p, "needs", "1", "secrets = [\"LATE\"]", &says("v1"));
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&dir), "--wait", "5"]).await;
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("edge-1: failed") && stdout.contains("secret `LATE` is not set"),
        "{stdout}{stderr}"
    );
    let js = async_nats::jetstream::new(p.client.clone());
    comfaas_platform::secrets::SecretStore::open_or_create(&js)
        .await
        .unwrap()
        .set("LATE", b"now")
        .await
        .unwrap();
    let (ok, stdout, _) = cli(&p, &["deploy", path(&dir), "--wait", "5"]).await;
    assert!(
        !ok && stdout.contains("unchanged") && stdout.contains("edge-1: failed"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = cli(&p, &["deploy", path(&dir), "--force"]).await;
    assert!(ok && stdout.contains("edge-1: ready"), "{stdout}{stderr}");
    assert_eq!(said(&p.invoke("needs", "").await).0, "v1");
}

/// A node's heartbeat says where each install's time went
/// (`FunctionState.install`) once the install ended, ready or failed: the registry
/// watch's moment, fetch, unpack, the runtime's own steps (a venv and a
/// package install for a Python function with a requirement, the step a
/// failed install failed in included) and a total that covers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_say_where_each_install_s_time_went() {
    let p = one_node_with_probe(&["1.0"]).await;
    let body = "import comfaas_probe\nprint(comfaas_probe.VERSION)\n";
    let ready = p
        .deploy(
            &p.function(
                "timed",
                "requirements = [\"comfaas-probe==1.0\"]",
                &[("main.py", body)],
            ),
            &["edge-1"],
        )
        .await;
    let failed = comfaas::deploy::deploy_dir(
        &p.registry,
        &p.function(
            "untimely",
            "requirements = [\"no-such-package-anywhere==9.9\"]",
            &[("main.py", body)],
        ),
    )
    .await
    .unwrap();
    p.wait_state(&failed, &["edge-1"], InstallState::Failed)
        .await;

    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("edge-1"))
        .await
        .unwrap();
    let load: NodeLoad = decode(&loads.next().await.unwrap().payload).unwrap();
    let state = |name: &str| {
        load.functions
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} not reported: {:?}", load.functions))
            .clone()
    };
    for (name, deployment, want) in [
        ("timed", &ready, InstallState::Ready),
        ("untimely", &failed, InstallState::Failed),
    ] {
        let f = state(name);
        assert_eq!(f.state, want, "{name}");
        let times = f
            .install
            .unwrap_or_else(|| panic!("{name}: no install times reported"));
        assert!(
            times.seen_unix_ms >= deployment.deployed_unix_ms,
            "{name}: seen {} before deployed {}",
            times.seen_unix_ms,
            deployment.deployed_unix_ms
        );
        let steps: u64 = times.steps.iter().map(|s| s.ms).sum();
        assert!(
            times.total_ms >= times.fetch_ms + times.unpack_ms + steps,
            "{name}: the total does not cover its parts: {times:?}"
        );
        let names: Vec<&str> = times.steps.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.iter().any(|s| s.contains("venv")),
            "{name}: {names:?}"
        );
        // The failed one failed in that step, and it is reported too.
        assert!(
            names.iter().any(|s| s.contains("install")),
            "{name}: no package install step: {names:?}"
        );
    }
}
