//! Trust boundaries that hold in every mode, with or without NATS auth:
//! executors install only deployments a trusted operator signed (and only
//! with the bundle that was signed), a node and a dispatcher answer only
//! on inboxes, the dispatcher believes a load report only from the node it
//! names, and secrets go in and out of their bucket by name. Each test
//! tries to cross the boundary, sees it refused, then sees the service
//! still serve.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use comfaas_platform::registry::Registry;
use comfaas_platform::secrets::{self, SecretError};
use comfaas_platform::signing::Signer;
use comfaas_schemas::names::{self, headers as h};
use comfaas_schemas::{
    decode, encode, BundleRef, Deployment, FunctionState, InstallState, Invocation, NodeLoad,
    SignaturePolicy, Tier, SCHEMA_VERSION,
};
use comfaas_tests::{binary, header, request, NodeSpec, Platform};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const NODES: [&str; 2] = ["edge-1", "edge-2"];

/// A Python function printing `text`, as version `version`.
fn says(p: &Platform, name: &str, version: &str, text: &str) -> std::path::PathBuf {
    let dir = p.function(name, "", &[("main.py", &format!("print('{text}')\n"))]);
    let manifest = std::fs::read_to_string(dir.join("comfaas.toml")).unwrap();
    std::fs::write(
        dir.join("comfaas.toml"),
        manifest.replace("version = \"1.0.0\"", &format!("version = \"{version}\"")),
    )
    .unwrap();
    dir
}

/// The body of a successful reply.
fn output(reply: &async_nats::Message) -> String {
    assert_eq!(
        header(reply, h::STATUS),
        "ok",
        "{:?} {:?}",
        reply.headers,
        reply.payload
    );
    String::from_utf8_lossy(&reply.payload).trim().to_owned()
}

/// The `comfaas` CLI against `p`'s server, with `stdin`.
async fn cli(p: &Platform, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(binary("comfaas"))
        .args(["--nats-url", p.nats.url()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until every node in `nodes` reports `deployment` failed; returns
/// each node's state of it and its signature policy.
async fn refused_by(
    p: &Platform,
    deployment: &Deployment,
    nodes: &[&str],
) -> BTreeMap<String, (FunctionState, SignaturePolicy)> {
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load_all())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = BTreeMap::new();
    while found.len() < nodes.len() {
        let message = tokio::time::timeout_at(deadline.into(), loads.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} {} not refused by all of {nodes:?}; so far {found:?}",
                    deployment.manifest.name, deployment.manifest.version
                )
            })
            .unwrap();
        let load: NodeLoad = decode(&message.payload).unwrap();
        let state = load
            .functions
            .iter()
            .find(|f| f.name == deployment.manifest.name && f.digest == deployment.bundle.digest);
        if let Some(state) = state {
            assert_ne!(
                state.state,
                InstallState::Ready,
                "{} installed {} {}",
                load.node,
                state.name,
                state.version
            );
            if state.state == InstallState::Failed && nodes.contains(&load.node.as_str()) {
                found.insert(load.node.clone(), (state.clone(), load.signatures));
            }
        }
    }
    found
}

/// Packs `dir` and stores its bundle under its own name; the deployment
/// that names it, unsigned and not yet in the registry.
async fn stored_bundle(dir: &std::path::Path) -> (Deployment, Vec<u8>) {
    let manifest = comfaas::deploy::read_manifest(dir).unwrap();
    let bundle = comfaas_runtime::pack(dir).unwrap();
    let object = bundle.digest.replace(':', "-");
    let deployment = Deployment {
        schema: SCHEMA_VERSION,
        manifest,
        bundle: BundleRef {
            object,
            digest: bundle.digest.clone(),
            size: bundle.bytes.len() as u64,
        },
        deployed_unix_ms: comfaas_schemas::now_unix_ms(),
        signature: None,
    };
    (deployment, bundle.bytes)
}

