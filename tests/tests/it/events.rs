//! Fire-and-forget device events: kept in COMFAAS_EVENTS, run, and their
//! results published on `comfaas.result.<fn>`, even across a dispatcher restart.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{header, next_message, repo_root, NodeSpec, Platform, Security};
use futures::StreamExt;

async fn publish_event(p: &Platform, function: &str, msg_id: &str, body: &str) {
    p.publish_event(function, &[(h::MSG_ID, msg_id)], body)
        .await;
}

open_and_secure!(an_event_without_reply_reaches_the_result_subject);

async fn an_event_without_reply_reaches_the_result_subject(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("hello"))
        .await
        .unwrap();

    publish_event(&p, "hello", "dev-7-1", r#"{"name":"device 7"}"#).await;
    let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
    assert_eq!(header(&result, h::STATUS), "ok", "{:?}", result.headers);
    assert_eq!(header(&result, h::MSG_ID), "dev-7-1");
    assert_eq!(header(&result, h::FUNCTION), "hello");
    let output: serde_json::Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(output["greeting"], "hello, device 7");

    // An event for a function that does not exist gets an error result, not silence.
    let mut ghost_results = p
        .client
        .subscribe(p.subjects.result("ghost"))
        .await
        .unwrap();
    publish_event(&p, "ghost", "dev-7-2", "{}").await;
    let result = next_message(&mut ghost_results, Duration::from_secs(60), "a result").await;
    assert_eq!(header(&result, h::STATUS), "error");
    assert_eq!(header(&result, h::ERROR_CODE), "404");
    assert_eq!(header(&result, h::MSG_ID), "dev-7-2");

    // Results are kept in their stream, which an observer reads.
    let observer = async_nats::jetstream::new(p.nats.client().await);
    let mut stream = observer
        .get_stream(comfaas_schemas::names::RESULTS_STREAM)
        .await
        .unwrap();
    assert!(stream.info().await.unwrap().state.messages >= 2);
    let kept = stream
        .get_last_raw_message_by_subject(&p.subjects.result("hello"))
        .await
        .unwrap();
    assert_eq!(header_of(&kept.headers, h::MSG_ID), "dev-7-1");
    p.assert_no_violations();
}

