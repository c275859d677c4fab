//! Function logs: what runs write to stderr (and what a handler prints)
//! reaches `COMFAAS_LOGS` named by invocation id, function, version and
//! node; a flood is cut and marked; `comfaas logs` filters by id and node;
//! a raising handler's whole traceback reaches the caller once; only an
//! executor publishes, and only as itself; a device reads no logs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_platform::auth::Role;
use comfaas_platform::logs::{LogFilter, LogReader, LogRecord};
use comfaas_platform::reply::error_of;
use comfaas_schemas::names::{self, headers as h};
use comfaas_tests::{binary, header, NodeSpec, Platform, Security};

/// Every record `filter` selects now, read with `client`.
async fn read_logs(
    p: &Platform,
    client: &async_nats::Client,
    filter: &LogFilter,
) -> Vec<LogRecord> {
    let js = async_nats::jetstream::new(client.clone());
    let mut reader = LogReader::open(&js, &p.subjects, filter.clone())
        .await
        .unwrap();
    let mut records = Vec::new();
    while let Some(record) = tokio::time::timeout(Duration::from_secs(10), reader.next(false))
        .await
        .expect("reading logs stalled")
        .unwrap()
    {
        records.push(record);
    }
    records
}

/// The records `filter` selects once `done` says they are all there
/// (logs are published after the reply, so they may lag it a little).
async fn logs_when(
    p: &Platform,
    client: &async_nats::Client,
    filter: &LogFilter,
    done: impl Fn(&[LogRecord]) -> bool,
) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for _ in 0..100 {
        records = read_logs(p, client, filter).await;
        if done(&records) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("logs for {filter:?} never became complete: {records:#?}");
}

/// The text of `records`, in order.
fn text(records: &[LogRecord]) -> String {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.text).into_owned())
        .collect()
}

fn of(function: &str) -> LogFilter {
    LogFilter {
        function: function.to_owned(),
        ..LogFilter::default()
    }
}

fn of_invocation(function: &str, id: &str) -> LogFilter {
    LogFilter {
        invocation_id: Some(id.to_owned()),
        ..of(function)
    }
}

/// Runs the `comfaas` binary as `role` with `args`.
async fn comfaas(p: &Platform, role: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("comfaas"))
        .args(p.cli_args(role))
        .args(args)
        .output()
        .await
        .expect("run comfaas")
}

