//! Handler mode for the compiled runtimes (issue 14): warm C, Java and Rust
//! (`exec`) workers through the dispatcher and a real executor, each keeping
//! its state between calls; a worker that fails a call keeps serving, one
//! that crashes, hangs or breaks the protocol is answered with a clear
//! error and replaced, and one that never says ready fails its install
//! with the reason.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use comfaas_schemas::names::headers as h;
use comfaas_tests::{binary, header, NodeSpec, Platform};

fn json(reply: &async_nats::Message) -> serde_json::Value {
    assert_eq!(header(reply, h::STATUS), "ok", "{:?}", reply.headers);
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

/// The error header of a failed reply with code `code`.
fn error(reply: &async_nats::Message, code: &str) -> String {
    assert_eq!(header(reply, h::ERROR_CODE), code, "{:?}", reply.headers);
    header(reply, h::ERROR).to_owned()
}

async fn one_node() -> Platform {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p
}

/// A handler-mode function of `runtime` with entry `entry` and `files`.
fn handler_function(
    p: &Platform,
    name: &str,
    runtime: &str,
    entry: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    let dir = p.function(name, "", files);
    std::fs::write(
        dir.join("comfaas.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1\"\nruntime = \"{runtime}\"\nentry = \"{entry}\"\n\
             mode = \"handler\"\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
    dir
}

fn make_executable(file: &std::path::Path) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Deploys `dir` and waits for its install to fail; the error an
/// invocation then answers with.
async fn failed_install(p: &Platform, dir: &std::path::Path, name: &str) -> String {
    let deployment = comfaas::deploy::deploy_dir(&p.registry, dir).await.unwrap();
    p.wait_state(
        &deployment,
        &["edge-1"],
        comfaas_schemas::InstallState::Failed,
    )
    .await;
    header(&p.invoke(name, "").await, h::ERROR).to_owned()
}

const C_HANDLER: &str = r#"
#include <comfaas_handler.h>

static int calls;

static int handle(const uint8_t *in, size_t n, comfaas_out *out) {
    calls++;
    char cwd[512];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    printf("call %d goes to the log, not into the protocol\n", calls);
    if (n == 4 && memcmp(in, "fail", 4) == 0) {
        comfaas_printf(out, "bad reading on call %d", calls);
        return 1;
    }
    if (n == 5 && memcmp(in, "crash", 5) == 0) abort();
    if (n == 4 && memcmp(in, "hang", 4) == 0) sleep(60);
    /* Each worker has a folder of its own: its working directory. */
    return comfaas_printf(out, "{\"worker\":\"%s\",\"calls\":%d,\"echo\":\"%.*s\"}", cwd, calls,
                          (int)n, (const char *)in);
}

int main(void) { return comfaas_serve(handle); }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_c_handler_keeps_its_state_and_is_replaced_after_a_crash_or_a_hang() {
    let p = one_node().await;
    let dir = handler_function(&p, "warm-c", "c", "main.c", &[("main.c", C_HANDLER)]);
    p.deploy(&dir, &["edge-1"]).await;
    let first = json(&p.invoke("warm-c", "a").await);
    let second = json(&p.invoke("warm-c", "b").await);
    assert_eq!(
        first["worker"], second["worker"],
        "one warm worker serves both"
    );
    assert_eq!(second["calls"], 2, "its globals kept their values");
    assert_eq!(second["echo"], "b");

    let message = error(&p.invoke("warm-c", "fail").await, "500");
    assert!(
        message.contains("handler returned an error: bad reading on call 3"),
        "{message}"
    );
    let after_fail = json(&p.invoke("warm-c", "c").await);
    assert_eq!(
        after_fail["worker"], first["worker"],
        "an error keeps the worker"
    );
    assert_eq!(after_fail["calls"], 4);

    let message = error(&p.invoke("warm-c", "crash").await, "500");
    // abort(): the signal, or 128 + 6 where the sandbox's init reports it.
    assert!(
        message.contains("killed by signal 6") || message.contains("exited with status 134"),
        "{message}"
    );
    let after_crash = json(&p.invoke("warm-c", "d").await);
    assert_ne!(
        after_crash["worker"], first["worker"],
        "a dead worker is replaced"
    );
    assert_eq!(after_crash["calls"], 1, "by a new process");

    let message = error(&p.invoke("warm-c", "hang").await, "408");
    assert!(message.contains("timeout of 2s"), "{message}");
    let after_hang = json(&p.invoke("warm-c", "e").await);
    assert_ne!(
        after_hang["worker"], after_crash["worker"],
        "a hung worker is killed and replaced"
    );
    assert_eq!(after_hang["calls"], 1);
}

const JAVA_HANDLER: &str = r#"
public class Counter implements comfaas.Handler {
    private int calls;

    public byte[] handle(byte[] input) throws Exception {
        calls++;
        String text = new String(input, "UTF-8");
        System.out.println("call " + calls + " goes to the log");
        if (text.equals("fail")) {
            throw new IllegalStateException("bad reading on call " + calls);
        }
        if (text.equals("exit")) {
            Runtime.getRuntime().halt(7);
        }
        String worker = System.getProperty("user.dir");
        return ("{\"worker\":\"" + worker + "\",\"calls\":" + calls + ",\"echo\":\"" + text + "\"}")
            .getBytes("UTF-8");
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_java_handler_keeps_its_state_and_survives_an_exception() {
    let p = one_node().await;
    let dir = handler_function(
        &p,
        "warm-java",
        "java",
        "Counter.java",
        &[("Counter.java", JAVA_HANDLER)],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let first = json(&p.invoke("warm-java", "a").await);
    let second = json(&p.invoke("warm-java", "b").await);
    assert_eq!(first["worker"], second["worker"]);
    assert_eq!(second["calls"], 2, "one JVM serves both calls");

    let message = error(&p.invoke("warm-java", "fail").await, "500");
    assert!(
        message.contains(
            "handler returned an error: java.lang.IllegalStateException: bad reading on call 3"
        ),
        "{message}"
    );
    assert_eq!(json(&p.invoke("warm-java", "c").await)["calls"], 4);

    let message = error(&p.invoke("warm-java", "exit").await, "500");
    assert!(message.contains("exited with status 7"), "{message}");
    let after_exit = json(&p.invoke("warm-java", "d").await);
    assert_eq!(after_exit["calls"], 1, "a new worker serves the next call");

    // A class that is not a handler fails its install, saying so.
    let dir = handler_function(
        &p,
        "not-a-handler",
        "java",
        "Plain.java",
        &[(
            "Plain.java",
            "public class Plain { public static void main(String[] a) {} }\n",
        )],
    );
    let message = failed_install(&p, &dir, "not-a-handler").await;
    assert!(
        message.contains("Plain does not implement comfaas.Handler"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_rust_handler_in_an_exec_bundle_answers_through_the_full_path() {
    let p = one_node().await;
    let dir = handler_function(&p, "warm-rs", "exec", "handler", &[]);
    // Built by the workspace from sdk/rust (`cargo build --bins`).
    std::fs::copy(binary("comfaas-echo-handler"), dir.join("handler")).unwrap();
    make_executable(&dir.join("handler"));
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p.invoke("warm-rs", "echo me").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(&reply.payload[..], b"echo me");
    assert_eq!(&p.invoke("warm-rs", "calls").await.payload[..], b"2");

    let message = error(&p.invoke("warm-rs", "fail").await, "500");
    assert!(
        message.contains("handler returned an error: asked to fail on call 3"),
        "{message}"
    );
    let message = error(&p.invoke("warm-rs", "panic").await, "500");
    assert!(
        message.contains("handler panicked: asked to panic on call 4"),
        "{message}"
    );
    assert_eq!(
        &p.invoke("warm-rs", "calls").await.payload[..],
        b"5",
        "an error and a panic keep the worker"
    );

    let message = error(&p.invoke("warm-rs", "exit").await, "500");
    assert!(message.contains("exited with status 7"), "{message}");
    assert_eq!(
        &p.invoke("warm-rs", "calls").await.payload[..],
        b"1",
        "a new worker serves the next call"
    );
}

/// A worker in any language, speaking the protocol itself (the README's).
/// What it does depends on its file name.
const RAW_WORKER: &str = r#"#!/usr/bin/python3
import os, struct, sys

name = os.path.basename(sys.argv[0])
out = os.fdopen(os.dup(1), "wb", buffering=0)
inp = os.fdopen(0, "rb", buffering=0)

def frame(status, data):
    os.write(2, b"\x00comfaas-call-end\x00")
    out.write(struct.pack(">BI", status, len(data)) + data)

if name == "gives-up":
    sys.stderr.write("cannot load my model\n")
    sys.exit(4)
if name == "answers-first":
    out.write(struct.pack(">BI", 0, 2) + b"hi")
    sys.exit(0)
out.write(struct.pack(">BI", 2, 5) + b"ready")
while True:
    head = inp.read(4)
    if len(head) < 4:
        sys.exit(0)
    (n,) = struct.unpack(">I", head)
    data = inp.read(n) if n else b""
    if data == b"bad":
        out.write(b"\x09garbage")
    elif data == b"print":
        os.write(1, b"hello from print\n")
    elif data == b"ready":
        out.write(struct.pack(">BI", 2, 5) + b"ready")
    else:
        frame(0, os.getcwd().encode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_workers_that_never_say_ready_are_clear_errors() {
    let p = one_node().await;
    let dir = handler_function(&p, "raw", "exec", "raw", &[("raw", RAW_WORKER)]);
    make_executable(&dir.join("raw"));
    p.deploy(&dir, &["edge-1"]).await;
    let worker = String::from_utf8(p.invoke("raw", "x").await.payload.to_vec()).unwrap();
    assert_eq!(
        String::from_utf8(p.invoke("raw", "y").await.payload.to_vec()).unwrap(),
        worker,
        "warm"
    );
    let mut seen = vec![worker];
    for (input, says) in [
        ("bad", "broke the protocol and was replaced: status byte 9"),
        ("print", "its stdout began \"hello from print"),
        ("ready", "it answered a call with a ready frame"),
    ] {
        let message = error(&p.invoke("raw", input).await, "500");
        assert!(message.contains(says), "{input}: {message}");
        let reply = p.invoke("raw", "next").await;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "{input}: {:?}",
            reply.headers
        );
        let next = String::from_utf8(reply.payload.to_vec()).unwrap();
        assert!(
            !seen.contains(&next),
            "{input}: a new worker serves the next call"
        );
        seen.push(next);
    }

    for (name, says) in [
        (
            "gives-up",
            "it exited before saying ready, exit status: 4): cannot load my model",
        ),
        ("answers-first", "its first frame is an answer, not ready"),
    ] {
        let dir = handler_function(&p, name, "exec", name, &[(name, RAW_WORKER)]);
        make_executable(&dir.join(name));
        let message = failed_install(&p, &dir, name).await;
        assert!(message.contains(says), "{name}: {message}");
    }
}
