//! A clustered site: three routed nats-servers, everything the platform
//! creates at R3, a dispatcher and two executors connected with every
//! server's URL. One server is killed with SIGKILL in the middle of a flow
//! of events and requests and started again on its store: no event is
//! lost or answered twice, the services reconnect, invocations resume, and
//! the server catches up with the others.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use comfaas_platform::resources;
use comfaas_schemas::names::{self, headers as h};
use comfaas_testbed::cluster::wait_stream_current;
use comfaas_tests::{header, ClusterPlatform, NodeSpec};
use futures::StreamExt;

/// Events sent during the flow; every tenth runs for a second.
const EVENTS: usize = 300;
/// Pause between two events (about 20 a second).
const EVENT_GAP: Duration = Duration::from_millis(50);
/// The limit a requester sets on each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The function: echoes its input, after a second for a `slow` one.
const ECHO: &str = "import sys, time\ndata = sys.stdin.read()\nif data.startswith('slow'):\n    time.sleep(1)\nsys.stdout.write(data)\n";

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Answered by the function.
    Ok,
    /// An error reply from the platform: its code and message.
    Refused(String),
    /// No dispatcher subscribed at that moment (the request was refused
    /// at once).
    NoResponders,
    /// No answer within the requester's limit.
    TimedOut,
    /// Another transport error.
    Other(String),
}

/// Sends one request with `input`; how it ended and how long it took.
async fn request(client: &async_nats::Client, subject: &str, input: String) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match client
        .send_request(
            subject.to_owned(),
            async_nats::Request::new()
                .payload(input.clone().into())
                .timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
    {
        Ok(reply) if header(&reply, h::STATUS) == h::STATUS_OK => {
            assert_eq!(reply.payload, input.as_bytes(), "the echo of {input}");
            Outcome::Ok
        }
        Ok(reply) => Outcome::Refused(format!(
            "{} {}",
            header(&reply, h::ERROR_CODE),
            header(&reply, h::ERROR)
        )),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Outcome::NoResponders,
            async_nats::RequestErrorKind::TimedOut => Outcome::TimedOut,
            _ => Outcome::Other(e.to_string()),
        },
    };
    (outcome, started.elapsed())
}

