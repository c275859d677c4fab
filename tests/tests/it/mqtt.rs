//! Devices that speak MQTT, played by a real MQTT client (paho-mqtt, in
//! the venv `scripts/setup.sh` makes): a publish on `comfaas/event/<fn>`
//! is an event of the events stream, its result comes back over MQTT on
//! `comfaas/result/<fn>` and over NATS on `comfaas.result.<fn>`, and an
//! event that cannot run answers an error result whose body says why (an
//! MQTT device sees no headers). Secure: the device logs in with its
//! password over TLS, a wrong one is refused, the password opens no NATS
//! connection, and the device cannot publish on the platform's subjects.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use comfaas_platform::auth::Role;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{header, nats_py, repo_root, NodeSpec, Platform, Security, MQTT_DEVICE};
use futures::StreamExt;

/// A paho-mqtt device. Reads a JSON plan on stdin: where to connect (and
/// as whom), topics to subscribe to (QoS 1), messages to publish, and how
/// many messages to wait for; prints one JSON line per thing that
/// happened: `connect` (the CONNACK's reason), `published`, `message`.
const DEVICE: &str = r#"
import json, ssl, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

plan = json.load(sys.stdin)
out = lambda **kv: print(json.dumps(kv), flush=True)
connected, subscribed, done = threading.Event(), threading.Event(), threading.Event()
got = []

def on_connect(client, userdata, flags, reason, properties):
    out(connect=str(reason), failure=reason.is_failure)
    connected.set()

def on_subscribe(client, userdata, mid, reasons, properties):
    out(subscribed=[str(r) for r in reasons])
    subscribed.set()

def on_message(client, userdata, m):
    got.append(1)
    out(message={"topic": m.topic, "payload": m.payload.decode(errors="replace"), "qos": m.qos})
    if len(got) >= plan["expect"]:
        done.set()

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=plan["client_id"], clean_session=True)
if plan.get("user"):
    c.username_pw_set(plan["user"], plan["password"])
if plan.get("ca"):
    c.tls_set(ca_certs=plan["ca"])
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", plan["port"])
c.loop_start()
if not connected.wait(20):
    out(connect="no CONNACK", failure=True)
    sys.exit(0)
if plan["subscribe"]:
    c.subscribe([(t, 1) for t in plan["subscribe"]])
    subscribed.wait(20)
for p in plan["publish"]:
    info = c.publish(p["topic"], p["payload"].encode(), qos=p["qos"])
    info.wait_for_publish(20)
    out(published=p["topic"], qos=p["qos"], ok=info.is_published())
if plan["expect"] > 0:
    done.wait(plan["wait_s"])
c.disconnect()
c.loop_stop()
"#;

/// One message the device received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload, as text.
    pub payload: String,
}

/// What the device reported.
#[derive(Debug, Default)]
pub struct Report {
    /// The CONNACK's reason.
    pub connect: String,
    /// Whether the server refused the connection.
    pub refused: bool,
    /// Each publish's topic and whether the server took it.
    pub published: Vec<(String, bool)>,
    /// What it received.
    pub messages: Vec<Received>,
}

/// A publish of the plan.
pub struct Publish<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its payload.
    pub payload: &'a str,
    /// Its QoS, 0 or 1.
    pub qos: u8,
}

