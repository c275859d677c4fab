//! Seeing into a running site: NATS micro discovery (`$SRV.PING|INFO|STATS`
//! read with a plain client, decoded as async-nats's own micro types), the
//! Prometheus endpoints of the dispatcher and executors, `comfaas
//! decisions`, and the reply headers that say where time went.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::service::{Info, PingResponse, Stats};
use async_nats::HeaderMap;
use comfaas_dispatch::DispatchConfig;
use comfaas_platform::auth::Role;
use comfaas_schemas::names::{headers as h, micro};
use comfaas_schemas::InstallState;
use comfaas_tests::{binary, header, repo_root, NodeSpec, Platform, Security};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

open_and_secure!(
    discovery_lists_the_dispatcher_and_executors_and_their_stats_move,
    decisions_show_the_choice_of_an_invocation
);

/// Every answer to `subject` within a second (several services answer
/// one request), decoded as `T`.
async fn ask_all<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
) -> Vec<T> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), answers.next()).await {
        out.push(
            serde_json::from_slice(&message.payload)
                .unwrap_or_else(|e| panic!("answer to {subject}: {e}: {:?}", message.payload)),
        );
    }
    out
}

/// The one answer to `subject`.
async fn ask<T: serde::de::DeserializeOwned>(client: &async_nats::Client, subject: &str) -> T {
    let answer = client
        .request(subject.to_owned(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&answer.payload).unwrap()
}

/// Requests and errors of each endpoint of the instances of `service`,
/// keyed `<id>/<endpoint>`.
async fn counts(client: &async_nats::Client, service: &str) -> BTreeMap<String, (usize, usize)> {
    let subject = micro::request("STATS", Some(service), None);
    ask_all::<Stats>(client, &subject)
        .await
        .into_iter()
        .flat_map(|s| {
            let id = s.id.clone();
            s.endpoints
                .into_iter()
                .map(move |e| (format!("{id}/{}", e.name), (e.requests, e.errors)))
        })
        .collect()
}

async fn discovery_lists_the_dispatcher_and_executors_and_their_stats_move(security: Security) {
    let p = Platform::start_with(security).await;
    let dispatcher = DispatchConfig {
        id: "d-observe".into(),
        ..DispatchConfig::default()
    };
    drop(p.dispatcher_with(dispatcher).await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    drop(p.executor(NodeSpec::cloud("cloud-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    // An observer may ask, as an operator may.
    let observer = p.nats.client_as(&Role::Observer).await;

    let mut pings: Vec<(String, String)> = ask_all::<PingResponse>(&observer, "$SRV.PING")
        .await
        .into_iter()
        .map(|ping| (ping.name, ping.id))
        .collect();
    pings.sort();
    assert_eq!(
        pings,
        [
            ("comfaas-dispatch".into(), "d-observe".into()),
            ("comfaas-exec".into(), "cloud-1".into()),
            ("comfaas-exec".into(), "edge-1".into()),
        ]
    );

    let edge: Info = ask(&p.client, "$SRV.INFO.comfaas-exec.edge-1").await;
    assert_eq!(edge.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (
            edge.metadata["node"].as_str(),
            edge.metadata["tier"].as_str()
        ),
        ("edge-1", "edge")
    );
    assert_eq!(edge.metadata["site"], "edge");
    let mut endpoints: Vec<(String, String)> = edge
        .endpoints
        .into_iter()
        .map(|e| (e.name, e.subject))
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("ping".into(), p.subjects.node_ping("edge-1")),
            ("work".into(), p.subjects.work("edge-1")),
        ]
    );
    let dispatch: Info = ask(&p.client, "$SRV.INFO.comfaas-dispatch").await;
    let invoke = dispatch
        .endpoints
        .iter()
        .find(|e| e.name == "invoke")
        .unwrap();
    assert_eq!(invoke.subject, p.subjects.invoke_all());
    assert_eq!(invoke.queue_group, "comfaas-dispatch");
    assert!(dispatch.endpoints.iter().any(|e| e.name == "events"));

    // Two runs and a 404: the dispatcher counts three requests, one an
    // error; the nodes two runs between them.
    let before_dispatch = counts(&p.client, micro::DISPATCH_SERVICE).await;
    let before_exec = counts(&p.client, micro::EXEC_SERVICE).await;
    for _ in 0..2 {
        let reply = p.invoke("hello", "{}").await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
    let missing = p.invoke("nope", "{}").await;
    assert_eq!(header(&missing, h::ERROR_CODE), "404");
    // A node answers the requester before it tells the dispatcher, which
    // counts the run then: wait for the count, then check it.
    let key = "d-observe/invoke".to_owned();
    let mut delta = (0, 0);
    for _ in 0..100 {
        let after = counts(&p.client, micro::DISPATCH_SERVICE).await;
        delta = (
            after[&key].0 - before_dispatch[&key].0,
            after[&key].1 - before_dispatch[&key].1,
        );
        if delta.0 >= 3 {
            break;
        }
    }
    assert_eq!(delta, (3, 1), "requests and errors on the invoke endpoint");
    let after_exec = counts(&p.client, micro::EXEC_SERVICE).await;
    let work = |c: &BTreeMap<String, (usize, usize)>| c["edge-1/work"].0 + c["cloud-1/work"].0;
    assert_eq!(work(&after_exec) - work(&before_exec), 2, "{after_exec:?}");
    // Dispatchers ping every node each second.
    assert!(after_exec["edge-1/ping"].0 > 0, "{after_exec:?}");
    p.assert_no_violations();
}

/// In a secure site a device may neither ask discovery nor answer it, a
/// node may answer only as itself, and no service answers onto a subject
/// that is not an inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_may_not_use_discovery_nor_a_node_answer_for_another() {
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);

    // The device's ping is refused (the same request from the operator is
    // answered, so the refusal is not a silent site).
    let refused = p.device.request("$SRV.PING", "".into()).await;
    assert!(refused.is_err(), "a device's $SRV.PING was answered");
    p.nats.wait_violation("$SRV.PING").await;
    let pong: PingResponse = ask(&p.client, "$SRV.PING.comfaas-exec").await;
    assert_eq!(pong.id, "edge-1");
    // Nor may it listen to others' discovery.
    let _spy = p.device.subscribe("$SRV.>").await.unwrap();
    p.device.flush().await.unwrap();
    p.nats.wait_violation("$SRV.>").await;

    // A discovery request whose reply subject is not an inbox gets no
    // answer: else the services would publish there (here: a forged
    // result) with their own identities.
    let forged = p.subjects.result("hello");
    let mut results = p.client.subscribe(forged.clone()).await.unwrap();
    p.client
        .publish_with_reply("$SRV.PING", forged, "".into())
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), results.next()).await {
        panic!("a discovery answer went to {}", message.subject);
    }

    // A node impersonating another in discovery.
    let node = p
        .nats
        .client_as(&Role::Executor {
            node: "node-x".to_owned(),
        })
        .await;
    let other = micro::request("INFO", Some(micro::EXEC_SERVICE), Some("edge-1"));
    let _forged = node.subscribe(other.clone()).await.unwrap();
    node.flush().await.unwrap();
    p.nats.wait_violation(&other).await;
}

