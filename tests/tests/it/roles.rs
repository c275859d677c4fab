//! Every role on NATS may do its job and nothing beyond (secure mode,
//! `comfaas_platform::auth`): each boundary is tried and refused, and the
//! same action by the role allowed to do it goes through, so no test can
//! pass because nothing was delivered at all. A refusal is seen where NATS
//! shows it: the message never arrives (while the allowed one does), a
//! request gets no answer, and the server logs the violation.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_platform::auth::Role;
use comfaas_platform::nats::NatsOptions;
use comfaas_schemas::names::{self, headers as h};
use comfaas_testbed::server::{wait_for_leaf_link, EmbeddedServer, LeafAuth, ServerOptions};
use comfaas_tests::{header, repo_root, NodeSpec, Platform};
use futures::StreamExt;

/// How long a refused message is given to show up anyway.
const GRACE: Duration = Duration::from_millis(700);

/// A secure platform with a dispatcher, `edge-1` and `cloud-1`, serving
/// `hello`.
async fn serving_hello() -> Platform {
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    drop(p.executor(NodeSpec::cloud("cloud-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1", "cloud-1"])
        .await;
    p
}

/// `hello` still answers the default device.
async fn still_serves(p: &Platform) {
    let reply = p.invoke("hello", r#"{"name":"after"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
}

/// Nothing arrives on `sub` within [`GRACE`].
async fn stays_silent(sub: &mut async_nats::Subscriber, what: &str) {
    if let Ok(Some(message)) = tokio::time::timeout(GRACE, sub.next()).await {
        panic!("{what}: a refused message arrived on {}", message.subject);
    }
}

/// The next message on `sub` (within 10 s), which must come.
async fn arrives(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: the allowed message did not arrive"))
        .unwrap()
}

/// Publishes and waits until the server has read it.
async fn publish(client: &async_nats::Client, subject: &str, payload: &'static str) {
    client
        .publish(subject.to_owned(), payload.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_deploy_remove_or_read_the_registry() {
    let p = serving_hello().await;
    let before = p.registry.get("hello").await.unwrap().unwrap();
    let device = &p.device;

    // Deploy or remove: KV put / delete into comfaas_functions.
    let kv_key = format!("$KV.{}.hello", names::FUNCTIONS_BUCKET);
    let js = async_nats::jetstream::new(device.clone());
    let put = js.publish(kv_key.clone(), "forged".into()).await.unwrap();
    assert!(put.await.is_err(), "a device's KV put was acknowledged");
    p.nats.wait_violation(&kv_key).await;
    // A package put.
    let chunk = format!("$O.{}.C.forged", names::PACKAGES_BUCKET);
    publish(device, &chunk, "bundle").await;
    p.nats.wait_violation(&chunk).await;
    // Purge the packages (as rm's garbage collection does).
    let purge = format!(
        "$JS.API.STREAM.PURGE.{}",
        names::object_store_stream(names::PACKAGES_BUCKET)
    );
    assert!(device.request(purge.clone(), "".into()).await.is_err());
    p.nats.wait_violation(&purge).await;
    // Read the registry.
    let read = format!(
        "$JS.API.DIRECT.GET.{}.$KV.{}.hello",
        names::kv_stream(names::FUNCTIONS_BUCKET),
        names::FUNCTIONS_BUCKET
    );
    assert!(device.request(read.clone(), "".into()).await.is_err());
    p.nats.wait_violation(&read).await;
    assert!(
        comfaas_platform::registry::Registry::open(&js)
            .await
            .is_err(),
        "a device opened the registry"
    );

    // The registry is untouched and the operator still reads it.
    let after = p.registry.get("hello").await.unwrap().unwrap();
    assert_eq!(after.bundle.digest, before.bundle.digest);
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_send_work_forge_loads_or_listen_to_others() {
    let p = serving_hello().await;
    let device = &p.device;
    // A node of the test's own, so that a delivered message is seen.
    let node = p
        .nats
        .client_as(&Role::Executor {
            node: "node-x".to_owned(),
        })
        .await;
    let work = p.subjects.work("node-x");
    let mut node_work = node.subscribe(work.clone()).await.unwrap();
    node.flush().await.unwrap();
    let dispatcher = p.nats.client_as(&Role::Dispatcher).await;

    // Work straight onto a node, bypassing the dispatcher.
    publish(device, &work, "from a device").await;
    stays_silent(&mut node_work, "device → work").await;
    p.nats.wait_violation(&work).await;
    publish(&dispatcher, &work, "from the dispatcher").await;
    assert_eq!(
        arrives(&mut node_work, "dispatcher → work").await.payload,
        "from the dispatcher"
    );

    // Listening to every node's work.
    let every_node = p.subjects.work("*");
    let mut spy = device.subscribe(every_node.clone()).await.unwrap();
    device.flush().await.unwrap();
    publish(&dispatcher, &work, "watched").await;
    arrives(&mut node_work, "dispatcher → work").await;
    stays_silent(&mut spy, &every_node).await;
    p.nats.wait_violation(&every_node).await;

    // A forged load report: an observer sees the node's own reports only.
    let observer = p.nats.client().await;
    let load = p.subjects.node_load("edge-1");
    let mut loads = observer.subscribe(load.clone()).await.unwrap();
    observer.flush().await.unwrap();
    publish(device, &load, "forged").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut real = 0;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, loads.next()).await {
        assert_ne!(message.payload, "forged", "a forged load report arrived");
        real += 1;
    }
    assert!(real > 0, "edge-1's own reports arrive");
    p.nats.wait_violation(&load).await;

    // Asking which node holds an event's run (dispatchers only), or
    // listening for those asks (executors only).
    let held = p.subjects.event_held("1");
    let mut node_held = node.subscribe(p.subjects.event_held_all()).await.unwrap();
    node.flush().await.unwrap();
    publish(device, &held, "which node ran event 1?").await;
    stays_silent(&mut node_held, "device → held").await;
    p.nats.wait_violation(&held).await;
    publish(&dispatcher, &held, "asked by a dispatcher").await;
    arrives(&mut node_held, "dispatcher → held").await;
    let every_held = p.subjects.event_held_all();
    let _spy = device.subscribe(every_held.clone()).await.unwrap();
    device.flush().await.unwrap();
    p.nats.wait_violation(&every_held).await;
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_another_devices_replies_or_answer_invocations() {
    let p = serving_hello().await;
    let other = p
        .nats
        .device_options("sensor-2")
        .await
        .connect("device sensor-2")
        .await
        .unwrap();
    let device = &p.device;
    let other_key = {
        let auth = p.nats.auth.as_ref().unwrap().snapshot();
        let seed = comfaas_platform::nats::read_seed(&auth.device_file("sensor-2")).unwrap();
        nkeys::KeyPair::from_seed(&seed).unwrap().public_key()
    };
    let inbox = format!("{}.>", names::inbox_prefix_of(&other_key));
    let mut spy = device.subscribe(inbox.clone()).await.unwrap();
    let every_inbox = format!("{}.>", names::INBOX_PREFIX);
    let mut spy_all = device.subscribe(every_inbox.clone()).await.unwrap();
    // Joining the dispatchers' queue group to answer invocations.
    let mut rogue = device
        .queue_subscribe(
            p.subjects.invoke_all(),
            names::DISPATCH_QUEUE_GROUP.to_owned(),
        )
        .await
        .unwrap();
    device.flush().await.unwrap();

    for i in 0..5 {
        let reply = comfaas_tests::request(
            &other,
            &p.subjects.invoke("hello"),
            HeaderMap::new(),
            format!(r#"{{"name":"{i}"}}"#).into(),
        )
        .await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
    stays_silent(&mut spy, "another device's inbox").await;
    stays_silent(&mut spy_all, "every inbox").await;
    p.nats.wait_violation(&every_inbox).await;
    stays_silent(&mut rogue, "the dispatchers' queue group").await;
    p.nats.wait_violation(&inbox).await;
    p.nats.wait_violation(&p.subjects.invoke_all()).await;
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_takes_work_and_reports_only_as_itself() {
    let p = Platform::start_secure().await;
    let node_a = p
        .nats
        .client_as(&Role::Executor {
            node: "node-a".to_owned(),
        })
        .await;
    let node_b = p
        .nats
        .client_as(&Role::Executor {
            node: "node-b".to_owned(),
        })
        .await;
    let dispatcher = p.nats.client_as(&Role::Dispatcher).await;
    let work_b = p.subjects.work("node-b");
    let mut stolen = node_a.subscribe(work_b.clone()).await.unwrap();
    let mut own = node_b.subscribe(work_b.clone()).await.unwrap();
    node_a.flush().await.unwrap();
    node_b.flush().await.unwrap();
    publish(&dispatcher, &work_b, "for b").await;
    assert_eq!(arrives(&mut own, "b's work").await.payload, "for b");
    stays_silent(&mut stolen, "a on b's work").await;
    p.nats.wait_violation(&work_b).await;

    let observer = p.nats.client().await;
    let load_b = p.subjects.node_load("node-b");
    let mut loads = observer.subscribe(load_b.clone()).await.unwrap();
    observer.flush().await.unwrap();
    publish(&node_a, &load_b, "a as b").await;
    publish(&node_b, &load_b, "b itself").await;
    assert_eq!(arrives(&mut loads, "b's load").await.payload, "b itself");
    stays_silent(&mut loads, "a's report as b").await;
    p.nats.wait_violation(&load_b).await;

    // Nor may it write the registry.
    let kv_key = format!("$KV.{}.hello", names::FUNCTIONS_BUCKET);
    publish(&node_a, &kv_key, "forged").await;
    p.nats.wait_violation(&kv_key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_plaintext_are_refused_and_a_reload_adds_rotates_and_revokes_keys() {
    let p = Platform::start_secure().await;
    let auth = p.nats.auth.as_ref().unwrap().snapshot();
    let ca = auth.tls_ca().unwrap();
    // An nkey the server does not know.
    let stranger = p.scratch.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let with_key = |file: std::path::PathBuf| NatsOptions {
        nkey_file: Some(file),
        tls_ca_file: Some(ca.clone()),
        ..NatsOptions::for_url(p.nats.url())
    };
    assert!(with_key(stranger).connect("stranger").await.is_err());
    // No credentials at all, over TLS.
    let anonymous = NatsOptions {
        tls_ca_file: Some(ca.clone()),
        ..NatsOptions::for_url(p.nats.url())
    };
    assert!(anonymous.connect("anonymous").await.is_err());
    // A known key, without TLS.
    let plaintext = NatsOptions {
        nkey_file: Some(auth.role_file("operator")),
        ..NatsOptions::for_url(p.nats.url())
    };
    assert!(plaintext.connect("plaintext").await.is_err());
    // The operator's key over TLS is accepted.
    with_key(auth.role_file("operator"))
        .connect("operator")
        .await
        .unwrap();

    // `comfaas auth add-device` + a reload: the new key is accepted.
    let new = {
        let mut dir = p.nats.auth.as_ref().unwrap().dir.lock().unwrap();
        dir.add_device("late").unwrap()
    };
    assert!(
        with_key(new.clone())
            .connect("before reload")
            .await
            .is_err(),
        "a new key is refused until the server reloads"
    );
    p.nats.reload_until_accepted(&with_key(new.clone())).await;
    with_key(new.clone()).connect("after reload").await.unwrap();

    // `comfaas auth rotate device:late` + a reload: the old key (kept
    // aside, as a thief would) is refused, the new one accepted.
    let stolen = p.scratch.path().join("stolen.nk");
    std::fs::copy(&new, &stolen).unwrap();
    let rotated = {
        let mut dir = p.nats.auth.as_ref().unwrap().dir.lock().unwrap();
        dir.rotate("device:late").unwrap()
    };
    assert_eq!(rotated, new);
    assert_ne!(
        std::fs::read(&stolen).unwrap(),
        std::fs::read(&new).unwrap()
    );
    p.nats.reload_until_accepted(&with_key(new.clone())).await;
    assert!(
        with_key(stolen).connect("old key").await.is_err(),
        "a rotated-out key is refused after the reload"
    );

    // `comfaas auth revoke device:late` + a reload: its key is refused,
    // others still connect.
    let revoked = p.scratch.path().join("revoked.nk");
    std::fs::copy(&new, &revoked).unwrap();
    {
        let mut dir = p.nats.auth.as_ref().unwrap().dir.lock().unwrap();
        dir.revoke("device:late").unwrap();
        assert!(dir.revoke("operator").is_err(), "a site keeps its operator");
    }
    assert!(!new.exists(), "the revoked seed file is gone");
    p.nats
        .reload_until_accepted(&with_key(auth.role_file("operator")))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while with_key(revoked.clone()).connect("revoked").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "a revoked key is still accepted 10 s after the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_without_the_link_credentials_cannot_join_the_hub() {
    let p = Platform::start_secure().await;
    let auth = p.nats.auth.as_ref().unwrap().snapshot();
    let leaf_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = EmbeddedServer::start(comfaas_tests::limited(ServerOptions {
        include: Some(auth.server_conf()),
        config_text: Some(format!(
            "server_name: hub\njetstream {{\n  domain: hub\n}}\nleafnodes {{\n  port: {leaf_port}\n{}}}\n",
            auth.leaf_port_block()
        )),
        ..ServerOptions::default()
    }))
    .await
    .unwrap();
    let hub_client = auth
        .nats_options(hub.url(), auth.role_file("dispatcher"))
        .connect("hub probe")
        .await
        .unwrap();
    let remote = format!("127.0.0.1:{leaf_port}");
    let leaf_with = |link: Option<LeafAuth>| {
        let remote = remote.clone();
        async move {
            let text =
                comfaas_testbed::server::multi_leaf_config_with("leaf", &[remote], link.as_ref());
            EmbeddedServer::start(comfaas_tests::server_options(&text))
                .await
                .unwrap()
        }
    };
    let ca = auth.tls_ca();
    for (what, link) in [
        ("no credentials", None),
        (
            "a wrong password",
            Some(LeafAuth {
                user: comfaas_platform::auth::LEAF_USER.to_owned(),
                password: "guess".to_owned(),
                ca_file: ca.clone(),
            }),
        ),
    ] {
        let leaf = leaf_with(link).await;
        let leaf_client = async_nats::connect(leaf.url()).await.unwrap();
        assert!(
            wait_for_leaf_link(&leaf_client, &hub_client, Duration::from_secs(3))
                .await
                .is_err(),
            "a leaf with {what} joined the hub"
        );
    }
    let leaf = leaf_with(Some(LeafAuth {
        user: comfaas_platform::auth::LEAF_USER.to_owned(),
        password: auth.leaf_password().to_owned(),
        ca_file: ca,
    }))
    .await;
    let leaf_client = async_nats::connect(leaf.url()).await.unwrap();
    // Generous: on a loaded CI machine the link once took longer than 15 s
    // on nats-server 2.9; should it not come up, both servers' leaf-node
    // lines say why.
    if let Err(e) = wait_for_leaf_link(&leaf_client, &hub_client, Duration::from_secs(40)).await {
        panic!(
            "a leaf with the link credentials did not join the hub: {e}\nleaf: {:#?}\nhub: {:#?}",
            leaf.log_lines("eaf"),
            hub.log_lines("eaf")
        );
    }
}

/// On a secure site a node may not create the stores it uses; started
/// before the dispatcher that creates them, it waits instead of exiting,
/// and serves once they exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_the_dispatcher_waits_for_its_stores() {
    let p = Platform::start_secure().await;
    let node = p.executor(NodeSpec::edge("edge-1")).await;
    // Longer than the refused creates take (the old node gave up between
    // 8 s and 20 s).
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        !node.has_stopped(),
        "the node gave up before its stores existed"
    );
    drop(p.dispatcher().await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    let reply = p.invoke("hello", r#"{"name":"early"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "edge-1");
}

/// What `comfaas dev --secure` prints for the `nats` CLI, done by another
/// real client (nats-py): a device connects with its NKey seed over TLS and
/// requests on `comfaas.invoke.hello`. Its replies come only to its own
/// inbox prefix: the same request with the default `_INBOX.` prefix is
/// refused by the server, and the device still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_cli_example_works_for_a_device_from_nats_py() {
    const CLIENT: &str = r#"
import asyncio, ssl, sys
import nats

async def main():
    url, seed, ca, subject, prefix = sys.argv[1:6]
    errors = []
    async def on_error(e):
        errors.append(str(e))
    options = dict(servers=[url], nkeys_seed=seed, tls=ssl.create_default_context(cafile=ca),
                   error_cb=on_error, allow_reconnect=False)
    if prefix:
        options["inbox_prefix"] = prefix
    nc = await nats.connect(**options)
    try:
        msg = await nc.request(subject, b'{"name":"py"}', timeout=5)
        print("REPLY", (msg.headers or {}).get("Comfaas-Status"), msg.data.decode())
    except Exception as e:
        print("FAILED", type(e).__name__, "|".join(errors))
    await nc.close()

asyncio.run(main())
"#;
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello"), &["edge-1"])
        .await;
    let auth = p.nats.auth.as_ref().unwrap().snapshot();
    let seed = auth.role_file("device");
    let ca = auth.tls_ca().unwrap();
    // The prefix as the README gets it: `comfaas auth show`.
    let shown = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(["auth", "show"])
        .arg(&seed)
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    let prefix = shown
        .lines()
        .find_map(|line| line.strip_prefix("inbox prefix: "))
        .unwrap_or_else(|| panic!("no inbox prefix in {shown:?}"))
        .to_owned();
    assert_eq!(
        prefix,
        names::inbox_prefix_of(&comfaas::auth::public_key(&seed).unwrap())
    );
    let script = p.scratch.path().join("nats_req.py");
    std::fs::write(&script, CLIENT).unwrap();
    let run = |prefix: String| {
        let output = std::process::Command::new(comfaas_tests::nats_py())
            .arg(&script)
            .args([p.nats.url(), seed.to_str().unwrap(), ca.to_str().unwrap()])
            .arg(p.subjects.invoke("hello"))
            .arg(prefix)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let refused = run(String::new());
    assert!(
        refused.starts_with("FAILED") && refused.to_lowercase().contains("permissions violation"),
        "{refused}"
    );
    let answered = run(prefix);
    assert!(
        answered.starts_with("REPLY ok ") && answered.contains("hello, py"),
        "{answered}"
    );
}

/// A device uploads inputs and may look one up by name, but may not read
/// the inputs stream by sequence (which would hand it every other
/// tenant's chunks): the request is refused, while the same request from
/// the dispatcher (which reads inputs to place work) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_other_tenants_inputs_by_sequence() {
    let p = serving_hello().await;
    // Another tenant's input, uploaded by the device identity itself.
    let name = p.upload_input(b"another tenant's private input").await;
    assert!(name.starts_with("sha256-"), "{name}");
    let stream = names::object_store_stream(names::INPUTS_BUCKET);
    for api in [
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
    ] {
        let by_sequence = p.device.request(api.clone(), r#"{"seq":1}"#.into()).await;
        assert!(
            by_sequence.is_err(),
            "a device read an input by sequence on {api}: {by_sequence:?}"
        );
        p.nats.wait_violation(&api).await;
    }
    let dispatcher = p.nats.client_as(&Role::Dispatcher).await;
    let answered = dispatcher
        .request(
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            r#"{"seq":1}"#.into(),
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answered.payload).contains("\"message\""),
        "{answered:?}"
    );
}