async fn put_object(p: &Platform, name: &str, bytes: &[u8]) {
    let js = jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::packages_store(&js)
        .await
        .unwrap();
    let _ = store.delete(name).await;
    store.put(name, &mut &bytes[..]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_deployments_are_refused_by_every_node_and_the_signed_one_serves_on() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    for node in NODES {
        drop(p.executor(NodeSpec::edge(node).trusting(&p.operator)).await);
    }
    p.deploy(&says(&p, "svc", "1", "v1"), &NODES).await;
    assert_eq!(output(&p.invoke("svc", "").await), "v1");

    let js = jetstream::new(p.client.clone());
    // 1. An upgrade of svc written straight into the bucket, unsigned.
    let unsigned = Registry::open(&js).await.unwrap();
    let forged = comfaas::deploy::deploy_dir(&unsigned, &says(&p, "svc", "2", "forged"))
        .await
        .unwrap();
    assert!(forged.signature.is_none());
    // 2. A new function signed by a key nobody trusts.
    let stranger = Signer::generate();
    let stranger_key = stranger.public_key();
    let by_stranger = Registry::open(&js).await.unwrap().signing_with(stranger);
    let strange = comfaas::deploy::deploy_dir(&by_stranger, &says(&p, "strange", "1", "evil"))
        .await
        .unwrap();
    // 3. A signed deployment whose manifest was changed after signing: its
    // entry now points at another file of the same bundle.
    let altered_dir = p.function(
        "altered",
        "",
        &[
            ("main.py", "print('good')\n"),
            ("evil.py", "print('evil')\n"),
        ],
    );
    let (mut altered, bytes) = stored_bundle(&altered_dir).await;
    put_object(&p, &altered.bundle.object, &bytes).await;
    p.operator.sign(&mut altered).unwrap();
    altered.manifest.entry = "evil.py".into();
    p.registry.put(&altered).await.unwrap();
    // 4. A signed deployment whose bundle object was replaced (same size,
    // other bytes) before any node fetched it.
    let (mut swapped, mut bytes) = stored_bundle(&says(&p, "swapped", "1", "good")).await;
    p.operator.sign(&mut swapped).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    put_object(&p, &swapped.bundle.object, &bytes).await;
    p.registry.put(&swapped).await.unwrap();

    let op = p.operator.public_key();
    let cases: [(&Deployment, String); 4] = [
        (
            &forged,
            "deployment refused: it is unsigned and this node installs only deployments signed by a trusted operator".to_owned(),
        ),
        (
            &strange,
            format!("deployment refused: signed by unknown key {stranger_key}"),
        ),
        (
            &altered,
            format!("deployment refused: its signature by {op} does not match its content"),
        ),
        (
            &swapped,
            format!(
                "deployment refused: bundle {} has digest sha256:",
                swapped.bundle.object
            ),
        ),
    ];
    for (deployment, reason) in cases {
        let states = refused_by(&p, deployment, &NODES).await;
        for (node, (state, signatures)) in states {
            let said = state.reason.unwrap_or_default();
            assert!(
                said.starts_with(&reason),
                "{node} on {}: {said}",
                deployment.manifest.name
            );
            assert_eq!(signatures, SignaturePolicy::Required);
            if deployment.manifest.name == "svc" {
                assert_eq!(state.serving.as_deref(), Some("1"), "{node} serves on");
            } else {
                assert_eq!(state.serving, None);
            }
        }
    }

    // Nothing forged runs anywhere; the signed version serves on.
    for _ in 0..4 {
        assert_eq!(output(&p.invoke("svc", "").await), "v1");
    }
    for name in ["strange", "altered", "swapped"] {
        let reply = p.invoke(name, "").await;
        assert_eq!(header(&reply, h::STATUS), "error", "{name} ran");
        assert!(
            header(&reply, h::ERROR).contains("deployment refused"),
            "{name}: {}",
            header(&reply, h::ERROR)
        );
    }
    // A correctly signed upgrade installs on every node and answers.
    p.deploy(&says(&p, "svc", "3", "v3"), &NODES).await;
    assert_eq!(output(&p.invoke("svc", "").await), "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_deploys_and_a_signed_rollback_installs() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec::edge("edge-1").trusting(&p.operator))
            .await,
    );
    let key = p.scratch.path().join("operator.nk");
    std::fs::write(&key, format!("{}\n", p.operator.seed().unwrap())).unwrap();
    let key = key.to_str().unwrap();

    let v1 = says(&p, "svc", "1", "v1");
    let (ok, stdout, stderr) = cli(
        &p,
        &["deploy", v1.to_str().unwrap(), "--signing-key", key],
        b"",
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    let signed_by = format!("signed by {}", p.operator.public_key());
    assert!(stdout.contains(&signed_by), "{stdout}");
    assert!(stdout.contains("edge-1: ready"), "{stdout}");
    assert_eq!(output(&p.invoke("svc", "").await), "v1");

    // Unsigned from the CLI: refused, and the CLI says so and fails.
    let (ok, stdout, stderr) = cli(
        &p,
        &["deploy", says(&p, "svc", "2", "v2").to_str().unwrap()],
        b"",
    )
    .await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("deploying unsigned"), "{stderr}");
    assert!(
        stdout.contains("edge-1: failed (deployment refused: it is unsigned"),
        "{stdout}"
    );
    assert_eq!(output(&p.invoke("svc", "").await), "v1");

    // A signed v3, then back to v1: the old record, still signed, installs.
    p.deploy(&says(&p, "svc", "3", "v3"), &["edge-1"]).await;
    assert_eq!(output(&p.invoke("svc", "").await), "v3");
    let (ok, stdout, stderr) = cli(&p, &["rollback", "svc", "--to", "1"], b"").await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("edge-1: ready"), "{stdout}");
    assert!(stdout.contains(&signed_by), "{stdout}");
    assert_eq!(output(&p.invoke("svc", "").await), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_node_installs_unsigned_and_says_signatures_are_off() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let unsigned = Registry::open(&jetstream::new(p.client.clone()))
        .await
        .unwrap();
    let d = comfaas::deploy::deploy_dir(&unsigned, &says(&p, "svc", "1", "open"))
        .await
        .unwrap();
    p.wait_state(&d, &["edge-1"], InstallState::Ready).await;
    assert_eq!(output(&p.invoke("svc", "").await), "open");
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("edge-1"))
        .await
        .unwrap();
    let load: NodeLoad = decode(&loads.next().await.unwrap().payload).unwrap();
    assert_eq!(load.signatures, SignaturePolicy::Off);
}