/// Publishes event `id` until JetStream acknowledges it (during a leader
/// election it may refuse or time out; the same `Nats-Msg-Id` again is
/// stored once). Returns how many tries failed.
async fn publish_until_stored(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    body: String,
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = 0;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(h::MSG_ID, id);
        let stored = match js
            .publish_with_headers(subject.to_owned(), headers, body.clone().into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            return failed;
        }
        failed += 1;
        assert!(
            Instant::now() < deadline,
            "event {id} not stored within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many results each event id has in COMFAAS_RESULTS, read to the
/// stream's last message.
async fn results_by_event(js: &jetstream::Context, subject: &str) -> BTreeMap<String, usize> {
    let mut stream = js.get_stream(names::RESULTS_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut counts = BTreeMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(message))) = next else {
            break; // nothing more on this subject
        };
        let id = message
            .headers
            .as_ref()
            .and_then(|hs| hs.get(h::MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        if id.starts_with("ev-") {
            *counts.entry(id).or_insert(0) += 1;
        }
        if message.info().unwrap().stream_sequence >= last {
            break;
        }
    }
    counts
}

/// Waits until the dispatchers' events consumer has nothing left to
/// deliver or to be acknowledged: every event was run and settled.
async fn wait_events_settled(js: &jetstream::Context, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let info = async {
            let stream = js.get_stream(names::EVENTS_STREAM).await.ok()?;
            let mut consumer: consumer::PullConsumer = stream
                .get_consumer(names::DISPATCH_EVENTS_CONSUMER)
                .await
                .ok()?;
            consumer.info().await.ok().cloned()
        }
        .await;
        if let Some(info) = &info {
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "events not settled within {within:?}: {:?}",
            info.map(|i| (i.num_pending, i.num_ack_pending))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_flow_loses_nothing_and_rejoins() {
    let mut p = ClusterPlatform::start(3).await;
    assert_eq!(resources::replicas(), 3);
    let dispatcher = p.dispatcher().await;
    let edge = p.executor(NodeSpec::edge("edge-1")).await;
    let cloud = p.executor(NodeSpec::cloud("cloud-1")).await;
    let dir = p.scratch.path().join("src/echo");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("comfaas.toml"),
        "name = \"echo\"\nversion = \"1.0.0\"\nruntime = \"python\"\nentry = \"main.py\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("main.py"), ECHO).unwrap();
    p.deploy(&dir, &["edge-1", "cloud-1"]).await;

    // Everything the platform created is kept on all three servers.
    let js = jetstream::new(p.client.clone());
    for stream in [
        names::EVENTS_STREAM.to_owned(),
        names::RESULTS_STREAM.to_owned(),
        names::kv_stream(names::FUNCTIONS_BUCKET),
        names::object_store_stream(names::PACKAGES_BUCKET),
        names::object_store_stream(names::INPUTS_BUCKET),
        names::object_store_stream(names::OUTPUTS_BUCKET),
    ] {
        let mut s = js.get_stream(&stream).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{stream}");
    }

    // The victim: the server leading the events stream, the hardest one
    // to lose mid-flow.
    let leader = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the events stream has a leader");
    let victim = (0..p.cluster.size())
        .find(|i| p.cluster.name(*i) == Some(leader.as_str()))
        .expect("the leader is a member");

    // A device publishing events, and a requester sending one request
    // after another, both connected with every URL but on the victim
    // first: they lose their server too, mid-request.
    let victim_url = p.cluster.url(victim).unwrap().to_owned();
    let mut urls = vec![victim_url.clone()];
    urls.extend(
        p.options()
            .server_urls()
            .into_iter()
            .filter(|u| *u != victim_url),
    );
    let device = async_nats::ConnectOptions::new()
        .retain_servers_order()
        .max_reconnects(None)
        .connect(urls.as_slice())
        .await
        .unwrap();
    assert_eq!(device.server_info().server_name, leader);
    let event_subject = p.subjects.event("echo");
    let publisher = {
        let js = jetstream::new(device.clone());
        tokio::spawn(async move {
            let mut failed_tries = 0;
            for i in 0..EVENTS {
                let body = if i % 10 == 0 {
                    format!("slow {i}")
                } else {
                    format!("event {i}")
                };
                failed_tries +=
                    publish_until_stored(&js, &event_subject, &format!("ev-{i}"), body).await;
                tokio::time::sleep(EVENT_GAP).await;
            }
            failed_tries
        })
    };
    let flowing = Arc::new(AtomicBool::new(true));
    let requester = {
        let device = device.clone();
        let subject = p.subjects.invoke("echo");
        let flowing = flowing.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while flowing.load(Ordering::Relaxed) {
                let (outcome, took) = request(&device, &subject, format!("request {i}")).await;
                outcomes.push((outcome, took));
                i += 1;
            }
            outcomes
        })
    };

    // A third of the way in, the leader dies; it comes back 5 s later.
    tokio::time::sleep(EVENT_GAP * (EVENTS as u32 / 3)).await;
    p.cluster.kill(victim).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.cluster.restart(victim).await.unwrap();

    let failed_publishes = publisher.await.unwrap();
    // Requests go on a little after the last event, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    flowing.store(false, Ordering::Relaxed);
    let outcomes = requester.await.unwrap();

    // Every event was run and settled, each with exactly one result.
    wait_events_settled(&js, Duration::from_secs(180)).await;
    let counts = results_by_event(&js, &p.subjects.result("echo")).await;
    let missing: Vec<String> = (0..EVENTS)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "events without a result: {missing:?}");
    assert!(
        twice.is_empty(),
        "events with more than one result: {twice:?}"
    );

    // Requests: what failed during the fault failed with a clear error
    // within the requester's limit; the rest were answered.
    let mut tally: BTreeMap<Outcome, (usize, Duration)> = BTreeMap::new();
    for (outcome, took) in &outcomes {
        let entry = tally.entry(outcome.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(*took);
    }
    let slow = outcomes
        .iter()
        .filter(|(_, took)| *took > Duration::from_millis(500))
        .count();
    println!(
        "cluster fault: {} requests, {slow} of them over 500 ms, outcomes (count, slowest): {tally:?}; {failed_publishes} event publishes retried",
        outcomes.len()
    );
    assert!(
        tally.get(&Outcome::Ok).is_some_and(|(n, _)| *n > 0),
        "some requests were answered: {tally:?}"
    );
    for outcome in tally.keys() {
        assert!(
            !matches!(outcome, Outcome::Other(_)),
            "a request failed with an unexplained error: {tally:?}"
        );
    }

    // The services rode it out: still running, and invocations resume.
    for (name, service) in [
        ("dispatcher", &dispatcher),
        ("edge-1", &edge),
        ("cloud-1", &cloud),
    ] {
        assert!(!service.has_stopped(), "{name} stopped");
    }
    for i in 0..5 {
        let (outcome, _) = request(&device, &p.subjects.invoke("echo"), format!("after {i}")).await;
        assert_eq!(outcome, Outcome::Ok, "a request after the fault");
    }

    // The restarted server rejoined: every replica of the platform's
    // streams is current again.
    for stream in [
        names::EVENTS_STREAM.to_owned(),
        names::RESULTS_STREAM.to_owned(),
        names::kv_stream(names::FUNCTIONS_BUCKET),
    ] {
        let replicas = wait_stream_current(&js, &stream, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(replicas, 3, "{stream}");
    }
    p.cluster.stop().await;
}

/// Runs a workspace binary with `args` and `env` until it exits (at most
/// 30 s); its status and what it said on stderr.
async fn run_binary(name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(comfaas_tests::binary(name))
            .args(args)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} {args:?} did not exit within 30 s"))
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// More replicas than the site has servers: the dispatcher and the CLI,
/// which create the site's streams and stores, refuse to start and say
/// why, whether asked by flag or environment; a count JetStream cannot
/// take is refused before connecting. With the site's count, the same
/// dispatcher serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_beyond_the_site_are_refused_and_named() {
    let nats = comfaas_tests::TestNats::start().await;
    let url = nats.url().to_owned();
    for (name, args, env) in [
        (
            "comfaas-dispatch",
            vec!["--nats-url", &url, "--replicas", "3"],
            vec![],
        ),
        (
            "comfaas",
            vec!["--nats-url", &url, "ls"],
            vec![("COMFAAS_REPLICAS", "3")],
        ),
    ] {
        let (ok, stderr) = run_binary(name, &args, &env).await;
        assert!(!ok, "{name} started at R3 on one server");
        assert!(
            stderr.contains("replicas") || stderr.contains("stores"),
            "{name} says why: {stderr}"
        );
    }
    // (An executor does not create what it lacks: it waits for a
    // dispatcher's stores, see `roles`.)
    for name in ["comfaas-dispatch", "comfaas-exec"] {
        let (ok, stderr) = run_binary(name, &["--nats-url", &url, "--replicas", "9"], &[]).await;
        assert!(!ok && stderr.contains("9"), "{name}: {stderr}");
    }

    let _dispatcher =
        comfaas_tests::Process::spawn("comfaas-dispatch", &["--nats-url", &url, "--replicas", "1"]);
    nats.wait_for_dispatcher().await;
}