/// Invokes `function` on `node`; a 503 (the dispatcher has not yet heard
/// that the node serves the new deployment) is tried again for a while.
async fn invoke_on(p: &Platform, function: &str, node: &str) -> async_nats::Message {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
        let reply = p.invoke_with(function, "", headers).await;
        if header(&reply, h::ERROR_CODE) != "503" || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

open_and_secure!(a_runs_stderr_reaches_the_logs_with_its_names);

async fn a_runs_stderr_reaches_the_logs_with_its_names(security: Security) {
    let p = Platform::start_with(security).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let chatty = p.function(
        "chatty",
        "mode = \"handler\"",
        &[(
            "main.py",
            "import sys\n\
             def handle(data):\n    \
                 print('handling', data.decode())\n    \
                 print('to stderr too', file=sys.stderr)\n    \
                 return b'done'\n",
        )],
    );
    let noisy = p.function(
        "noisy",
        "",
        &[(
            "main.py",
            "import sys\nsys.stderr.write('noisy line 1\\nnoisy line 2\\n')\nprint('out')\n",
        )],
    );
    p.deploy(&chatty, &["edge-1"]).await;
    p.deploy(&noisy, &["edge-1"]).await;

    let first = p.invoke("chatty", "x1").await;
    assert_eq!(header(&first, h::STATUS), "ok", "{:?}", first.headers);
    let second = p.invoke("chatty", "x2").await;
    let (id1, id2) = (
        header(&first, h::INVOCATION_ID),
        header(&second, h::INVOCATION_ID),
    );
    let complete = |records: &[LogRecord]| text(records).contains("to stderr too\n");
    let logs1 = logs_when(&p, &p.client, &of_invocation("chatty", &id1), complete).await;
    let logs2 = logs_when(&p, &p.client, &of_invocation("chatty", &id2), complete).await;
    // Each call's prints are its own, although the worker is shared.
    assert_eq!(text(&logs1), "handling x1\nto stderr too\n");
    assert_eq!(text(&logs2), "handling x2\nto stderr too\n");
    for record in logs1.iter().chain(&logs2) {
        assert_eq!(record.function, "chatty");
        assert_eq!(record.version, "1.0.0");
        assert_eq!(record.node, "edge-1");
        assert_eq!(record.event_id, None);
    }

    let out = p.invoke("noisy", "").await;
    assert_eq!(header(&out, h::STATUS), "ok");
    let id = header(&out, h::INVOCATION_ID);
    let logs = logs_when(&p, &p.client, &of_invocation("noisy", &id), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(text(&logs), "noisy line 1\nnoisy line 2\n");
    assert_eq!(logs[0].node, header(&out, h::NODE));

    // An event's run carries its event id.
    let mut results = p
        .client
        .subscribe(p.subjects.result("noisy"))
        .await
        .unwrap();
    p.client.flush().await.unwrap();
    p.publish_event("noisy", &[], "").await;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        futures::StreamExt::next(&mut results),
    )
    .await
    .expect("the event's result")
    .unwrap();
    let event = header(&result, h::EVENT_ID);
    assert!(!event.is_empty());
    let logs = logs_when(&p, &p.client, &of_invocation("noisy", &event), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(logs[0].event_id.as_deref(), Some(event.as_str()));

    // The operator's and the observer's `comfaas logs`.
    for role in ["operator", "observer"] {
        let listed = comfaas(&p, role, &["logs", "chatty", "--id", &id1]).await;
        let stdout = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{role}: {stdout}");
        assert!(
            lines[0].ends_with(&format!(" edge-1 {id1} | handling x1")),
            "{role}: {stdout}"
        );
        assert!(!stdout.contains("x2"), "{role}: {stdout}");
    }
    p.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_handler_answers_its_whole_traceback_once() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let dir = p.function(
        "boom",
        "mode = \"handler\"",
        &[(
            "main.py",
            "def parse(data):\n    \
                 raise ValueError('bad reading: ' + data.decode())\n\
             \n\
             def handle(data):\n    \
                 print('about to parse')\n    \
                 return parse(data)\n",
        )],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let mut results = p.client.subscribe(p.subjects.result("boom")).await.unwrap();
    p.client.flush().await.unwrap();
    let reply = p.invoke("boom", "42").await;
    let (code, summary) = error_of(reply.headers.as_ref().unwrap());
    let id = header(&reply, h::INVOCATION_ID);
    assert_eq!(code, 500);
    let body = String::from_utf8_lossy(&reply.payload).into_owned();
    assert_eq!(
        body.matches("Traceback (most recent call last):").count(),
        1,
        "{body}"
    );
    let printed = body.find("about to parse\n").expect("the print");
    let traceback = body.find("Traceback (most recent call last):\n").unwrap();
    assert!(printed < traceback, "{body}");
    for frame in ["in handle\n", "in parse\n", "ValueError: bad reading: 42"] {
        assert!(body.contains(frame), "{frame} missing: {body}");
    }
    // The header: one line naming the exception and where the rest is.
    assert!(
        !summary.contains('\n') && !summary.contains("Traceback"),
        "{summary}"
    );
    assert!(
        summary.starts_with("handler raised an exception: ValueError: bad reading: 42"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("comfaas logs boom --id {id}")),
        "{summary}"
    );
    // The result of it.
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut results),
    )
    .await
    .expect("the result")
    .unwrap();
    // On the result subject (read by observers and MQTT devices): the code
    // and why, never the run's stderr.
    let on_result = String::from_utf8_lossy(&result.payload).into_owned();
    let on_result: serde_json::Value = serde_json::from_str(&on_result).expect(&on_result);
    assert_eq!(on_result["code"], 500, "{on_result}");
    assert!(!on_result.to_string().contains("Traceback"), "{on_result}");
    let failed = comfaas::logs::FailedRun::of(&result).expect("a failed run");

    // The log has it too.
    let logs = logs_when(&p, &p.client, &of_invocation("boom", &id), |r| {
        text(r).contains("ValueError")
    })
    .await;
    assert_eq!(text(&logs), body);
    // What `comfaas dev` prints of it, with the stderr read from its log.
    let printed = failed.text(Some(text(&logs).as_str()));
    assert!(
        printed.starts_with(&format!(
            "failed: boom {id} on edge-1 (500): handler raised"
        )),
        "{printed}"
    );
    assert!(
        printed.contains("\n  | about to parse\n  | Traceback (most recent call last):\n"),
        "{printed}"
    );
    assert!(
        printed.contains("  | ValueError: bad reading: 42\n"),
        "{printed}"
    );

    // `comfaas invoke` prints it as Python did, then the summary.
    let invoked = comfaas(&p, "device", &["invoke", "boom", "--data", "7"]).await;
    assert!(!invoked.status.success());
    let stderr = String::from_utf8_lossy(&invoked.stderr);
    assert_eq!(stderr.matches("Traceback").count(), 1, "{stderr}");
    assert!(
        stderr.contains("Traceback (most recent call last):\n  File "),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "\ncomfaas: error 500: handler raised an exception: ValueError: bad reading: 7"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_flood_is_cut_and_marked_and_the_node_keeps_serving() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    // 50 MB of stderr, then a last line, from a script and a handler.
    let flood = "import sys\n\
                 line = 'x' * 1023 + '\\n'\n\
                 for _ in range(50000):\n    sys.stderr.write(line)\n\
                 sys.stderr.write('the end\\n')\n";
    let script = p.function(
        "flood",
        "",
        &[("main.py", &format!("{flood}print('ok')\n"))],
    );
    let handler = p.function(
        "flood-handler",
        "mode = \"handler\"",
        &[(
            "main.py",
            &format!(
                "def handle(data):\n    {}\n    return b'ok'\n",
                flood.replace('\n', "\n    ")
            ),
        )],
    );
    p.deploy(&script, &["edge-1"]).await;
    p.deploy(&handler, &["edge-1"]).await;
    for function in ["flood", "flood-handler"] {
        let reply = p.invoke(function, "").await;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "{function}: {:?}",
            reply.headers
        );
        assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "ok");
        let id = header(&reply, h::INVOCATION_ID);
        let logs = logs_when(&p, &p.client, &of_invocation(function, &id), |r| {
            text(r).ends_with("the end\n")
        })
        .await;
        let all = text(&logs);
        // The default budget: 64 KiB, plus the marker line.
        assert!(
            all.len() <= 64 * 1024 + 100,
            "{function}: {} bytes",
            all.len()
        );
        let written = 50_000 * 1024 + "the end\n".len();
        let marker = format!(
            "[comfaas: log truncated, {} bytes not kept]\n",
            written - 64 * 1024
        );
        assert_eq!(all.matches(&marker).count(), 1, "{function}");
        assert!(all.starts_with("xxxx"), "{function}");
        // Cut in messages under the server's max payload.
        assert!(logs.len() >= 2, "{function}: {} messages", logs.len());
    }
    // Still serving, warm worker included.
    let again = p.invoke("flood-handler", "").await;
    assert_eq!(header(&again, h::STATUS), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_filtered_by_invocation_and_node() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    drop(p.executor(NodeSpec::cloud("cloud-1")).await);
    let dir = p.function(
        "where",
        "",
        &[("main.py", "import sys\nsys.stderr.write('ran\\n')\n")],
    );
    p.deploy(&dir, &["edge-1", "cloud-1"]).await;
    let mut ids = Vec::new();
    for node in ["edge-1", "edge-1", "cloud-1"] {
        let reply = invoke_on(&p, "where", node).await;
        assert_eq!(header(&reply, h::NODE), node, "{:?}", reply.headers);
        ids.push(header(&reply, h::INVOCATION_ID));
    }
    let all = logs_when(&p, &p.client, &of("where"), |r| r.len() == 3).await;
    assert_eq!(text(&all), "ran\n".repeat(3));
    let edge = read_logs(
        &p,
        &p.client,
        &LogFilter {
            node: Some("edge-1".to_owned()),
            ..of("where")
        },
    )
    .await;
    let edge_ids: Vec<&str> = edge.iter().map(|r| r.invocation_id.as_str()).collect();
    assert_eq!(edge_ids, vec![ids[0].as_str(), ids[1].as_str()]);
    let one = read_logs(&p, &p.client, &of_invocation("where", &ids[2])).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].node, "cloud-1");
    let recent = read_logs(
        &p,
        &p.client,
        &LogFilter {
            since: Some(Duration::from_secs(3600)),
            ..of("where")
        },
    )
    .await;
    assert_eq!(recent.len(), 3);

    let listed = comfaas(&p, "operator", &["logs", "where", "--node", "cloud-1"]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(&format!(" cloud-1 {} | ran", ids[2])),
        "{stdout}"
    );

    // Following: a new run's lines appear as it ends.
    let mut follow = tokio::process::Command::new(binary("comfaas"))
        .args(p.cli_args("operator"))
        .args(["logs", "where", "-f", "--since", "1m"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    for _ in 0..3 {
        assert!(next_line(&mut lines).await.ends_with(" | ran"));
    }
    let reply = invoke_on(&p, "where", "cloud-1").await;
    let id = header(&reply, h::INVOCATION_ID);
    let line = next_line(&mut lines).await;
    assert!(line.ends_with(&format!(" cloud-1 {id} | ran")), "{line}");
    drop(follow);

    // Nothing there: said, not an empty screen; no such function: an error.
    let none = comfaas(&p, "operator", &["logs", "where", "--id", "nope"]).await;
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.contains("no logs of `where` for invocation nope"),
        "{said}"
    );
    let unknown = comfaas(&p, "operator", &["logs", "nosuch"]).await;
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("no function `nosuch` is deployed"), "{said}");
    let bad = comfaas(&p, "operator", &["logs", "where", "--node", "a.b"]).await;
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("node `a.b` is not a valid name"), "{said}");
    let bad_since = comfaas(&p, "operator", &["logs", "where", "--since", "ten"]).await;
    assert!(!bad_since.status.success());
    assert!(String::from_utf8_lossy(&bad_since.stderr).contains("--since"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_logs_only_as_itself_and_a_device_reads_no_logs() {
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    let node = p
        .nats
        .client_as(&Role::Executor {
            node: "node-x".to_owned(),
        })
        .await;
    let forged = p.subjects.log("f", "edge-1");
    node.publish(forged.clone(), "forged".into()).await.unwrap();
    node.publish(p.subjects.log("f", "node-x"), "mine".into())
        .await
        .unwrap();
    node.flush().await.unwrap();
    let observer = p.nats.client_as(&Role::Observer).await;
    // The allowed one lands (so the forged one had every chance to).
    let records = logs_when(&p, &observer, &of("f"), |r| !r.is_empty()).await;
    assert_eq!(text(&records), "mine");
    p.nats.wait_violation(&forged).await;

    // A device may not read the stream, nor listen to log subjects.
    let device_js = async_nats::jetstream::new(p.device.clone());
    assert!(LogReader::open(&device_js, &p.subjects, of("f"))
        .await
        .is_err());
    p.nats
        .wait_violation(&format!("$JS.API.STREAM.INFO.{}", names::LOGS_STREAM))
        .await;
    let mut listening = p.device.subscribe(p.subjects.log_all()).await.unwrap();
    p.device.flush().await.unwrap();
    node.publish(p.subjects.log("f", "node-x"), "more".into())
        .await
        .unwrap();
    node.flush().await.unwrap();
    let heard = tokio::time::timeout(
        Duration::from_millis(700),
        futures::StreamExt::next(&mut listening),
    )
    .await;
    assert!(!matches!(heard, Ok(Some(_))), "a device heard a log");
    p.nats.wait_violation(&p.subjects.log_all()).await;
    let records = logs_when(&p, &observer, &of("f"), |r| r.len() == 2).await;
    assert_eq!(text(&records), "minemore");
}

/// The next line `comfaas logs -f` prints, within 20 s.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a followed line")
        .unwrap()
        .expect("comfaas logs -f ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_handler_answers_what_it_printed() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let dir = p.function(
        "stuck",
        "mode = \"handler\"\ntimeout = \"1s\"",
        &[(
            "main.py",
            "import time\n\
             def handle(data):\n    \
                 print('waiting for the bus', flush=True)\n    \
                 time.sleep(30)\n",
        )],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p.invoke("stuck", "").await;
    assert_eq!(header(&reply, h::ERROR_CODE), "408");
    assert_eq!(
        String::from_utf8_lossy(&reply.payload),
        "waiting for the bus\n"
    );
    let summary = header(&reply, h::ERROR);
    assert!(
        summary
            .starts_with("function exceeded its timeout of 1s and was killed: waiting for the bus"),
        "{summary}"
    );
    let id = header(&reply, h::INVOCATION_ID);
    let logs = logs_when(&p, &p.client, &of_invocation("stuck", &id), |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(text(&logs), "waiting for the bus\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_off_publish_nothing_and_errors_still_carry_stderr() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    let quiet = comfaas_exec::LogsConfig {
        enabled: false,
        ..comfaas_exec::LogsConfig::default()
    };
    drop(
        p.executor(NodeSpec {
            logs: quiet,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.function(
        "mute",
        "",
        &[(
            "main.py",
            "import sys\nsys.stderr.write('said something\\n')\nsys.exit(int(sys.stdin.read() or 0))\n",
        )],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let mut listening = p.client.subscribe(p.subjects.log_all()).await.unwrap();
    p.client.flush().await.unwrap();
    let ok = p.invoke("mute", "0").await;
    assert_eq!(header(&ok, h::STATUS), "ok");
    let failed = p.invoke("mute", "3").await;
    assert_eq!(header(&failed, h::ERROR_CODE), "500");
    assert_eq!(String::from_utf8_lossy(&failed.payload), "said something\n");
    let summary = header(&failed, h::ERROR);
    assert!(
        summary.contains("the end of stderr is in the reply body"),
        "{summary}"
    );
    assert!(!summary.contains("comfaas logs"), "{summary}");
    let heard = tokio::time::timeout(
        Duration::from_millis(700),
        futures::StreamExt::next(&mut listening),
    )
    .await;
    assert!(!matches!(heard, Ok(Some(_))), "a log was published");
    assert!(read_logs(&p, &p.client, &of("mute")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_makes_the_logs_stream_with_its_limits() {
    let p = Platform::start().await;
    let limits = comfaas_platform::resources::LogsLimits {
        max_bytes: 8 << 20,
        max_age_s: 600,
    };
    drop(
        p.dispatcher_with(comfaas_dispatch::DispatchConfig {
            logs: limits,
            ..comfaas_dispatch::DispatchConfig::default()
        })
        .await,
    );
    let js = async_nats::jetstream::new(p.client.clone());
    let mut stream = js.get_stream(names::LOGS_STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec![p.subjects.log_all()]);
    assert_eq!(config.max_bytes, 8 << 20);
    assert_eq!(config.max_age, Duration::from_secs(600));
    assert_eq!(
        config.retention,
        async_nats::jetstream::stream::RetentionPolicy::Limits
    );
    assert_eq!(
        config.discard,
        async_nats::jetstream::stream::DiscardPolicy::Old
    );
    // Another dispatcher with other limits brings the stream to them
    // (small ones: the server reserves the disk they name).
    drop(
        p.dispatcher_with(comfaas_dispatch::DispatchConfig {
            logs: comfaas_platform::resources::LogsLimits {
                max_bytes: 16 << 20,
                max_age_s: 1200,
            },
            ..comfaas_dispatch::DispatchConfig::default()
        })
        .await,
    );
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_bytes, 16 << 20);
    assert_eq!(config.max_age, Duration::from_secs(1200));
    // Limits that cannot work are refused with what is wrong.
    for (bad, says) in [
        (
            comfaas_platform::resources::LogsLimits {
                max_bytes: 1000,
                ..limits
            },
            "logs.max_bytes must be at least 1 MiB",
        ),
        (
            comfaas_platform::resources::LogsLimits {
                max_age_s: 0,
                ..limits
            },
            "logs.max_age_s must be above zero",
        ),
    ] {
        let refused = comfaas_dispatch::Dispatcher::connect(comfaas_dispatch::DispatchConfig {
            nats: p.nats.options(),
            logs: bad,
            ..comfaas_dispatch::DispatchConfig::default()
        })
        .await;
        let error = format!("{:#}", refused.err().expect("refused"));
        assert!(error.contains(says), "{error}");
    }
}
