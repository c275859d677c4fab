//! `comfaas-bench-objects`: large inputs through the object store, in one run.
//!
//! 1. Upload throughput of a 50 MB file at several chunk sizes (async-nats
//!    waits for each chunk's ack, so chunk size sets upload speed).
//! 2. For 1, 50 and 500 MB inputs: a plain object-store get with async-nats
//!    (read to nowhere) against the input fetch inside an invocation (the
//!    executor's own measurement: object store to its cache file).
//! 3. The executor's resident memory (sampled from /proc) before and during
//!    the 500 MB invocation.
//!
//! 4. Input fetch by chunk size (issue 11): inputs put in 128 KiB, 1 MiB
//!    and 8 MiB chunks (`--chunks`), of 100 and 500 MB (`--sizes`, MB),
//!    fetched by this build's executor and, with `--baseline-exec PATH`,
//!    by another build's (e.g. main's) in the same run. The fetch rate is
//!    the node's own measure (from its first chunk), recovered from the
//!    moving average it reports before and after the invocation.
//!    `--only-fetch` skips sections 1 to 3.
//!
//! 5. Issue 14: `comfaas invoke --input-file` of 100 and 500 MB (the CLI
//!    as a process: hash, upload with a window of acks, invoke the `sink`
//!    function through the dispatcher, whose executor fetches the input)
//!    against a plain TCP copy of the same file on loopback (a listener
//!    writing what it receives to a file, a client sending it: the
//!    original ComFaaS's way), alternating, each with fresh content;
//!    ratio = comfaas ÷ copy (goal ≤ 1.0). Also the same invocation once
//!    more (the input already stored: nothing uploaded) and, in section 1,
//!    the windowed put against async-nats' `put`. `--issue14` runs
//!    sections 1, 2 and 5 only; `--reps N` (default 3) repeats section 5.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-objects`
//! (`-- --only-fetch --baseline-exec /path/to/main/comfaas-exec`)

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectMetadata;
use async_nats::HeaderMap;
use comfaas_schemas::names::{headers as h, INPUTS_BUCKET};
use comfaas_schemas::{decode, NodeLoad};
use comfaas_tests::{header, Platform};
use futures::StreamExt;

const MB: u64 = 1 << 20;

fn write_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let block = comfaas_tests::points((MB / 8) as usize, size);
    for _ in 0..size / MB {
        file.write_all(&block).expect("write");
    }
    file.flush().expect("flush");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn load_of(p: &Platform, node: &str) -> NodeLoad {
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load(node))
        .await
        .expect("subscribe");
    decode(&loads.next().await.expect("load").payload).expect("decode")
}

/// Large inputs: upload, fetch and `comfaas invoke --input-file` against
/// their references.
#[derive(clap::Parser)]
struct Args {
    /// Another build's `comfaas-exec`, whose fetch is measured beside this one's
    #[arg(long)]
    baseline_exec: Option<std::path::PathBuf>,
    /// Chunk sizes of the fetch comparison (`128K`, `1M`, ...)
    #[arg(long, value_delimiter = ',', value_parser = chunk_size, default_value = "128K,1M,8M")]
    chunks: Vec<usize>,
    /// Input sizes of the fetch comparison, MB
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    sizes: Vec<u64>,
    /// Leave out sections 1 to 3
    #[arg(long)]
    only_fetch: bool,
    /// Sections 1, 2 and 5 only (issue 14's targets)
    #[arg(long)]
    issue14: bool,
    /// Repeats of section 5
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// A chunk size: `<n>K` (KiB) or `<n>M` / `<n>` (MiB).
fn chunk_size(text: &str) -> Result<usize, String> {
    let (number, shift) = match text.strip_suffix('K') {
        Some(k) => (k, 10),
        None => (text.trim_end_matches('M'), 20),
    };
    number
        .parse::<usize>()
        .map(|n| n << shift)
        .map_err(|e| format!("chunk size `{text}`: {e}"))
}

/// One executor of the fetch comparison: its node id, binary and process.
struct Node {
    id: String,
    binary: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    process: Option<tokio::process::Child>,
}

impl Node {
    fn start(&mut self, url: &str) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let child = tokio::process::Command::new(&self.binary)
            .args(["--nats-url", url, "--node", &self.id, "--data-dir"])
            .arg(&self.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn executor");
        self.process = Some(child);
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().and_then(|c| c.id()).unwrap_or(0)
    }

