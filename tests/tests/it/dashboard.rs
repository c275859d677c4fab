//! `comfaas dashboard`: the page, opened in a real headless Chromium
//! (Debian's `chromium`, driven through its `chromedriver` over plain
//! WebDriver HTTP) against a running platform, shows the node table and the
//! decision an invocation of the test made; the server-sent-events stream
//! streams; bad input is one clear line.
//!
//! Why WebDriver and not `chromium --dump-dom --virtual-time-budget`: the
//! page holds its event stream open, and a virtual-time budget never runs
//! out while a fetch is pending; without one the DOM is dumped before any
//! script ran.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use comfaas::dashboard::{Dashboard, Source};
use comfaas_platform::auth::Role;
use comfaas_schemas::names::headers as h;
use comfaas_tests::{binary, header, Platform, Security, TestNats};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// A plain HTTP/1.1 exchange: status and body. The body is read by its
/// `Content-Length` (chromedriver says `Connection: close` and keeps the
/// connection open), chunks, or to the end; the whole exchange within 60 s.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    body: Option<&str>,
) -> (u16, String) {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = tokio::io::BufReader::new(stream);
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(n) = line.strip_prefix("content-length:") {
                length = Some(n.trim().parse::<usize>().unwrap());
            }
            chunked |= line == "transfer-encoding: chunked";
        }
        let mut raw = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                stream.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                raw.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = length {
            raw.resize(length, 0);
            stream.read_exact(&mut raw).await.unwrap();
        } else {
            stream.read_to_end(&mut raw).await.unwrap();
        }
        (status, String::from_utf8(raw).unwrap())
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {addr}: no answer in 60 s"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: scripts/setup.sh installs Debian's chromium and chromium-driver")
        })
}