fn header_of(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_dispatcher_restart() {
    let p = Platform::start().await;
    let dispatcher = p.dispatcher().await;
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("hello"))
        .await
        .unwrap();

    dispatcher.stop().await;
    for i in 0..3 {
        publish_event(
            &p,
            "hello",
            &format!("while-down-{i}"),
            &format!(r#"{{"name":"{i}"}}"#),
        )
        .await;
    }
    // Same id again within the dedup window: stored once, run once.
    publish_event(&p, "hello", "while-down-0", r#"{"name":"dup"}"#).await;

    drop(p.dispatcher().await);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
        assert_eq!(header(&result, h::STATUS), "ok", "{:?}", result.headers);
        seen.push(header(&result, h::MSG_ID));
    }
    seen.sort();
    assert_eq!(seen, ["while-down-0", "while-down-1", "while-down-2"]);
    // No fourth result: the duplicate was dropped by the stream.
    let extra = tokio::time::timeout(Duration::from_secs(2), results.next()).await;
    assert!(extra.is_err(), "duplicate event ran: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_no_node_yet_waits_for_one() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    let mut results = p
        .client
        .subscribe(p.subjects.result("hello"))
        .await
        .unwrap();
    // Deployed, but no executor runs: the event is retried, not lost.
    comfaas::deploy::deploy_dir(&p.registry, &repo_root().join("functions/hello"))
        .await
        .unwrap();
    publish_event(&p, "hello", "early", r#"{"name":"early"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
    assert_eq!(header(&result, h::STATUS), "ok", "{:?}", result.headers);
    assert_eq!(header(&result, h::MSG_ID), "early");
}

/// A request answered by its node: the answer reaches the requester only;
/// a failed one is published once on the result subject (observers see
/// failures), and a node configured to publish every answer publishes a
/// success once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_by_the_node_is_published_once_when_it_failed_or_when_asked() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let mut publishing = NodeSpec::edge("edge-2");
    publishing.publish_request_results = true;
    drop(p.executor(publishing).await);
    let hello = repo_root().join("functions/hello");
    p.deploy(&hello, &["edge-1", "edge-2"]).await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("hello"))
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    let invoke_on = |node: &'static str, input: &'static str| {
        let p = &p;
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
            p.invoke_with("hello", input, headers).await
        }
    };

    // Succeeds on edge-1: answered, not published.
    let reply = invoke_on("edge-1", r#"{"name":"quiet"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(header(&reply, h::NODE), "edge-1");
    // The internal completion notice never reaches the requester.
    assert_eq!(header(&reply, h::REPLIED), "");
    let none = tokio::time::timeout(Duration::from_secs(1), results.next()).await;
    assert!(none.is_err(), "a successful answer was published: {none:?}");

    // Fails on edge-1 (not JSON): published once, with its code.
    let failed = invoke_on("edge-1", "not json").await;
    assert_ne!(header(&failed, h::STATUS), "ok");
    let result = next_message(&mut results, Duration::from_secs(60), "a failure").await;
    assert_eq!(
        header(&result, h::INVOCATION_ID),
        header(&failed, h::INVOCATION_ID)
    );
    assert_eq!(header(&result, h::STATUS), header(&failed, h::STATUS));
    let extra = tokio::time::timeout(Duration::from_secs(1), results.next()).await;
    assert!(extra.is_err(), "result published twice: {extra:?}");

    // Succeeds on edge-2, which publishes every answer: once.
    let reply = invoke_on("edge-2", r#"{"name":"once"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok");
    assert_eq!(header(&reply, h::NODE), "edge-2");
    let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
    assert_eq!(
        header(&result, h::INVOCATION_ID),
        header(&reply, h::INVOCATION_ID)
    );
    assert_eq!(result.payload, reply.payload);
    let extra = tokio::time::timeout(Duration::from_secs(1), results.next()).await;
    assert!(extra.is_err(), "result published twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_ride_out_a_server_restart_and_see_later_deploys() {
    use comfaas_testbed::server::{EmbeddedServer, ServerOptions};
    let store = tempfile::tempdir().unwrap();
    let first = EmbeddedServer::start(ServerOptions {
        store_dir: Some(store.path().to_path_buf()),
        ..comfaas_tests::server_options("")
    })
    .await
    .unwrap();
    let port = first.port();
    let p = Platform::on(first).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;

    // Stop the server (its JetStream store stays) and start it again.
    // The nodes' data dirs live in `_scratch`: keep it.
    let Platform {
        nats,
        scratch: _scratch,
        ..
    } = p;
    let url = nats.url().to_owned();
    drop(nats);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = EmbeddedServer::start(ServerOptions {
        port: Some(port),
        store_dir: Some(store.path().to_path_buf()),
        ..comfaas_tests::server_options("")
    })
    .await
    .unwrap();
    assert_eq!(second.url(), url);
    let p = Platform::on(second).await;

    // A deploy after the restart reaches the executor through a reopened watch.
    let dir = p.function("after", "", &[("main.py", "print('after the restart')\n")]);
    p.deploy(&dir, &["edge-1"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = p.invoke("after", "").await;
        if header(&reply, h::STATUS) == "ok" {
            assert_eq!(
                String::from_utf8_lossy(&reply.payload).trim(),
                "after the restart"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", reply.headers);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_the_load_and_run_nothing_twice() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            slots: 2,
            // Room for all 80 at once: two dispatchers each see only their
            // own runs between load reports, and a full node refuses (429),
            // which is not what this test is about.
            queue: 128,
            // Requests' results are published too: every run is counted.
            publish_request_results: true,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "tally",
        "mode = \"handler\"",
        &[("main.py", "def handle(d):\n    return d\n")],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("tally"))
        .await
        .unwrap();
    // 40 requests and 40 events, all at once.
    let requests = (0..40).map(|i| {
        let client = p.client.clone();
        let subject = p.subjects.invoke("tally");
        async move {
            comfaas_tests::request(&client, &subject, HeaderMap::new(), format!("r{i}").into())
                .await
        }
    });
    for i in 0..40 {
        publish_event(&p, "tally", &format!("e{i}"), &format!("e{i}")).await;
    }
    for reply in futures::future::join_all(requests).await {
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
    let mut seen = std::collections::HashMap::new();
    while seen.values().sum::<u32>() < 80 {
        let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
        *seen
            .entry(String::from_utf8_lossy(&result.payload).into_owned())
            .or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 80, "every request and event answered");
    assert!(
        seen.values().all(|n| *n == 1),
        "something ran twice: {seen:?}"
    );
    let extra = tokio::time::timeout(Duration::from_secs(2), results.next()).await;
    assert!(extra.is_err(), "an extra result: {extra:?}");
    // Both dispatchers took part.
    let mut busy = std::collections::HashSet::new();
    let mut metrics = p
        .client
        .subscribe(p.subjects.dispatch_metrics_all())
        .await
        .unwrap();
    let both = async {
        while busy.len() < 2 {
            let m: comfaas_schemas::DispatchMetrics =
                comfaas_schemas::decode(&metrics.next().await.unwrap().payload).unwrap();
            if m.received > 0 {
                busy.insert(m.dispatcher);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("both dispatchers took work");
}