/// A free loopback port's address, for a metrics endpoint.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET /metrics` at `addr`, over a plain TCP stream.
async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// The sum of the samples of `name` whose labels include every one of
/// `labels` (`key="value"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A platform serving `hello` on edge-1, whose dispatcher and node serve
/// their metrics at `dispatch_addr` and `edge_addr`.
async fn serving_hello_with_metrics(dispatch_addr: &str, edge_addr: &str) -> Platform {
    let p = Platform::start().await;
    drop(
        p.dispatcher_with(DispatchConfig {
            metrics_addr: dispatch_addr.to_owned(),
            ..DispatchConfig::default()
        })
        .await,
    );
    drop(
        p.executor(NodeSpec {
            metrics_addr: edge_addr.to_owned(),
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    p
}

/// A metrics address some other program listens on costs the metrics,
/// not the work: the dispatcher and the node both serve without them (a
/// node once stopped, and `comfaas dev` beside another lost its node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_in_use_costs_the_metrics_not_the_work() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let p = serving_hello_with_metrics(&addr, &addr).await;
    let reply = p.invoke("hello", r#"{"name":"x"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_move_with_invocations_errors_and_events() {
    let (dispatch_addr, edge_addr) = (free_addr(), free_addr());
    let p = serving_hello_with_metrics(&dispatch_addr, &edge_addr).await;
    p.deploy(&p.count_function(), &["edge-1"]).await;
    let before = (scrape(&dispatch_addr).await, scrape(&edge_addr).await);
    let hello_ok = [r#"function="hello""#, r#"status="ok""#];
    assert_eq!(
        sample(&before.0, "comfaas_dispatch_invocations_total", &hello_ok),
        0.0
    );

    for _ in 0..2 {
        let reply = p.invoke("hello", "{}").await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
    // Not JSON: hello exits 2, a 500.
    let failed = p.invoke("hello", "not json").await;
    assert_eq!(header(&failed, h::ERROR_CODE), "500");
    // A large input, fetched by the node from the object store.
    let input = vec![b'x'; 100_000];
    let name = p.upload_input(&input).await;
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, name.as_str());
    let counted = p.invoke_with("count", "", headers).await;
    assert_eq!(String::from_utf8_lossy(&counted.payload).trim(), "100000");
    // An event that fails is dead-lettered.
    p.publish_event("hello", &[], "not json").await;
    // One no node can run yet (its install failed: 503, transient) is
    // handed back for a later try.
    let broken = p.function(
        "broken-c",
        "",
        &[("main.c", "int main(void) { return nope; }\n")],
    );
    std::fs::write(
        broken.join("comfaas.toml"),
        "name = \"broken-c\"\nversion = \"1\"\nruntime = \"c\"\nentry = \"main.c\"\n",
    )
    .unwrap();
    let deployment = comfaas::deploy::deploy_dir(&p.registry, &broken)
        .await
        .unwrap();
    p.wait_state(&deployment, &["edge-1"], InstallState::Failed)
        .await;
    p.publish_event("broken-c", &[], "").await;
    // Requests for functions that are not deployed, named as their sender
    // pleases: counted under one label, never one series per name.
    let strangers: Vec<String> = (0..2)
        .map(|_| format!("no-such-{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for name in &strangers {
        let reply = p.invoke(name, "").await;
        assert_eq!(header(&reply, h::ERROR_CODE), "404", "{:?}", reply.headers);
    }

    // Nodes answer requesters before they tell the dispatcher, which
    // counts then: wait until it has counted all seven.
    let dispatch = wait_for(&dispatch_addr, |text| {
        sample(text, "comfaas_dispatch_events_dead_lettered_total", &[]) >= 1.0
            && sample(text, "comfaas_dispatch_events_retried_total", &[]) >= 1.0
            && sample(text, "comfaas_dispatch_invocations_total", &[]) >= 7.0
    })
    .await
    .expect("the dispatcher counted seven answers and a dead letter within 20 s");
    assert_eq!(
        sample(
            &dispatch,
            "comfaas_dispatch_invocations_total",
            &[r#"function="_unknown""#, r#"status="404""#]
        ),
        2.0,
        "{dispatch}"
    );
    for name in &strangers {
        assert!(!dispatch.contains(name.as_str()), "{name} in {dispatch}");
    }
    let edge = scrape(&edge_addr).await;
    let d = |name: &str, labels: &[&str]| sample(&dispatch, name, labels);
    assert_eq!(
        d(
            "comfaas_dispatch_invocations_total",
            &[r#"function="hello""#, r#"node="edge-1""#, r#"status="ok""#]
        ),
        2.0,
        "{dispatch}"
    );
    // The failed invocation and the failed event.
    assert_eq!(
        d(
            "comfaas_dispatch_invocations_total",
            &[r#"function="hello""#, r#"status="500""#]
        ),
        2.0,
        "{dispatch}"
    );
    assert_eq!(
        d(
            "comfaas_dispatch_latency_seconds_count",
            &[r#"function="hello""#]
        ),
        4.0,
        "{dispatch}"
    );
    assert_eq!(
        d("comfaas_dispatch_placements_total", &[r#"tier="edge""#]),
        5.0,
        "{dispatch}"
    );
    assert_eq!(
        d(
            "comfaas_dispatch_events_dead_lettered_total",
            &[r#"function="hello""#]
        ),
        1.0,
        "{dispatch}"
    );
    assert!(
        d(
            "comfaas_dispatch_invocations_total",
            &[r#"function="broken-c""#, r#"status="503""#]
        ) >= 1.0,
        "{dispatch}"
    );
    assert!(
        d(
            "comfaas_dispatch_events_retried_total",
            &[r#"function="broken-c""#]
        ) >= 1.0,
        "{dispatch}"
    );
    assert!(
        dispatch.contains("comfaas_dispatch_in_flight "),
        "{dispatch}"
    );
    assert!(
        dispatch.contains(r#"comfaas_dispatch_node_queued{node="edge-1",tier="edge"} 0"#),
        "{dispatch}"
    );

    let e = |name: &str, labels: &[&str]| sample(&edge, name, labels);
    assert_eq!(
        e(
            "comfaas_exec_invocations_total",
            &[r#"function="hello""#, r#"node="edge-1""#, r#"status="ok""#]
        ),
        2.0,
        "{edge}"
    );
    assert_eq!(
        e(
            "comfaas_exec_invocations_total",
            &[r#"function="hello""#, r#"status="500""#]
        ),
        2.0,
        "{edge}"
    );
    assert_eq!(
        e("comfaas_exec_run_seconds_count", &[r#"function="hello""#]),
        4.0,
        "{edge}"
    );
    assert_eq!(
        e("comfaas_exec_fetch_seconds_count", &[r#"function="count""#]),
        1.0,
        "{edge}"
    );
    assert_eq!(
        e("comfaas_exec_input_bytes_fetched_total", &[]),
        100_000.0,
        "{edge}"
    );
    assert_eq!(e("comfaas_exec_running", &[]), 0.0, "{edge}");
    assert_eq!(e("comfaas_exec_queued", &[]), 0.0, "{edge}");
}

/// Scrapes `addr` until `done` holds for its text (within 20 s).
async fn wait_for(addr: &str, done: impl Fn(&str) -> bool) -> Option<String> {
    for _ in 0..200 {
        let text = scrape(addr).await;
        if done(&text) {
            return Some(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn decisions_show_the_choice_of_an_invocation(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    let reply = p.invoke("hello", "{}").await;
    let invocation = header(&reply, h::INVOCATION_ID);
    let node = header(&reply, h::NODE);
    let role = if security == Security::Secure {
        "observer"
    } else {
        "operator"
    };
    let run = |json: bool| {
        let mut command = std::process::Command::new(binary("comfaas"));
        command.args(p.cli_args(role)).arg("decisions");
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let table = run(false);
    let mut lines = table.lines();
    let decision = lines
        .find(|l| l.contains(&invocation))
        .unwrap_or_else(|| panic!("no decision for {invocation}:\n{table}"));
    assert!(
        decision.contains("hello") && decision.contains(&node),
        "{table}"
    );
    // Both nodes were candidates; the chosen one is marked; each estimate
    // shows its parts.
    let candidates: Vec<&str> = lines.by_ref().take(2).collect();
    assert!(
        candidates
            .iter()
            .any(|l| l.starts_with(&format!("  * {node} "))),
        "{table}"
    );
    assert!(
        candidates
            .iter()
            .all(|l| l.contains(" ms = wait ") && l.contains(" + rtt ") && l.contains(" + run ")),
        "{table}"
    );

    let json = run(true);
    let record: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["invocation"] == invocation.as_str())
        .unwrap_or_else(|| panic!("no decision for {invocation}:\n{json}"));
    assert_eq!(record["function"], "hello");
    assert_eq!(record["node"], node.as_str());
    let candidates = record["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2, "{record}");
    for candidate in candidates {
        let parts = &candidate["parts"];
        let total: f64 = [
            "wait_ms",
            "contention_ms",
            "transfer_ms",
            "rtt_ms",
            "run_ms",
        ]
        .iter()
        .map(|k| parts[k].as_f64().unwrap())
        .sum();
        let estimate = candidate["estimate_ms"].as_f64().unwrap();
        assert!((total - estimate).abs() < 1e-6, "{candidate}");
    }

    // `-f`: a decision made after it started is printed as it comes.
    let mut follow = tokio::process::Command::new(binary("comfaas"))
        .args(p.cli_args(role))
        .args(["decisions", "-f", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    // The first listing is printed once its window has closed: the
    // earlier decision in it means what comes next is followed.
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(&invocation) {
                return;
            }
        }
        panic!("decisions -f ended before listing {invocation}");
    })
    .await;
    assert!(first.is_ok(), "decisions -f did not list {invocation}");
    let later = header(&p.invoke("hello", "{}").await, h::INVOCATION_ID);
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(&later) {
                return line;
            }
        }
        panic!("decisions -f ended before {later}");
    })
    .await
    .unwrap_or_else(|_| panic!("decisions -f did not print {later} within 20 s"));
    assert!(seen.contains("\"function\":\"hello\""), "{seen}");
    follow.kill().await.unwrap();
    p.assert_no_violations();
}

/// The reply says where time went: queued, fetching, running; none of it
/// more than the whole round trip the caller saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_say_how_long_the_run_queued_and_fetched() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&p.count_function(), &["edge-1"]).await;
    let ms = |reply: &async_nats::Message, name: &str| -> u64 {
        header(reply, name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} missing or not a number: {:?}", reply.headers))
    };

    let sent = Instant::now();
    let inline = p.invoke("count", "abc").await;
    let round_trip = sent.elapsed().as_millis() as u64;
    assert_eq!(String::from_utf8_lossy(&inline.payload).trim(), "3");
    assert_eq!(
        ms(&inline, h::FETCH_MS),
        0,
        "an inline input is not fetched"
    );
    let spent = ms(&inline, h::QUEUE_MS) + ms(&inline, h::DURATION_MS);
    assert!(spent <= round_trip, "{spent} ms of {round_trip}");

    let name = p.upload_input(&vec![b'y'; 300_000]).await;
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, name.as_str());
    let sent = Instant::now();
    let fetched = p.invoke_with("count", "", headers).await;
    let round_trip = sent.elapsed().as_millis() as u64;
    assert_eq!(String::from_utf8_lossy(&fetched.payload).trim(), "300000");
    let spent =
        ms(&fetched, h::QUEUE_MS) + ms(&fetched, h::FETCH_MS) + ms(&fetched, h::DURATION_MS);
    assert!(spent <= round_trip, "{spent} ms of {round_trip}");
    // Errors answered before any run carry none of them.
    let missing = p.invoke("nope", "").await;
    assert_eq!(header(&missing, h::QUEUE_MS), "");
}
