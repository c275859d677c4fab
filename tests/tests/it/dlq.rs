//! Events that can never run: dead-lettered at once with why, kept in
//! COMFAAS_DLQ, listed, shown, replayed and purged with `comfaas dlq`;
//! events too old are dead-lettered, not run; a full events stream refuses
//! new events (and says so) instead of evicting accepted ones; one
//! function's unplaceable backlog leaves other functions' events alone.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_dispatch::DispatchConfig;
use comfaas_platform::dlq::Dlq;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{binary, header, next_message, repo_root, NodeSpec, Platform, Security};
use futures::StreamExt;

async fn publish(p: &Platform, function: &str, msg_id: &str, extra: &[(&str, &str)]) {
    let headers: Vec<(&str, &str)> = [(h::MSG_ID, msg_id)]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    p.publish_event(function, &headers, "{}").await;
}

/// The dead letters, polled until `want` are there (dead-lettering follows
/// the result).
async fn letters(p: &Platform, want: usize) -> Vec<comfaas_platform::dlq::DeadLetter> {
    let js = async_nats::jetstream::new(p.client.clone());
    let mut dlq = Dlq::open(&js, &p.subjects).await.unwrap();
    for _ in 0..100 {
        let found = dlq.list(None, 1000).await.unwrap();
        if found.len() >= want {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dlq.list(None, 1000).await.unwrap()
}

fn comfaas(p: &Platform, args: &[&str]) -> (bool, String) {
    comfaas_as(p, "operator", args)
}

fn comfaas_as(p: &Platform, role: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binary("comfaas"))
        .args(p.cli_args(role))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

open_and_secure!(permanent_errors_are_dead_lettered_at_once_and_can_be_replayed);

/// An event that fails for good: function, device id, extra headers, the
/// code and a part of the reason of its dead letter.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

async fn permanent_errors_are_dead_lettered_at_once_and_can_be_replayed(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    // A dispatcher trusts its node table once it has had time to hear
    // every node; before that a placement nobody meets may still be met.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut results = p.client.subscribe(p.subjects.result_all()).await.unwrap();
    // (function, device id, headers, code, reason contains)
    let cases: [Case; 4] = [
        ("ghost", "d-1", &[], "404", "not deployed"),
        ("hello", "d-2", &[(h::PROCS, "many")], "400", h::PROCS),
        (
            "hello",
            "d-3",
            &[(h::PLACEMENT, "node:nonexistent")],
            "503",
            "could ever take it",
        ),
        (
            "hello",
            "d-4",
            &[(h::PROCS, "100000")],
            "503",
            "could ever take it",
        ),
    ];
    for (function, id, extra, _, _) in &cases {
        publish(&p, function, id, extra).await;
    }
    // Each gets its error result at once, not after minutes of retries.
    let mut seen = std::collections::HashMap::new();
    for _ in 0..cases.len() {
        let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
        assert_eq!(header(&result, h::STATUS), "error", "{:?}", result.headers);
        seen.insert(header(&result, h::MSG_ID), result);
    }
    let letters = letters(&p, cases.len()).await;
    assert_eq!(letters.len(), cases.len(), "{letters:?}");
    for (function, id, _, code, why) in &cases {
        assert_eq!(header(&seen[*id], h::ERROR_CODE), *code, "{id}");
        let letter = letters
            .iter()
            .find(|l| l.header(h::DLQ_MSG_ID) == *id)
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters:?}"));
        assert_eq!(letter.function, *function);
        assert_eq!(letter.header(h::DLQ_CODE), *code, "{id}");
        assert!(
            letter.header(h::DLQ_REASON).contains(why),
            "{id}: {letter:?}"
        );
        assert_eq!(letter.header(h::DLQ_DELIVERIES), "1", "{id}: retried");
        assert_eq!(letter.header(h::DLQ_SUBJECT), p.subjects.event(function));
        assert!(!letter.header(h::EVENT_ID).is_empty());
        assert!(letter.header(h::DLQ_AT).parse::<u64>().unwrap() > 0);
        assert_eq!(&letter.payload[..], b"{}");
    }

    // The CLI lists and shows them.
    let (ok, listed) = comfaas(&p, &["dlq", "ls"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains("ghost") && listed.contains("not deployed"),
        "{listed}"
    );
    let ghost = letters.iter().find(|l| l.function == "ghost").unwrap();
    let (ok, shown) = comfaas(&p, &["dlq", "show", &ghost.seq.to_string()]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains("Comfaas-Dlq-Reason") && shown.contains("d-1"),
        "{shown}"
    );

    // Deployed now: replayed, the ghost's event runs, and its dead letter goes.
    let dir = p.function("ghost", "", &[("main.py", "print('here now')\n")]);
    p.deploy(&dir, &["edge-1"]).await;
    let (ok, replayed) = comfaas(&p, &["dlq", "replay", "ghost"]);
    assert!(ok, "{replayed}");
    assert!(replayed.contains("(event "), "{replayed}");
    let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
    assert_eq!(header(&result, h::STATUS), "ok", "{:?}", result.headers);
    assert_eq!(
        header(&result, h::MSG_ID),
        comfaas_platform::dlq::replay_msg_id("d-1", ghost.seq),
        "the device's id, marked as a replay"
    );
    assert_eq!(String::from_utf8_lossy(&result.payload).trim(), "here now");
    let (_, listed) = comfaas(&p, &["dlq", "ls", "ghost"]);
    assert!(listed.contains("no dead letters"), "{listed}");

    // Purged: nothing left.
    let (ok, purged) = comfaas(&p, &["dlq", "purge"]);
    assert!(ok, "{purged}");
    assert!(purged.contains("3 dead letters removed"), "{purged}");
    assert!(letters_now(&p).await.is_empty());

    p.assert_no_violations();

    // A device may not read, replay or purge dead letters.
    if p.nats.auth.is_some() {
        for args in [&["dlq", "ls"][..], &["dlq", "purge"]] {
            let (ok, refused) = comfaas_as(&p, "device", args);
            assert!(!ok, "a device ran {args:?}: {refused}");
        }
    }
}

async fn letters_now(p: &Platform) -> Vec<comfaas_platform::dlq::DeadLetter> {
    let js = async_nats::jetstream::new(p.client.clone());
    let mut dlq = Dlq::open(&js, &p.subjects).await.unwrap();
    dlq.list(None, 1000).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_older_than_max_event_age_is_dead_lettered_not_run() {
    let p = Platform::start().await;
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("hello"))
        .await
        .unwrap();
    // Published while no dispatcher runs, taken 2 s later by one whose
    // limit is 1 s.
    let js = async_nats::jetstream::new(p.client.clone());
    comfaas_platform::resources::events_stream(&js, &p.subjects)
        .await
        .unwrap();
    publish(&p, "hello", "stale", &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(
        p.dispatcher_with(DispatchConfig {
            max_event_age_s: 1,
            ..DispatchConfig::default()
        })
        .await,
    );
    let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
    assert_eq!(header(&result, h::STATUS), "error");
    assert_eq!(header(&result, h::MSG_ID), "stale");
    assert!(
        header(&result, h::ERROR).contains("max_event_age"),
        "{:?}",
        result.headers
    );
    assert_eq!(header(&result, h::NODE), "", "it ran somewhere");
    let letters = letters(&p, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].header(h::DLQ_REASON).contains("max_event_age"));
    assert_eq!(letters[0].header(h::DLQ_NODES), "", "sent to a node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_function_backlog_refuses_new_events_and_evicts_none() {
    let p = Platform::start().await;
    // No dispatcher: events wait in the stream.
    let js = async_nats::jetstream::new(p.device.clone());
    let mut stream = comfaas_platform::resources::events_stream(&js, &p.subjects)
        .await
        .unwrap();
    let limit = comfaas_platform::resources::EVENTS_PER_FUNCTION as usize;
    let subject = p.subjects.event("flood");
    for chunk in (0..limit).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for i in chunk {
            acks.push(
                js.publish(subject.clone(), format!("{i}").into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            tokio::time::timeout(Duration::from_secs(30), ack)
                .await
                .expect("acked within 30 s")
                .expect("accepted while under the limit");
        }
    }
    // One more of the same function is refused, and its publisher told so.
    let refused = js
        .publish(subject.clone(), "one too many".into())
        .await
        .unwrap()
        .await
        .expect_err("over the limit");
    assert!(
        refused.to_string().contains("maximum messages per subject"),
        "{refused}"
    );
    // Another function's events are still taken.
    js.publish(p.subjects.event("other"), "fine".into())
        .await
        .unwrap()
        .await
        .expect("another function's event accepted");
    // Nothing accepted was evicted: the first is still there.
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages as usize, limit + 1);
    let first = stream.get_raw_message(1).await.unwrap();
    assert_eq!(&first.payload[..], b"0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplaceable_backlog_does_not_hold_up_other_functions() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    // cloud-1, a real process, killed: known but dead, so events forced
    // there wait for it (retried, not dead-lettered), more of them than
    // the old shared window of 4,096 held.
    let data = p.scratch.path().join("cloud-1");
    let mut cloud = comfaas_tests::Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            p.nats.url(),
            "--node",
            "cloud-1",
            "--tier",
            "cloud",
            "--data-dir",
            &data.to_string_lossy(),
        ],
    );
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    cloud.kill().await;
    let js = async_nats::jetstream::new(p.device.clone());
    let stuck = 5000;
    for chunk in (0..stuck).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::new();
        for i in chunk {
            let mut headers = HeaderMap::new();
            headers.insert(h::PLACEMENT, "node:cloud-1");
            acks.push(
                js.publish_with_headers(p.subjects.event("hello"), headers, format!("{i}").into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    let dir = p.function("quick", "", &[("main.py", "print('quick')\n")]);
    p.deploy(&dir, &["edge-1"]).await;
    let mut results = p
        .client
        .subscribe(p.subjects.result("quick"))
        .await
        .unwrap();
    for i in 0..10 {
        publish(&p, "quick", &format!("q{i}"), &[]).await;
    }
    let mut answered = 0;
    while answered < 10 {
        let result = next_message(&mut results, Duration::from_secs(60), "a result").await;
        assert_eq!(header(&result, h::STATUS), "ok", "{:?}", result.headers);
        answered += 1;
    }
    // The backlog was waiting, not thrown away.
    assert!(
        letters_now(&p).await.is_empty(),
        "the backlog was dead-lettered"
    );
    let stream = js
        .get_stream(comfaas_schemas::names::EVENTS_STREAM)
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert!(
        stream >= stuck as u64,
        "the backlog left the stream: {stream}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_goes_only_to_an_events_subject() {
    let p = Platform::start().await;
    let js = async_nats::jetstream::new(p.client.clone());
    comfaas_platform::resources::events_stream(&js, &p.subjects)
        .await
        .unwrap();
    let mut dlq = Dlq::open(&js, &p.subjects).await.unwrap();
    // A dead letter naming a node's work subject as where it came from.
    let work = p.subjects.work("edge-1");
    let mut node = p.client.subscribe(work.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(h::DLQ_SUBJECT, work.as_str());
    headers.insert(h::DLQ_REASON, "forged");
    js.publish_with_headers(p.subjects.dlq("hello"), headers, "payload".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = dlq.list(None, 10).await.unwrap().remove(0);
    let replayed = dlq.replay(letter.seq).await.unwrap();
    assert_eq!(replayed.subject, p.subjects.event("hello"));
    assert!(replayed.event_seq.is_some());
    let nothing = tokio::time::timeout(Duration::from_secs(1), node.next()).await;
    assert!(
        nothing.is_err(),
        "a replay reached a work subject: {nothing:?}"
    );
    assert!(
        dlq.list(None, 10).await.unwrap().is_empty(),
        "replayed, so removed"
    );

    // An id that is not there: an error naming it, and nothing published.
    for missing in [dlq.get(999).await.err(), dlq.replay(999).await.err()] {
        let error = missing.expect("no dead letter 999");
        assert!(error.to_string().contains("dead letter 999"), "{error}");
    }
    let events = js
        .get_stream(comfaas_schemas::names::EVENTS_STREAM)
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(events, 1, "only the one replay reached the events stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_stream_made_by_an_older_comfaas_is_brought_up_to_date_where_the_server_can() {
    use async_nats::jetstream::stream;
    let p = Platform::start().await;
    let js = async_nats::jetstream::new(p.client.clone());
    // As comfaas made it before: limits retention, the oldest evicted.
    js.create_stream(stream::Config {
        name: comfaas_schemas::names::EVENTS_STREAM.to_owned(),
        subjects: vec![p.subjects.event_all()],
        storage: stream::StorageType::File,
        max_bytes: 1 << 30,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut events = comfaas_platform::resources::events_stream(&js, &p.subjects)
        .await
        .expect("an old stream is opened, not refused");
    let config = events.info().await.unwrap().config.clone();
    let version = comfaas_platform::nats::server_version(&p.client).unwrap();
    if version.has(comfaas_platform::nats::ServerVersion::V2_10) {
        // 2.10 and later change a stream's retention: no eviction any more.
        assert_eq!(
            config.retention,
            stream::RetentionPolicy::Interest,
            "{version}"
        );
        assert_eq!(config.discard, stream::DiscardPolicy::New, "{version}");
        assert_eq!(
            config.max_messages_per_subject,
            comfaas_platform::resources::EVENTS_PER_FUNCTION
        );
    } else {
        // 2.9 cannot: the stream keeps its old limits, whole (discard new
        // with limits retention would refuse events once a week's fill).
        assert_eq!(
            config.retention,
            stream::RetentionPolicy::Limits,
            "{version}"
        );
        assert_eq!(config.discard, stream::DiscardPolicy::Old, "{version}");
    }
    // Either way the dispatchers' consumer is there and events are taken.
    assert!(events
        .consumer_info(comfaas_schemas::names::DISPATCH_EVENTS_CONSUMER)
        .await
        .is_ok());
}