    fn clear_cache(&self) {
        for file in std::fs::read_dir(self.data_dir.join("inputs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// The machine's CPU time so far, all cores (`/proc/stat`): busy and in
/// all, in clock ticks. (Not sysinfo's global CPU usage: between two
/// refreshes less than its 200 ms minimum apart, as around a 100 MB get,
/// it gave 46 % in every run where these counters gave 86–94 %.)
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// The share of the machine's CPU (all cores) busy since `then`.
fn busy_since(then: (u64, u64)) -> f64 {
    let now = cpu_jiffies();
    let all = now.1.saturating_sub(then.1);
    if all == 0 {
        return 0.0;
    }
    now.0.saturating_sub(then.0) as f64 / all as f64
}

/// Writes the page cache's dirty pages out (`sync`), so that a timed
/// transfer does not pay for the writeback of the one before it.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// Invokes `sink` on `object` at `node`: seconds, or the error.
async fn timed_invoke(p: &Platform, object: &str, node: &str) -> Result<f64, String> {
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, object);
    headers.insert(h::TIMEOUT, "120s");
    headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
    let started = Instant::now();
    let reply = p
        .device
        .send_request(
            p.subjects.invoke("sink"),
            async_nats::Request::new()
                .headers(headers)
                .timeout(Some(Duration::from_secs(180))),
        )
        .await
        .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    match header(&reply, h::STATUS).as_str() {
        "ok" => Ok(seconds),
        _ => Err(format!(
            "{} {}",
            header(&reply, h::ERROR_CODE),
            header(&reply, h::ERROR)
        )),
    }
}

/// Section 4: the fetch by chunk size, by each executor build.
async fn fetch_by_chunk_size(p: &Platform, args: &Args, sink: &Path) {
    let url = p.nats.url().to_owned();
    let mut nodes = vec![Node {
        id: "after".to_owned(),
        binary: comfaas_tests::binary("comfaas-exec"),
        data_dir: p.scratch.path().join("after"),
        process: None,
    }];
    if let Some(binary) = &args.baseline_exec {
        nodes.insert(
            0,
            Node {
                id: "before".to_owned(),
                binary: binary.clone(),
                data_dir: p.scratch.path().join("before"),
                process: None,
            },
        );
    }
    for node in &mut nodes {
        node.start(&url);
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    p.deploy(sink, &ids).await;
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .expect("store");
    println!("\n### Input fetch by chunk size (issue 11)\n");
    println!("| executor | chunk | input | fetch s | fetch MiB/s | invocation s | executor RSS growth MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &size_mb in &args.sizes {
        let file = p.scratch.path().join(format!("fetch-{size_mb}.bin"));
        write_file(&file, size_mb * MB);
        for &chunk in &args.chunks {
            let name = format!("fetch-{size_mb}-{chunk}");
            let mut source = tokio::fs::File::open(&file).await.expect("open");
            store
                .put(
                    ObjectMetadata {
                        name: name.clone(),
                        chunk_size: Some(chunk),
                        ..Default::default()
                    },
                    &mut source,
                )
                .await
                .expect("put");
            for node in &mut nodes {
                let pid = node.pid();
                let before = rss_kib(pid);
                PEAK.store(before, std::sync::atomic::Ordering::Relaxed);
                let sampling = tokio::spawn(async move {
                    loop {
                        PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                let old_rate = load_of(p, &node.id).await.input_fetch_bytes_per_s;
                settle();
                let first = timed_invoke(p, &name, &node.id).await;
                // The node's own measure of this fetch, from the moving
                // average it reports (weight 0.3 for the newest).
                let new_rate = load_of(p, &node.id).await.input_fetch_bytes_per_s;
                let rate = if old_rate > 0.0 {
                    old_rate + (new_rate - old_rate) / 0.3
                } else {
                    new_rate
                };
                sampling.abort();
                let growth = PEAK
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(before) as f64
                    / 1024.0;
                let chunk_label = if chunk >= 1 << 20 {
                    format!("{} MiB", chunk >> 20)
                } else {
                    format!("{} KiB", chunk >> 10)
                };
                match first {
                    Ok(first) => {
                        let bytes = (size_mb * MB) as f64;
                        println!(
                            "| {} | {chunk_label} | {size_mb} MB | {:.2} | {:.0} | {first:.2} | {growth:.1} |",
                            node.id,
                            bytes / rate.max(1.0),
                            rate / MB as f64
                        );
                    }
                    Err(e) => {
                        println!(
                            "| {} | {chunk_label} | {size_mb} MB | failed: {} | – | – | {growth:.1} |",
                            node.id,
                            e.replace('|', "/")
                        );
                        // A wedged node is started afresh for the next case.
                        if let Some(mut child) = node.process.take() {
                            let _ = child.kill().await;
                        }
                        node.start(&url);
                        p.nats.wait_for_node(&node.id).await;
                        p.deploy(sink, &[node.id.as_str()]).await;
                    }
                }
                node.clear_cache();
            }
            store.delete(&name).await.expect("delete");
        }
        let _ = std::fs::remove_file(&file);
    }
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    // Max payload raised to 16 MB so chunks above the default 1 MB can be
    // measured too.
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "max_payload: 16MB\n").expect("write config");
    let server =
        comfaas_testbed::server::EmbeddedServer::start(comfaas_testbed::server::ServerOptions {
            config_file: Some(config.path().to_path_buf()),
            ..Default::default()
        })
        .await
        .expect("nats-server");
    let p = Platform::on(server).await;
    let _dispatcher = p.dispatch_process().await;
    let executor = p.exec_process("exec-1", &[]);
    let pid = executor.child.id().expect("pid");
    let dir = p.function(
        "sink",
        "",
        &[("run.sh", "#!/bin/sh\ncat > /dev/null\necho ok\n")],
    );
    std::fs::write(dir.join("comfaas.toml"), "name = \"sink\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\ntimeout = \"600s\"\n").expect("manifest");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    p.deploy(&dir, &["exec-1"]).await;

    if args.only_fetch {
        fetch_by_chunk_size(&p, &args, &dir).await;
        return;
    }
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .expect("store");

    println!("\n### Upload of 100 MB by chunk size: async-nats `put` (one ack at a time) and the windowed put (loopback)\n");
    println!("| put | chunk | seconds | MB/s |");
    println!("|---|---:|---:|---:|");
    let fifty = p.scratch.path().join("fifty.bin");
    write_file(&fifty, 100 * MB);
    for (i, chunk) in [128usize << 10, 1 << 20, 4 << 20, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        comfaas_platform::objects::put_windowed(
            &js,
            &comfaas_platform::objects::PutSpec {
                bucket: INPUTS_BUCKET,
                name: &format!("windowed-test-{i}"),
                chunk_size: chunk,
                expect_sha256: None,
            },
            std::fs::File::open(&fifty).expect("open"),
            &|_| {},
        )
        .await
        .expect("windowed put");
        let s = started.elapsed().as_secs_f64();
        println!(
            "| windowed | {} KiB | {s:.3} | {:.0} |",
            chunk >> 10,
            100.0 / s
        );
        store
            .delete(format!("windowed-test-{i}"))
            .await
            .expect("delete");
        let mut file = tokio::fs::File::open(&fifty).await.expect("open");
        let started = Instant::now();
        store
            .put(
                ObjectMetadata {
                    name: format!("chunk-test-{i}"),
                    chunk_size: Some(chunk),
                    ..Default::default()
                },
                &mut file,
            )
            .await
            .expect("put");
        let s = started.elapsed().as_secs_f64();
        println!(
            "| async-nats | {} KiB | {s:.3} | {:.0} |",
            chunk >> 10,
            100.0 / s
        );
        store
            .delete(format!("chunk-test-{i}"))
            .await
            .expect("delete");
    }

    println!("\n### Plain get against the invocation's input fetch\n");
    println!("| input | plain get MB/s | machine CPU busy during it | plain get to a file MB/s | fetch in invocation MB/s | fetch ÷ get | fetch ÷ get to a file | invocation s | executor RSS before MiB | peak during MiB | growth MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [MB, 100 * MB, 500 * MB] {
        let file = p.scratch.path().join(format!("in-{size}.bin"));
        write_file(&file, size);
        let uploaded = comfaas_platform::objects::upload_file(&js, INPUTS_BUCKET, &file)
            .await
            .expect("upload");
        let _ = std::fs::remove_file(&file);
        // Plain get, to nowhere.
        settle();
        let cpu = cpu_jiffies();
        let started = Instant::now();
        let object = store.get(&uploaded.name).await.expect("get");
        // Whole chunks per read, as the executor reads them.
        let mut object = tokio::io::BufReader::with_capacity(1 << 20, object);
        let got = tokio::io::copy_buf(&mut object, &mut tokio::io::sink())
            .await
            .expect("read");
        assert_eq!(got, size);
        let plain = size as f64 / MB as f64 / started.elapsed().as_secs_f64();
        let busy = busy_since(cpu);
        // Plain get into a file: the fetch writes one too.
        settle();
        let started = Instant::now();
        let object = store.get(&uploaded.name).await.expect("get");
        let mut object = tokio::io::BufReader::with_capacity(1 << 20, object);
        let into = p.scratch.path().join("plain-get.bin");
        let mut out = tokio::io::BufWriter::with_capacity(
            1 << 20,
            tokio::fs::File::create(&into).await.expect("create"),
        );
        let got = tokio::io::copy_buf(&mut object, &mut out)
            .await
            .expect("read");
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .expect("flush");
        drop(out);
        let _ = std::fs::remove_file(&into);
        assert_eq!(got, size);
        let plain_file = size as f64 / MB as f64 / started.elapsed().as_secs_f64();
        // The invocation, with the executor's memory sampled meanwhile.
        let before = rss_kib(pid);
        PEAK.store(before, std::sync::atomic::Ordering::Relaxed);
        let sampling = tokio::spawn(async move {
            loop {
                PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut headers = HeaderMap::new();
        headers.insert(h::INPUT_OBJECT, uploaded.name.as_str());
        headers.insert(h::TIMEOUT, "600s");
        settle();
        let started = Instant::now();
        let reply = p.invoke_bytes("sink", Vec::new(), headers).await;
        let invocation_s = started.elapsed().as_secs_f64();
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        sampling.abort();
        PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
        let peak = PEAK.load(std::sync::atomic::Ordering::Relaxed);
        // This fetch's own time, from its reply (the node's reported rate
        // is a moving average over its fetches), from the object's info to
        // its last byte in the cache: what the plain get's time covers.
        let fetch_ms: f64 = header(&reply, h::FETCH_MS).parse().expect("fetch ms");
        let fetch = size as f64 / MB as f64 / (fetch_ms.max(1.0) / 1000.0);
        println!(
            "| {} MB | {plain:.0} | {:.0} % | {plain_file:.0} | {fetch:.0} | {:.2} | {:.2} | {invocation_s:.2} | {:.1} | {:.1} | {:.1} |",
            size / MB,
            busy * 100.0,
            fetch / plain,
            fetch / plain_file,
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0
        );
    }
    invoke_against_tcp_copy(&p, &args).await;
    if !args.issue14 {
        fetch_by_chunk_size(&p, &args, &dir).await;
    }
}

/// Writes a file of `size` bytes whose content no other run had (its
/// first bytes a fresh id), so nothing of it is in the store already.
fn write_fresh_file(path: &Path, size: u64) {
    use std::io::{Seek, Write};
    write_file(path, size);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.seek(std::io::SeekFrom::Start(0)).expect("seek");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    file.write_all(&now.to_le_bytes()).expect("write id");
}

/// The reference: `path` copied over a TCP connection on loopback by a
/// client to a listener that writes it to a file in `into`, as the
/// original ComFaaS moved inputs; seconds from connect to the last byte
/// written.
async fn tcp_copy(path: &Path, into: &Path) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let target = into.join("tcp-copy.bin");
    let source = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let receiver = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut out = std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&target).expect("create"),
            );
            let copied = std::io::copy(&mut stream, &mut out).expect("receive");
            std::io::Write::flush(&mut out).expect("flush");
            drop(out);
            let _ = std::fs::remove_file(&target);
            copied
        });
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let mut file = std::fs::File::open(&source).expect("open");
        let sent = std::io::copy(&mut file, &mut stream).expect("send");
        drop(stream);
        let copied = receiver.join().expect("receiver");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(sent, copied);
        seconds
    })
    .await
    .expect("copy")
}

/// `comfaas invoke sink --input-file <path>` as a process: seconds.
async fn cli_invoke(p: &Platform, path: &Path) -> f64 {
    let started = Instant::now();
    let out = tokio::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(p.cli_args("operator"))
        .args(["invoke", "sink", "--timeout", "600s", "--input-file"])
        .arg(path)
        .output()
        .await
        .expect("comfaas invoke");
    let seconds = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "comfaas invoke: {out:?}");
    seconds
}

/// Section 5 (issue 14): upload + invocation against a TCP copy.
async fn invoke_against_tcp_copy(p: &Platform, args: &Args) {
    println!("\n### Issue 14: `comfaas invoke --input-file` against a TCP copy (median of {} each, alternating)\n", args.reps);
    println!(
        "| input | TCP copy s | comfaas invoke s | ratio | again (already stored) s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .expect("store");
    for size_mb in [100u64, 500] {
        let file = p.scratch.path().join(format!("issue14-{size_mb}.bin"));
        let (mut copies, mut invokes, mut agains) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.reps.max(1) {
            write_fresh_file(&file, size_mb * MB);
            copies.push(tcp_copy(&file, p.scratch.path()).await);
            invokes.push(cli_invoke(p, &file).await);
            agains.push(cli_invoke(p, &file).await);
            // The store is sized to the disk: each repetition's input goes.
            let (hex, _) = comfaas_platform::objects::sha256_of(&file)
                .await
                .expect("hash");
            let _ = store
                .delete(format!(
                    "{}{hex}",
                    comfaas_platform::objects::CONTENT_NAME_PREFIX
                ))
                .await;
        }
        let _ = std::fs::remove_file(&file);
        let (copy, invoke, again) = (median(copies), median(invokes), median(agains));
        println!(
            "| {size_mb} MB | {copy:.3} | {invoke:.3} | {:.2} | {again:.3} | {:.2} |",
            invoke / copy,
            again / copy
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Peak resident memory of the executor seen by the sampler, KiB.
static PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