/// Runs the device against `p`'s MQTT port with `plan`'s topics; as the
/// MQTT device (secure) unless `password` overrides its password.
async fn device(
    p: &Platform,
    subscribe: &[&str],
    publish: &[Publish<'_>],
    expect: usize,
    password: Option<&str>,
) -> Report {
    let port = p
        .nats
        .server
        .mqtt_port()
        .expect("the server listens for MQTT");
    let login = p.nats.auth.as_ref().map(|auth| {
        let auth = auth.snapshot();
        Login {
            user: MQTT_DEVICE.to_owned(),
            password: password
                .map(str::to_owned)
                .or_else(|| auth.mqtt_password(MQTT_DEVICE).map(str::to_owned))
                .expect("the MQTT device's password"),
            ca: auth.tls_ca().expect("TLS"),
        }
    });
    device_at(port, login.as_ref(), subscribe, publish, expect).await
}

/// How a device logs in to a secure server.
pub struct Login {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// The CA of the server's certificate (MQTT over TLS).
    pub ca: std::path::PathBuf,
}

/// Runs the device against the MQTT listener on `port`: subscribes to
/// `subscribe` (QoS 1), publishes `publish`, waits for `expect` messages.
pub async fn device_at(
    port: u16,
    login: Option<&Login>,
    subscribe: &[&str],
    publish: &[Publish<'_>],
    expect: usize,
) -> Report {
    let mut plan = serde_json::json!({
        "port": port,
        "client_id": format!("device-{}", uuid::Uuid::new_v4().simple()),
        "subscribe": subscribe,
        "publish": publish.iter().map(|m| serde_json::json!({
            "topic": m.topic, "payload": m.payload, "qos": m.qos
        })).collect::<Vec<_>>(),
        "expect": expect,
        "wait_s": 90,
    });
    if let Some(login) = login {
        plan["user"] = login.user.clone().into();
        plan["password"] = login.password.clone().into();
        plan["ca"] = login.ca.display().to_string().into();
    }
    let mut child = tokio::process::Command::new(nats_py())
        .args(["-c", DEVICE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the MQTT device (scripts/setup.sh installs paho-mqtt)");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .expect("the device finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "device failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut report = Report::default();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(reason) = v["connect"].as_str() {
            report.connect = reason.to_owned();
            report.refused = v["failure"].as_bool().unwrap_or(true);
        } else if let Some(topic) = v["published"].as_str() {
            report
                .published
                .push((topic.to_owned(), v["ok"].as_bool().unwrap_or(false)));
        } else if v["message"].is_object() {
            report.messages.push(Received {
                topic: v["message"]["topic"].as_str().unwrap().to_owned(),
                payload: v["message"]["payload"].as_str().unwrap().to_owned(),
            });
        }
    }
    report
}

/// A platform with MQTT, a dispatcher, an edge node and `hello` on it.
async fn platform_with_hello(security: Security) -> Platform {
    let p = Platform::start_with_mqtt(security).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    p
}

/// QoS 0 and QoS 1 events from an MQTT device run; each result reaches the
/// device over MQTT and a NATS subscriber; an event for a function that is
/// not deployed answers an error result naming the reason in its body.
async fn an_mqtt_device_sends_events_and_reads_results(security: Security) {
    let p = platform_with_hello(security).await;
    let mut results = p.client.subscribe(p.subjects.result_all()).await.unwrap();
    p.client.flush().await.unwrap();
    let report = device(
        &p,
        &["comfaas/result/#"],
        &[
            Publish {
                topic: "comfaas/event/hello",
                payload: r#"{"name":"qos0"}"#,
                qos: 0,
            },
            Publish {
                topic: "comfaas/event/hello",
                payload: r#"{"name":"qos1"}"#,
                qos: 1,
            },
            Publish {
                topic: "comfaas/event/nope",
                payload: "{}",
                qos: 1,
            },
        ],
        3,
        None,
    )
    .await;
    assert!(!report.refused, "{report:?}");
    assert!(report.published.iter().all(|(_, ok)| *ok), "{report:?}");
    assert_eq!(
        report.messages.len(),
        3,
        "{report:?}; the server refused: {:?}",
        p.nats.violations()
    );
    // Over MQTT: both greetings and the error, each on its function's topic.
    let on = |topic: &str| -> Vec<String> {
        report
            .messages
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload.clone())
            .collect()
    };
    let hello = on("comfaas/result/hello");
    for name in ["qos0", "qos1"] {
        assert!(
            hello.iter().any(|m| m.contains(&format!("hello, {name}"))),
            "{report:?}"
        );
    }
    let nope = on("comfaas/result/nope");
    assert_eq!(nope.len(), 1, "{report:?}");
    let error: serde_json::Value = serde_json::from_str(&nope[0]).unwrap();
    assert_eq!(error["status"], "error", "{error}");
    assert_eq!(error["code"], 404, "{error}");
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");
    // Over NATS: the same three results, with their headers.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(60), results.next())
            .await
            .expect("three results over NATS")
            .unwrap();
        seen.push((
            m.subject.to_string(),
            header(&m, h::STATUS),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    let ok: Vec<_> = seen
        .iter()
        .filter(|(s, status, _)| s == "comfaas.result.hello" && status == "ok")
        .collect();
    assert_eq!(ok.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .any(|(s, status, _)| s == "comfaas.result.nope" && status == "error"),
        "{seen:?}"
    );
    p.assert_no_violations();
}

open_and_secure!(an_mqtt_device_sends_events_and_reads_results);

/// Secure: a wrong password is refused; the MQTT password opens no NATS
/// connection; an MQTT device cannot publish on a node's work subject
/// (the server refuses it, the node never sees it) while its events go on
/// being accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_mqtt_device_is_held_to_its_role() {
    let p = Platform::start_with_mqtt(Security::Secure).await;
    let report = device(&p, &[], &[], 0, Some("not-the-password")).await;
    assert!(report.refused, "{report:?}");
    assert!(
        report.connect.to_lowercase().contains("not authorized"),
        "{report:?}"
    );

    let auth = p.nats.auth.as_ref().unwrap().snapshot();
    let password = auth.mqtt_password(MQTT_DEVICE).unwrap().to_owned();
    let over_nats =
        async_nats::ConnectOptions::with_user_and_password(MQTT_DEVICE.to_owned(), password)
            .add_root_certificates(auth.tls_ca().unwrap())
            .require_tls(true)
            .connect(p.nats.url())
            .await;
    assert!(
        over_nats.is_err(),
        "an MQTT password opened a NATS connection"
    );

    let node = p
        .nats
        .client_as(&Role::Executor {
            node: "edge-1".to_owned(),
        })
        .await;
    let mut work = node.subscribe(p.subjects.work("edge-1")).await.unwrap();
    node.flush().await.unwrap();
    // The events stream exists once a dispatcher made it; the event after
    // the forbidden publish, on the same connection, shows that one was
    // handled when the event is stored.
    drop(p.dispatcher().await);
    let js = async_nats::jetstream::new(p.client.clone());
    let last_event = || async {
        js.get_stream(comfaas_schemas::names::EVENTS_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence
    };
    let stored_before = last_event().await;
    let report = device(
        &p,
        &[],
        &[
            Publish {
                topic: "comfaas/work/edge-1",
                payload: "forged",
                qos: 1,
            },
            Publish {
                topic: "comfaas/event/hello",
                payload: "{}",
                qos: 1,
            },
        ],
        0,
        None,
    )
    .await;
    assert!(!report.refused, "{report:?}");
    // The event is taken by the dispatcher (no node: it waits for one), so
    // the stream's count may have moved on already; its last sequence says
    // it was stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if last_event().await > stored_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event was not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.flush().await.unwrap();
    assert!(
        futures::poll!(work.next()).is_pending(),
        "a device's MQTT publish reached the node's work subject"
    );
    let refused = p.nats.server.log_lines("Publish Violation");
    assert!(
        refused.iter().any(|l| l.contains("comfaas.work.edge-1")),
        "{refused:?}"
    );
}
