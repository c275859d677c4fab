//! Deploy then invoke through the real dispatcher and executors, and every
//! way an invocation can go wrong answering a clear error.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{encode, Invocation};
use comfaas_tests::{header, repo_root, request, NodeSpec, Platform, Security};

fn error_of(reply: &async_nats::Message) -> (String, String) {
    assert_eq!(header(reply, h::STATUS), "error", "expected an error reply");
    (header(reply, h::ERROR_CODE), header(reply, h::ERROR))
}

open_and_secure!(
    deploy_then_invoke_hello,
    unknown_function_is_404_and_bad_requests_are_400
);

async fn deploy_then_invoke_hello(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;

    let reply = p.invoke("hello", r#"{"name":"ada"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    let output: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(output["greeting"], "hello, ada");
    let node = header(&reply, h::NODE);
    assert!(node == "edge-1" || node == "cloud-1", "node {node}");
    assert_eq!(
        output["node"],
        node.as_str(),
        "the node that ran it says so"
    );
    let tier = header(&reply, h::TIER);
    assert_eq!(tier, if node == "edge-1" { "edge" } else { "cloud" });
    assert_eq!(header(&reply, h::INVOCATION_ID).len(), 32);
    assert!(header(&reply, h::DURATION_MS).parse::<u64>().is_ok());
    p.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_stats_flags_the_spike() {
    let p = Platform::with_edge_and_cloud().await;
    p.deploy(
        &repo_root().join("functions/sensor-stats"),
        &["edge-1", "cloud-1"],
    )
    .await;
    let batch = r#"{"device":"d1","readings":[{"t":0,"value":21.0},{"t":1,"value":21.2},
        {"t":2,"value":20.9},{"t":3,"value":35.5},{"t":4,"value":21.1}]}"#;
    let reply = p.invoke("sensor-stats", batch).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    let stats: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(stats["count"], 5);
    assert_eq!(stats["max"], 35.5);
    assert_eq!(stats["anomalies"].as_array().unwrap().len(), 1);
    assert_eq!(stats["anomalies"][0]["t"], 3);

    let reply = p
        .invoke("sensor-stats", r#"{"readings":[{"value":"hot"}]}"#)
        .await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "500");
    assert!(
        message.contains("reading 0 has no numeric value"),
        "{message}"
    );
}