/// A headless Chromium session through chromedriver.
struct Browser {
    _driver: tokio::process::Child,
    addr: String,
    session: String,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = tokio::process::Command::new(on_path("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                let (status, body) = http(&addr, "GET", "/status", "localhost", None).await;
                if status == 200 && body.contains("\"ready\":true") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {
                "binary": on_path("chromium"),
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (status, body) = http(
            &addr,
            "POST",
            "/session",
            "localhost",
            Some(&capabilities.to_string()),
        )
        .await;
        assert_eq!(status, 200, "no browser session: {body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap().to_owned();
        Self {
            _driver: driver,
            addr,
            session,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = body.to_string();
        let (status, reply) = http(&self.addr, method, &path, "localhost", Some(&body)).await;
        assert_eq!(status, 200, "{method} {path}: {reply}");
        serde_json::from_str::<Value>(&reply).unwrap()["value"].take()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Browser console entries of level SEVERE: script errors, failed loads.
    async fn severe(&self) -> Vec<String> {
        let logs = self
            .call("POST", "/se/log", json!({ "type": "browser" }))
            .await;
        logs.as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    /// Ends the session, which quits Chromium: chromedriver killed alone
    /// would leave it running. Blocking, as a drop must be (and a panicking
    /// test still cleans up).
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(&self.addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The status line is enough: the session is gone once it came.
            let _ = stream.read(&mut [0u8; 512]);
        }
    }
}

/// A dashboard on a free loopback port, reading as the observer.
async fn dashboard(p: &Platform) -> (SocketAddr, CancellationToken) {
    let options = p.nats.options_for(&Role::Observer);
    let client = options.connect("dashboard test").await.unwrap();
    let source = Source {
        jetstream: options.jetstream(client.clone()),
        client,
        subjects: options.subjects(),
    };
    let dashboard = Dashboard::bind(source, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = dashboard.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(dashboard.run(shutdown.clone()));
    (addr, shutdown)
}

/// The snapshot the dashboard serves once `ready` holds of it (within 20 s).
async fn snapshot_until(addr: SocketAddr, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(
            &addr.to_string(),
            "GET",
            "/snapshot.json",
            "localhost",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let snapshot: Value = serde_json::from_str(&body).unwrap();
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "{what}: {snapshot:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn the_page_shows_the_nodes_and_a_decision_in_a_browser(security: Security) {
    let p = Platform::with_edge_and_cloud_in(security).await;
    let dir = p.function(
        "dash-echo",
        "",
        &[(
            "main.py",
            "import sys\nsys.stdout.write(sys.stdin.read())\n",
        )],
    );
    p.deploy(&dir, &["edge-1", "cloud-1"]).await;
    let (addr, shutdown) = dashboard(&p).await;

    let reply = p.invoke("dash-echo", "ping").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    let invocation = header(&reply, h::INVOCATION_ID);
    // The decision, and a first reading of the events stream (every 2 s).
    let snapshot = snapshot_until(addr, "the decision and the events", |s| {
        let events = &s["events"];
        s["decisions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["invocation"] == invocation.as_str()))
            && !(events["pending"].is_null() && events["error"].is_null())
    })
    .await;
    // The observer reads the events consumer's counts and the dead letters.
    let events = &snapshot["events"];
    assert!(events["error"].is_null(), "{events}");
    assert_eq!(events["pending"], 0, "{events}");
    assert_eq!(events["dead_letters"], 0, "{events}");

    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/")).await;
    let row = "tr[data-decision-function=\"dash-echo\"]";
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser
        .eval(&format!("return document.querySelector('{row}') !== null"))
        .await
        != true
    {
        assert!(
            Instant::now() < deadline,
            "no decision row in the page: {}",
            browser.eval("return document.body.outerHTML").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nodes = browser
        .eval("return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node + ' ' + r.innerText)")
        .await;
    let nodes: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        nodes[0].starts_with("cloud-1 ")
            && nodes[0].contains("alive")
            && nodes[0].contains("dash-echo"),
        "{nodes:?}"
    );
    assert!(
        nodes[1].starts_with("edge-1 ")
            && nodes[1].contains("edge")
            && nodes[1].contains("dash-echo"),
        "{nodes:?}"
    );
    let decision = browser
        .eval(&format!("return document.querySelector('{row}').innerText"))
        .await;
    let decision = decision.as_str().unwrap();
    assert!(decision.contains(&invocation), "{decision}");
    assert!(decision.contains("ms"), "an estimate is shown: {decision}");
    let state = browser
        .eval("return [document.body.dataset.state, document.getElementById('error').hidden, document.querySelector('#chart polyline') !== null]")
        .await;
    assert_eq!(
        state,
        json!(["live", true, true]),
        "live, no error, a chart"
    );
    assert_eq!(browser.severe().await, Vec::<String>::new());
    drop(browser);
    shutdown.cancel();
    p.assert_no_violations();
}

open_and_secure!(the_page_shows_the_nodes_and_a_decision_in_a_browser);

/// Reads `stream` until `count` server-sent events of type `snapshot` came;
/// returns their data.
async fn read_events(stream: &mut tokio::net::TcpStream, count: usize) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut buffer = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events: Vec<Value> = text
            .split("\n\n")
            .filter(|block| block.contains("event: snapshot"))
            .filter_map(|block| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix("data: "))
                    .and_then(|data| serde_json::from_str(data).ok())
            })
            .collect();
        if events.len() >= count {
            return (text, events);
        }
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{count} snapshots did not come: {text}"))
            .unwrap();
        assert!(read > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_streams_snapshots_and_only_to_loopback_names() {
    let p = Platform::with_edge_and_cloud_in(Security::Open).await;
    let (addr, shutdown) = dashboard(&p).await;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (head, events) = read_events(&mut stream, 3).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    // Each a whole snapshot, newer than the one before; the nodes appear.
    let times: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sent_unix_ms"].as_u64())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let last = events.last().unwrap();
    let nodes: Vec<&str> = last["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["cloud-1", "edge-1"], "{last:#}");
    assert!(
        last["rates"].as_array().is_some_and(|r| !r.is_empty()),
        "{last:#}"
    );

    let addr = addr.to_string();
    let (status, page) = http(&addr, "GET", "/", "localhost", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<table id=\"nodes\">"), "{page}");
    let (status, _) = http(&addr, "GET", "/dashboard.js", "127.0.0.1", None).await;
    assert_eq!(status, 200);
    let (status, _) = http(&addr, "GET", "/nope", "localhost", None).await;
    assert_eq!(status, 404);
    // A page elsewhere whose name was rebound to 127.0.0.1 is refused.
    let (status, body) = http(&addr, "GET", "/snapshot.json", "evil.example:8080", None).await;
    assert_eq!(status, 403, "{body}");

    shutdown.cancel();
    // The stream ends with the dashboard.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the event stream ended with the dashboard")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_or_a_bad_address_is_one_clear_line() {
    let nats = TestNats::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let comfaas = |args: &[&str]| {
        std::process::Command::new(binary("comfaas"))
            .args(["--nats-url", nats.url(), "dashboard"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = comfaas(&["--addr", &addr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "comfaas: dashboard: {addr} is already in use (another dashboard?); choose another with --addr"
        )
    );
    let out = comfaas(&["--addr", "localhost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("invalid value 'localhost' for '--addr <ADDR>'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_reads_the_events_consumer_and_a_device_may_not() {
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    let consumer_info = |client: async_nats::Client| async move {
        async_nats::jetstream::new(client)
            .get_stream_no_info(comfaas_schemas::names::EVENTS_STREAM)
            .await
            .unwrap()
            .consumer_info(comfaas_schemas::names::DISPATCH_EVENTS_CONSUMER)
            .await
    };
    let observer = p.nats.client_as(&Role::Observer).await;
    let info = consumer_info(observer).await.unwrap();
    assert_eq!(info.num_pending, 0);
    let refused = consumer_info(p.device.clone()).await;
    assert!(refused.is_err(), "a device read the events consumer");
    let subject = format!(
        "$JS.API.CONSUMER.INFO.{}.{}",
        comfaas_schemas::names::EVENTS_STREAM,
        comfaas_schemas::names::DISPATCH_EVENTS_CONSUMER
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.nats.violations().iter().any(|l| l.contains(&subject)) {
        assert!(
            Instant::now() < deadline,
            "no violation logged for {subject}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `comfaas dev`, asked to stop (SIGINT) when dropped: killed
/// outright, it would leave its nats-server behind.
struct Dev(tokio::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        }
    }
}

/// The lines of a child's output, read to its end by a task of their own
/// (so the child never writes into a closed pipe, even after the test
/// stopped listening).
fn lines_of(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `comfaas dev` with these flags (and the suite's JetStream limit), its
/// stdout and stderr line by line.
fn dev(args: &[&str]) -> (Dev, UnboundedReceiver<String>, UnboundedReceiver<String>) {
    let mut child = tokio::process::Command::new(binary("comfaas"))
        .arg("dev")
        .args(args)
        .args(comfaas_tests::store_limit_args(args))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    (Dev(child), stdout, stderr)
}

impl Dev {
    /// SIGINT, and its exit (within 60 s).
    async fn stop(mut self) {
        if let Some(pid) = self.0.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), self.0.wait())
            .await
            .expect("comfaas dev stops on SIGINT")
            .unwrap();
    }
}

/// Reads `lines` until one contains `wanted` (within 120 s); every line read.
async fn line_with(lines: &mut UnboundedReceiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no line with {wanted:?} in:\n{}", seen.join("\n")))
            .unwrap_or_else(|| panic!("ended without {wanted:?}:\n{}", seen.join("\n")));
        let found = line.contains(wanted);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfaas_dev_serves_the_dashboard_and_a_taken_port_costs_only_the_page() {
    let functions = tempfile::tempdir().unwrap();
    let functions = functions.path().to_str().unwrap();
    let page = format!("127.0.0.1:{}", free_port());
    let nats = free_port().to_string();
    let (first, mut stdout, _stderr) = dev(&[
        "--port",
        &nats,
        "--functions",
        functions,
        "--dashboard-addr",
        &page,
    ]);
    line_with(&mut stdout, &format!("dashboard at http://{page}/")).await;
    line_with(&mut stdout, "comfaas is up").await;
    let addr: SocketAddr = page.parse().unwrap();
    snapshot_until(addr, "dev's nodes", |s| {
        let nodes: Vec<&str> = s["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["node"].as_str()).collect())
            .unwrap_or_default();
        nodes == ["cloud-1", "edge-1"] && s["dispatchers"][0]["dispatcher"] == "dispatch-dev"
    })
    .await;

    // A second dev on another NATS port finds the page's port taken: one
    // warning line, and the platform still comes up.
    let other = free_port().to_string();
    let (second, mut stdout, mut stderr) = dev(&[
        "--port",
        &other,
        "--functions",
        functions,
        "--dashboard-addr",
        &page,
    ]);
    let warned = line_with(&mut stderr, "dashboard:").await;
    assert_eq!(
        warned.last().unwrap(),
        &format!(
            "comfaas: warning: dashboard: {page} is already in use (another dashboard?); \
             choose another with --dashboard-addr, or --no-dashboard"
        )
    );
    let up = line_with(&mut stdout, "comfaas is up").await;
    assert!(!up.iter().any(|l| l.contains("dashboard at")), "{up:?}");
    second.stop().await;
    first.stop().await;
}