/// Subjects a hostile requester names as its reply subject.
const HOSTILE_REPLIES: [&str; 3] = [
    "$JS.API.STREAM.PURGE.COMFAAS_RESULTS",
    "$KV.comfaas_functions.x",
    "comfaas.result.x",
];

async fn results_count(p: &Platform) -> u64 {
    let js = jetstream::new(p.client.clone());
    let mut stream = js.get_stream(names::RESULTS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits (at most 10 s) until the results stream holds `n` messages.
async fn wait_results(p: &Platform, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = results_count(p).await;
        if have == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the results stream holds {have} messages, {n} expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_only_to_inboxes() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    // Every answer is published and kept, so one that went astray shows in
    // the results stream's count.
    drop(
        p.executor(NodeSpec {
            publish_request_results: true,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "echo",
        "",
        &[(
            "main.py",
            "import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())\n",
        )],
    );
    p.deploy(&dir, &["edge-1"]).await;
    for _ in 0..2 {
        assert_eq!(output(&p.invoke("echo", "warm").await), "warm");
    }
    wait_results(&p, 2).await;

    // Watch every hostile subject: nothing may ever be published there.
    let mut watches = Vec::new();
    for subject in HOSTILE_REPLIES {
        watches.push((subject, p.client.subscribe(subject).await.unwrap()));
    }
    p.client.flush().await.unwrap();
    let work = p.subjects.work("edge-1");
    for (i, hostile) in HOSTILE_REPLIES.into_iter().enumerate() {
        // Through the dispatcher.
        p.client
            .publish_with_reply(p.subjects.invoke("echo"), hostile, "via invoke".into())
            .await
            .unwrap();
        // Straight onto the node's work subject, as its reply subject...
        let invocation = Invocation {
            input: b"direct".to_vec(),
            ..comfaas_tests::invocation(&format!("direct-{i}"), "echo")
        };
        p.client
            .publish_with_reply(work.clone(), hostile, encode(&invocation).unwrap().into())
            .await
            .unwrap();
        // ... and as the invocation's reply_to: refused to the (valid) sender.
        let invocation = Invocation {
            input: b"reply_to".to_vec(),
            reply_to: Some(hostile.to_owned()),
            ..comfaas_tests::invocation(&format!("reply-to-{i}"), "echo")
        };
        let refusal = request(
            &p.client,
            &work,
            Default::default(),
            encode(&invocation).unwrap().into(),
        )
        .await;
        assert_eq!(header(&refusal, h::ERROR_CODE), "400", "{hostile}");
        assert!(
            header(&refusal, h::ERROR).contains("is not an inbox"),
            "{}",
            header(&refusal, h::ERROR)
        );
        // ... and as the invocation's notices_to: not used, the notice
        // comes as the work request's reply.
        let invocation = Invocation {
            input: b"notices_to".to_vec(),
            reply_to: Some(p.client.new_inbox()),
            notices_to: Some(hostile.to_owned()),
            ..comfaas_tests::invocation(&format!("notices-to-{i}"), "echo")
        };
        let notice = request(
            &p.client,
            &work,
            Default::default(),
            encode(&invocation).unwrap().into(),
        )
        .await;
        assert_eq!(header(&notice, h::REPLIED), "true", "{hostile}");
        // The node's ping subject.
        p.client
            .publish_with_reply(p.subjects.node_ping("edge-1"), hostile, "".into())
            .await
            .unwrap();
    }
    // The same call with a proper inbox is answered, and its result kept,
    // as are the runs whose notices_to was not used.
    assert_eq!(output(&p.invoke("echo", "proper").await), "proper");
    let kept = 2 + HOSTILE_REPLIES.len() as u64 + 1;
    wait_results(&p, kept).await;
    p.client.flush().await.unwrap();
    for (subject, mut watch) in watches {
        let seen = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
        assert!(
            seen.is_err(),
            "something was published on {subject}: {:?}",
            seen.ok().flatten().map(|m| m.payload)
        );
    }
    assert_eq!(
        results_count(&p).await,
        kept,
        "the results stream was touched"
    );
    let metrics = p.next_metrics().await;
    assert_eq!(metrics.bad_reply_subjects, HOSTILE_REPLIES.len() as u64);
    // The node still serves.
    assert_eq!(output(&p.invoke("echo", "after").await), "after");
}

/// A load report of node `node` claiming room for everything and `count`
/// served, as a forger would write it.
fn roomy_load(node: &str, count: &Deployment, leaving: bool) -> NodeLoad {
    NodeLoad {
        node: node.to_owned(),
        tier: Tier::Edge,
        site: "edge".into(),
        cores: 64,
        slots: 1000,
        queue_capacity: 1000,
        max_procs: 64,
        runtimes: vec!["python".into()],
        functions: vec![FunctionState {
            name: count.manifest.name.clone(),
            version: count.manifest.version.clone(),
            digest: count.bundle.digest.clone(),
            state: InstallState::Ready,
            reason: None,
            serving: Some(count.manifest.version.clone()),
            install: None,
        }],
        heartbeat_ms: 1000,
        sent_unix_ms: comfaas_schemas::now_unix_ms(),
        leaving,
        ..NodeLoad::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_load_reports_do_not_steer_placement() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    for node in NODES {
        drop(p.executor(NodeSpec::edge(node)).await);
    }
    let count = p.deploy(&p.count_function(), &NODES).await;
    // The forger's own node would receive every call placed on it.
    let mut stolen = p.client.subscribe(p.subjects.work("fake")).await.unwrap();

    let forger = {
        let (client, subjects, count) = (p.client.clone(), p.subjects.clone(), count.clone());
        tokio::spawn(async move {
            loop {
                // Both real nodes "leaving", from the fake node's subject...
                for real in NODES {
                    let body = encode(&roomy_load(real, &count, true)).unwrap();
                    client
                        .publish(subjects.node_load("fake"), body.into())
                        .await
                        .unwrap();
                }
                // ... and a roomy fake node, from a real node's subject.
                let body = encode(&roomy_load("fake", &count, false)).unwrap();
                client
                    .publish(subjects.node_load("edge-1"), body.into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10 {
        let reply = p.invoke("count", &"x".repeat(i)).await;
        assert_eq!(output(&reply), i.to_string());
        let node = header(&reply, h::NODE);
        assert!(NODES.contains(&node.as_str()), "call {i} ran on {node}");
    }
    let metrics = p.next_metrics().await;
    forger.abort();
    assert!(metrics.forged_loads > 0, "{metrics:?}");
    assert!(
        metrics.nodes.iter().all(|n| n.node != "fake"),
        "{:?}",
        metrics.nodes
    );
    let stolen = tokio::time::timeout(Duration::from_millis(200), stolen.next()).await;
    assert!(stolen.is_err(), "a call reached the fake node");
}

/// A report claiming that a node holds an input in its cache counts only
/// from that node's own subject: one sent for `edge-2` from another
/// node's subject is refused, and `edge-2` is still costed with the fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_claims_of_a_cached_input_do_not_steer_placement() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    for node in NODES {
        drop(p.executor(NodeSpec::edge(node)).await);
    }
    let count = p.deploy(&p.count_function(), &NODES).await;
    let object = p.upload_input(&vec![7u8; 2 << 20]).await;
    let js = jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .unwrap();
    let digest = store.info(&object).await.unwrap().digest.unwrap();
    let forger = {
        let (client, subjects, count, digest) = (
            p.client.clone(),
            p.subjects.clone(),
            count.clone(),
            digest.clone(),
        );
        tokio::spawn(async move {
            loop {
                // edge-2 "holds" the input, said from edge-1's subject.
                let claim = NodeLoad {
                    cached_inputs: comfaas_schemas::CachedInputs::of(&[digest.as_str()]),
                    ..roomy_load("edge-2", &count, false)
                };
                let body = encode(&claim).unwrap();
                client
                    .publish(subjects.node_load("edge-1"), body.into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, object.as_str());
    let reply = p.invoke_bytes("count", Vec::new(), headers).await;
    assert_eq!(output(&reply), (2 << 20).to_string());
    let metrics = p.next_metrics().await;
    forger.abort();
    assert!(metrics.forged_loads > 0, "{metrics:?}");
    let decision = metrics
        .recent
        .iter()
        .find(|r| r.function == "count")
        .unwrap();
    let edge_2 = decision
        .candidates
        .iter()
        .find(|c| c.node == "edge-2")
        .unwrap();
    assert!(
        edge_2.parts.unwrap().transfer_ms > 0.0,
        "the forged claim was believed: {decision:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_set_listed_and_removed_by_name_and_a_missing_one_is_named() {
    let p = Platform::start().await;
    let js = jetstream::new(p.client.clone());
    let wanted = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    // No bucket yet: the first secret asked for is missing; none asked, none read.
    match secrets::fetch(&js, &wanted(&["API_KEY"])).await {
        Err(SecretError::Missing(name)) => assert_eq!(name, "API_KEY"),
        other => panic!("{other:?}"),
    }
    assert!(secrets::fetch(&js, &[]).await.unwrap().is_empty());

    let (ok, stdout, stderr) = cli(&p, &["secret", "set", "API_KEY"], b"s3cr3t-value").await;
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
    let file = p.scratch.path().join("db.txt");
    std::fs::write(&file, b"line one\nline two\n").unwrap();
    let (ok, stdout, stderr) = cli(
        &p,
        &[
            "secret",
            "set",
            "DB_PASSWORD",
            "--from-file",
            file.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert!(ok, "{stdout}{stderr}");

    let (ok, stdout, _) = cli(&p, &["secret", "ls"], b"").await;
    assert!(ok);
    assert_eq!(stdout, "API_KEY\nDB_PASSWORD\n", "names only");

    let fetched = secrets::fetch(&js, &wanted(&["DB_PASSWORD", "API_KEY"]))
        .await
        .unwrap();
    let debug = format!("{fetched:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("line"),
        "{debug}"
    );
    let pairs: Vec<(String, Vec<u8>)> = fetched.into_iter().map(|s| s.into_parts()).collect();
    assert_eq!(
        pairs,
        vec![
            ("DB_PASSWORD".to_owned(), b"line one\nline two\n".to_vec()),
            ("API_KEY".to_owned(), b"s3cr3t-value".to_vec()),
        ]
    );

    let (ok, stdout, _) = cli(&p, &["secret", "rm", "API_KEY"], b"").await;
    assert!(ok, "{stdout}");
    let error = secrets::fetch(&js, &wanted(&["DB_PASSWORD", "API_KEY"]))
        .await
        .unwrap_err();
    assert!(matches!(&error, SecretError::Missing(name) if name == "API_KEY"));
    assert_eq!(
        error.to_string(),
        "secret `API_KEY` is not set (an operator sets it with `comfaas secret set API_KEY`)"
    );
    let (ok, stdout, _) = cli(&p, &["secret", "ls"], b"").await;
    assert!(ok);
    assert_eq!(stdout, "DB_PASSWORD\n");

    // Refused: a name that is not variable/file shaped, an empty value,
    // removing what is not set.
    for (args, stdin, says) in [
        (
            &["secret", "set", "../etc"][..],
            &b"x"[..],
            "secret name `../etc`",
        ),
        (&["secret", "set", "EMPTY"][..], &b""[..], "value is empty"),
        (
            &["secret", "rm", "NOPE"][..],
            &b""[..],
            "secret NOPE is not set",
        ),
    ] {
        let (ok, stdout, stderr) = cli(&p, args, stdin).await;
        assert!(!ok, "{args:?}: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(matches!(
        secrets::fetch(&js, &wanted(&["bad name"])).await,
        Err(SecretError::InvalidName(_))
    ));
}