async fn unknown_function_is_404_and_bad_requests_are_400(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    let reply = p.invoke("nope", "{}").await;
    assert_eq!(
        error_of(&reply),
        ("404".into(), "function `nope` is not deployed".into())
    );

    let reply = request(
        &p.device,
        "comfaas.invoke.Not_A_Name",
        HeaderMap::new(),
        "x".into(),
    )
    .await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "400");
    assert!(message.contains("is not a function name"), "{message}");

    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    let cases = [
        (h::TIMEOUT, "soon", "header Comfaas-Timeout"),
        (h::PROCS, "0", "header Comfaas-Procs"),
        (h::PLACEMENT, "moon", "header Comfaas-Placement"),
    ];
    for (name, value, expect) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(name, value);
        let reply = p.invoke_with("hello", "{}", headers).await;
        let (code, message) = error_of(&reply);
        assert_eq!(code, "400", "{name}: {value}");
        assert!(message.contains(expect), "{message}");
    }
    p.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_placement_is_honoured_or_refused() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    for placement in ["edge", "node:edge-1", "auto"] {
        let mut headers = HeaderMap::new();
        headers.insert(h::PLACEMENT, placement);
        let reply = p.invoke_with("hello", "{}", headers).await;
        assert_eq!(header(&reply, h::NODE), "edge-1", "{placement}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(h::PLACEMENT, "cloud");
    let reply = p.invoke_with("hello", "{}", headers).await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "503");
    assert!(message.contains("placement `cloud`"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_function_answers_its_stderr_tail() {
    let p = Platform::with_edge_and_cloud().await;
    let dir = p.function(
        "fails",
        "",
        &[(
            "main.py",
            "import sys\nprint('lots of noise\\n' * 500, file=sys.stderr)\nprint('sensor offline: bus 3', file=sys.stderr)\nsys.exit(3)\n",
        )],
    );
    p.deploy(&dir, &["edge-1", "cloud-1"]).await;
    let reply = p.invoke("fails", "").await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "500");
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("sensor offline: bus 3"), "{message}");
    assert!(!header(&reply, h::NODE).is_empty());
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_function_is_killed_and_the_node_keeps_serving() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let marker = format!("hang-{}", uuid::Uuid::new_v4().simple());
    let script = format!(
        "import subprocess, sys, time\n\
         subprocess.Popen(['sleep', '300', '{marker}'])\n\
         time.sleep(300)\n"
    );
    let dir = p.function("hangs", "timeout = \"1s\"", &[("main.py", &script)]);
    p.deploy(&dir, &["edge-1"]).await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;

    let reply = p.invoke("hangs", "").await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "408");
    assert!(message.contains("exceeded its timeout of 1s"), "{message}");
    // The child it started died with it.
    assert_eq!(processes_mentioning(&marker), Vec::<String>::new());

    // A request may shorten the limit too.
    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT, "300ms");
    let reply = p.invoke_with("hangs", "", headers).await;
    assert_eq!(error_of(&reply).0, "408");

    let reply = p.invoke("hello", r#"{"name":"still here"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_the_limit_is_413() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            max_output_object_bytes: 2 << 20,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "floods",
        "",
        &[("main.py", "import sys\nsys.stdout.write('x' * 4_000_000)\n")],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p.invoke("floods", "").await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "413");
    assert!(message.contains("output exceeds"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_at_once() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            slots: 1,
            queue: 1,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "slow",
        "",
        &[("main.py", "import time\ntime.sleep(3)\nprint('done')\n")],
    );
    let deployment = p.deploy(&dir, &["edge-1"]).await;
    assert_eq!(deployment.manifest.name, "slow");

    // Straight to the node's work subject: one runs, one waits, the third is refused.
    let work = p.subjects.work("edge-1");
    let invocation = |id: &str| Invocation {
        timeout_ms: Some(10_000),
        ..comfaas_tests::invocation(id, "slow")
    };
    let mut running = Vec::new();
    for id in ["a", "b"] {
        let client = p.client.clone();
        let work = work.clone();
        let payload = encode(&invocation(id)).unwrap();
        running.push(tokio::spawn(async move {
            request(&client, &work, HeaderMap::new(), payload.into()).await
        }));
        // Let the node admit it before the next one.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let refused = request(
        &p.client,
        &work,
        HeaderMap::new(),
        encode(&invocation("c")).unwrap().into(),
    )
    .await;
    let (code, message) = error_of(&refused);
    assert_eq!(code, "429");
    assert!(
        message.contains("node edge-1 is full: 1 running and 1 queued"),
        "{message}"
    );
    for r in running {
        let reply = r.await.unwrap();
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_work_subject_is_400_and_the_node_survives() {
    let p = Platform::with_edge_and_cloud().await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    for garbage in [
        &b"not messagepack"[..],
        b"",
        b"\x81\xa2id\x07",
        b"\xdf\xff\xff\xff\xff",
    ] {
        let reply = request(
            &p.client,
            &p.subjects.work("edge-1"),
            HeaderMap::new(),
            garbage.to_vec().into(),
        )
        .await;
        let (code, message) = error_of(&reply);
        assert_eq!(code, "400");
        assert!(
            message.contains("node edge-1 got an invalid invocation"),
            "{message}"
        );
    }
    // A well-formed invocation of a function the node does not have.
    let unknown = comfaas_tests::invocation("x", "ghost");
    let reply = request(
        &p.client,
        &p.subjects.work("edge-1"),
        HeaderMap::new(),
        encode(&unknown).unwrap().into(),
    )
    .await;
    assert_eq!(error_of(&reply).0, "404");
    // Garbage heartbeats do not disturb the dispatcher either.
    p.client
        .publish(p.subjects.node_load("edge-1"), "junk".into())
        .await
        .unwrap();
    p.client
        .publish(p.subjects.node_load("bogus"), "\u{1}".into())
        .await
        .unwrap();

    let mut headers = HeaderMap::new();
    headers.insert(h::PLACEMENT, "node:edge-1");
    let reply = p.invoke_with("hello", r#"{"name":"after"}"#, headers).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "edge-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_install_is_reported_and_answers_503() {
    let p = Platform::with_edge_and_cloud().await;
    // Valid manifest, but its entry point is not in the bundle.
    let dir = p.function("broken", "", &[("other.py", "print(1)\n")]);
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"broken\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap();
    // `comfaas deploy` refuses it before uploading anything...
    let refused = comfaas::deploy::deploy_dir(&p.registry, &dir)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("entry `main.py` (comfaas.toml) does not exist in"),
        "{refused}"
    );
    assert!(p.registry.get("broken").await.unwrap().is_none());
    // ...so it is stored as another client could: the nodes refuse it.
    let bundle = comfaas_runtime::pack(&dir).unwrap();
    let manifest = comfaas::deploy::read_manifest(&dir).unwrap();
    let deployment = p
        .registry
        .deploy(
            manifest,
            bundle.bytes.into(),
            &bundle.digest,
            comfaas_platform::registry::SameVersion::Refuse,
        )
        .await
        .unwrap()
        .into_deployment();
    p.wait_state(
        &deployment,
        &["edge-1", "cloud-1"],
        comfaas_schemas::InstallState::Failed,
    )
    .await;
    let reply = p.invoke("broken", "").await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "503");
    assert!(
        message.contains("no live node has function `broken` installed: 2 of 2 alive; "),
        "{message}"
    );
    assert!(
        message.contains("edge-1: install failed: entry `main.py` is not a file in the bundle"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_uv_the_venv_comes_from_python3_m_venv() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            use_uv: false,
            ..NodeSpec::edge("plain-1")
        })
        .await,
    );
    let dir = p.function(
        "whichenv",
        "",
        &[("main.py", "import sys, os\nprint(os.path.exists(os.path.join(sys.prefix, 'bin', 'pip')), sys.prefix != sys.base_prefix)\n")],
    );
    p.deploy(&dir, &["plain-1"]).await;
    let reply = p.invoke("whichenv", "").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    // A venv of its own, made by the standard library (which seeds pip; uv does not).
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "True True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_is_full_the_dispatcher_answers_429() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    for node in ["edge-1", "edge-2"] {
        drop(
            p.executor(NodeSpec {
                slots: 1,
                queue: 0,
                ..NodeSpec::edge(node)
            })
            .await,
        );
    }
    let dir = p.function(
        "slow",
        "",
        &[("main.py", "import time\ntime.sleep(2)\nprint('done')\n")],
    );
    p.deploy(&dir, &["edge-1", "edge-2"]).await;
    let mut running = Vec::new();
    for _ in 0..2 {
        let client = p.client.clone();
        let subject = p.subjects.invoke("slow");
        running.push(tokio::spawn(async move {
            request(&client, &subject, HeaderMap::new(), "".into()).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let reply = p.invoke("slow", "").await;
    let (code, message) = error_of(&reply);
    assert_eq!(code, "429");
    assert!(message.contains("full"), "{message}");
    let mut nodes = Vec::new();
    for r in running {
        let reply = r.await.unwrap();
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        nodes.push(header(&reply, h::NODE));
    }
    nodes.sort();
    assert_eq!(
        nodes,
        ["edge-1", "edge-2"],
        "the two runs went to different nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_right_after_deploy_waits_for_the_install() {
    let p = Platform::with_edge_and_cloud().await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await; // nodes known
    comfaas::deploy::deploy_dir(&p.registry, &repo_root().join("functions/hello"))
        .await
        .unwrap();
    let reply = p.invoke("hello", r#"{"name":"eager"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
}

/// A node reports its load soon after a run starts and after it ends, not
/// a heartbeat later: every dispatcher, not only the one that sent the
/// work, sees the slot taken and freed. The heartbeat here is a minute, so
/// any report within the test's few seconds is such an early one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_a_run_starting_and_ending_without_waiting_a_heartbeat() {
    use futures::StreamExt;
    async fn next(reports: &mut async_nats::Subscriber) -> async_nats::Message {
        tokio::time::timeout(std::time::Duration::from_secs(10), reports.next())
            .await
            .expect("a report within 10 s")
            .unwrap()
    }
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            heartbeat_ms: 60_000,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "nap",
        "",
        &[("main.py", "import time\ntime.sleep(1)\nprint('rested')\n")],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let mut reports = p
        .client
        .subscribe(p.subjects.node_load("edge-1"))
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let running = |report: &async_nats::Message| {
        let load: comfaas_schemas::NodeLoad = comfaas_schemas::decode(&report.payload).unwrap();
        (load.running, load.queued)
    };

    let invoking = {
        let p_client = p.client.clone();
        let subject = p.subjects.invoke("nap");
        tokio::spawn(async move { request(&p_client, &subject, HeaderMap::new(), "".into()).await })
    };
    while running(&next(&mut reports).await) != (1, 0) {}
    let reply = invoking.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "rested");
    while running(&next(&mut reports).await) != (0, 0) {}
}

/// A node answers each request straight to its requester and sends the
/// dispatcher's notices, batched, to the invocation's `notices_to`, each
/// naming its work request; a `notices_to` that is not an inbox is not
/// used: that notice comes back as the work request's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_come_in_batches_to_an_inbox_and_nowhere_else() {
    use comfaas_schemas::{decode, NoticeBatch};
    use futures::StreamExt;
    use std::collections::BTreeSet;
    use std::time::Duration;

    let p = Platform::with_edge_and_cloud().await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    let work = p.subjects.work("edge-1");
    let requester = format!("_INBOX.requester-{}", std::process::id());
    let work_replies = "_INBOX.dispatcher-work";
    let notices_to = "_INBOX.dispatcher-notices.n";
    let mut answers = p.client.subscribe(requester.clone()).await.unwrap();
    let mut replies = p
        .client
        .subscribe(format!("{work_replies}.*"))
        .await
        .unwrap();
    let mut batches = p.client.subscribe(notices_to).await.unwrap();
    let mut elsewhere = p.client.subscribe("not.an.inbox").await.unwrap();
    p.client.flush().await.unwrap();
    let invocation = |id: &str, notices_to: &str| Invocation {
        input: br#"{"name":"batch"}"#.to_vec(),
        reply_to: Some(requester.clone()),
        notices_to: Some(notices_to.to_owned()),
        ..comfaas_tests::invocation(id, "hello")
    };
    let sent: BTreeSet<String> = (0..8).map(|i| format!("{work_replies}.{i}")).collect();
    for (i, reply) in sent.iter().enumerate() {
        let payload = encode(&invocation(&format!("inv-{i}"), notices_to)).unwrap();
        p.client
            .publish_with_reply(work.clone(), reply.clone(), payload.into())
            .await
            .unwrap();
    }
    let wait = Duration::from_secs(60);
    for _ in 0..8 {
        let answer = tokio::time::timeout(wait, answers.next())
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(header(&answer, h::STATUS), "ok", "{:?}", answer.headers);
    }
    let mut noticed = BTreeSet::new();
    while noticed.len() < 8 {
        let batch = tokio::time::timeout(wait, batches.next())
            .await
            .expect("a batch of notices")
            .unwrap();
        let batch: NoticeBatch = decode(&batch.payload).unwrap();
        assert!(!batch.notices.is_empty());
        for notice in batch.notices {
            assert!(
                notice
                    .headers
                    .contains(&(h::REPLIED.to_owned(), "true".to_owned())),
                "{:?}",
                notice.headers
            );
            assert!(noticed.insert(notice.reply), "a notice sent twice");
        }
    }
    assert_eq!(noticed, sent);
    // Nothing came as a work reply: every notice was batched.
    let stray = tokio::time::timeout(Duration::from_millis(500), replies.next()).await;
    assert!(stray.is_err(), "a notice came as a reply: {stray:?}");

    // Not an inbox: not used; the notice is the work request's reply.
    let reply = format!("{work_replies}.99");
    let payload = encode(&invocation("inv-99", "not.an.inbox")).unwrap();
    p.client
        .publish_with_reply(work.clone(), reply.clone(), payload.into())
        .await
        .unwrap();
    let notice = tokio::time::timeout(wait, replies.next())
        .await
        .expect("the notice as a reply")
        .unwrap();
    assert_eq!(notice.subject.as_str(), reply);
    assert_eq!(header(&notice, h::REPLIED), "true");
    assert!(notice.payload.is_empty());
    let answer = tokio::time::timeout(wait, answers.next())
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(header(&answer, h::STATUS), "ok");
    let leaked = tokio::time::timeout(Duration::from_millis(500), elsewhere.next()).await;
    assert!(
        leaked.is_err(),
        "a notice went to a subject that is not an inbox"
    );
}
