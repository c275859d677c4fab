//! The `comfaas` binary as a user runs it: `--json` documents, tables,
//! shell completions, `comfaas new` for every runtime (deployed and
//! invoked), `--data` over the server's max payload, progress on a
//! terminal and none in a pipe, and a reader that closes the pipe early.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::{Command, Output, Stdio};

use comfaas_testbed::server::EmbeddedServer;
use comfaas_tests::{binary, repo_root, NodeSpec, Platform, TestNats};
use serde_json::Value;

fn comfaas(url: &str, args: &[&str]) -> Output {
    Command::new(binary("comfaas"))
        .args(["--nats-url", url])
        .args(args)
        .output()
        .expect("run comfaas")
}

/// Runs `comfaas` and returns its stdout, failing the test on a non-zero exit.
fn ok(url: &str, args: &[&str]) -> String {
    let out = comfaas(url, args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Parses the whole of `text` as one JSON document.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

async fn one_node() -> Platform {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_nodes_invoke_and_deploy_speak_json_and_tables() {
    let p = one_node().await;
    let url = p.nats.url().to_owned();
    let hello = repo_root().join("functions/hello");

    let out = comfaas(&url, &["deploy", hello.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let deployed = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(deployed["name"], "hello");
    assert_eq!(deployed["version"], "1.0.0");
    assert_eq!(deployed["runtime"], "python");
    assert!(deployed["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(deployed["size"].as_u64().unwrap() > 0);
    assert_eq!(deployed["ready"], true);
    assert_eq!(deployed["nodes"][0]["node"], "edge-1");
    assert_eq!(deployed["nodes"][0]["state"], "ready");
    // Piped, no progress is drawn: stderr holds only the unsigned warning.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains("edge-1"),
        "{stderr}"
    );

    let listed = json(&ok(&url, &["ls", "--json"]));
    let functions = listed["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1, "{listed}");
    assert_eq!(functions[0]["name"], "hello");
    assert_eq!(functions[0]["digest"], deployed["digest"]);
    assert_eq!(functions[0]["nodes"][0]["node"], "edge-1");
    assert_eq!(functions[0]["nodes"][0]["state"], "ready");
    assert_eq!(functions[0]["nodes"][0]["current"], true);

    let nodes = json(&ok(&url, &["nodes", "--json"]));
    let node = &nodes["nodes"][0];
    assert_eq!(node["node"], "edge-1", "{nodes}");
    assert_eq!(node["tier"], "edge");
    assert_eq!(node["max_procs"], 4);
    assert_eq!(node["functions_ready"], 1);
    let runtimes: Vec<&str> = node["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(runtimes.contains(&"python"), "{runtimes:?}");

    let reply = json(&ok(
        &url,
        &["invoke", "hello", "--data", r#"{"name":"j"}"#, "--json"],
    ));
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["node"], "edge-1");
    assert_eq!(reply["tier"], "edge");
    assert!(reply["duration_ms"].as_f64().is_some(), "{reply}");
    assert_eq!(reply["headers"]["Comfaas-Node"], "edge-1");
    let output = json(reply["output"].as_str().unwrap());
    assert_eq!(output["greeting"], "hello, j");
    // An error reply: still one document, and a failed exit.
    let out = comfaas(&url, &["invoke", "nope", "--json"]);
    assert!(!out.status.success());
    let failed = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"]["code"], "404");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not deployed"),
        "{failed}"
    );

    // An output that is not UTF-8 comes in base64.
    let bytes = p.function("bytes-out", "", &[]);
    std::fs::write(
        bytes.join("comfaas.toml"),
        "name = \"bytes-out\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\n",
    )
    .unwrap();
    std::fs::write(bytes.join("run.sh"), "#!/bin/sh\nprintf '\\377\\376ok'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bytes.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    p.deploy(&bytes, &["edge-1"]).await;
    let reply = json(&ok(&url, &["invoke", "bytes-out", "--json"]));
    assert!(reply["output"].is_null(), "{reply}");
    assert_eq!(reply["output_base64"], "//5vaw==", "{reply}");
    assert_eq!(reply["output_bytes"], 4);
    ok(&url, &["rm", "bytes-out"]);

    // Tables: a header row, then one row per node or function, every
    // runtime on the node's one line (piped, rows never wrap).
    let table = ok(&url, &["nodes"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NODE") && lines[0].contains("RUNTIMES"));
    assert!(lines[1].starts_with("edge-1 "), "{table}");
    for runtime in &runtimes {
        assert!(lines[1].contains(runtime), "{runtime}: {table}");
    }
    let table = ok(&url, &["ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAME"));
    assert!(
        lines[1].starts_with("hello ") && lines[1].contains("edge-1:ready"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_deploy_shows_each_nodes_install_state_and_invoke_the_bytes_moved() {
    let p = one_node().await;
    let url = p.nats.url().to_owned();
    let hello = repo_root().join("functions/hello-c");
    let input = p.scratch.path().join("input.bin");
    std::fs::write(&input, vec![7u8; 4 << 20]).unwrap();
    // A function whose output goes through the object store.
    let big = p.function("big-out", "", &[]);
    std::fs::write(
        big.join("comfaas.toml"),
        "name = \"big-out\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\n",
    )
    .unwrap();
    std::fs::write(big.join("run.sh"), "#!/bin/sh\nhead -c 3000000 /dev/zero\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(big.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    p.deploy(&big, &["edge-1"]).await;
    let output = p.scratch.path().join("output.bin");
    // `script` gives the command a terminal and records all it drew.
    let typescript = p.scratch.path().join("typescript");
    let command = format!(
        "{comfaas} --nats-url {url} deploy {dir} && {comfaas} --nats-url {url} invoke hello-c --input-file {input} && {comfaas} --nats-url {url} invoke big-out --output-file {output}",
        comfaas = binary("comfaas").display(),
        dir = hello.display(),
        input = input.display(),
        output = output.display(),
    );
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(&typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let drawn = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).into_owned();
    assert!(status.success(), "{drawn}");
    assert!(
        drawn.contains("edge-1: waiting for hello-c 1.0.0")
            || drawn.contains("edge-1: installing hello-c 1.0.0"),
        "{drawn}"
    );
    assert!(drawn.contains("edge-1: ready hello-c 1.0.0"), "{drawn}");
    assert!(drawn.contains("upload ["), "{drawn}");
    assert!(drawn.contains("MiB"), "{drawn}");
    // The report and the output are there too.
    assert!(drawn.contains("deployed hello-c 1.0.0"), "{drawn}");
    assert!(drawn.contains("\"bytes\": 4194304"), "{drawn}");
    assert!(drawn.contains("download ["), "{drawn}");
    assert_eq!(std::fs::metadata(&output).unwrap().len(), 3_000_000);
    // Piped, `--json` names the object and counts its bytes.
    let reply = json(&ok(
        &url,
        &[
            "invoke",
            "big-out",
            "--json",
            "--output-file",
            output.to_str().unwrap(),
        ],
    ));
    assert!(reply["output_object"].as_str().is_some(), "{reply}");
    assert_eq!(reply["output_bytes"], 3_000_000);
    assert_eq!(reply["output_file"], output.to_str().unwrap());
    assert!(reply["output"].is_null(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_the_pipe_early_is_no_error() {
    let nats = TestNats::start().await;
    let url = nats.url();
    // `ls` waits for heartbeats before it prints: the reader is gone by
    // then, so every write meets a closed pipe. `dlq ls` prints with
    // `println!`, like most commands.
    for args in [&["ls"][..], &["ls", "--json"], &["nodes"], &["dlq", "ls"]] {
        let mut child = Command::new(binary("comfaas"))
            .args(["--nats-url", url])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // Through a shell, as a user types it: `head` reads one line and goes.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; for i in 1 2 3; do {} --nats-url {url} completions bash; done | head -n 1",
            binary("comfaas").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_load_in_bash_and_name_every_command() {
    let nats = TestNats::start().await;
    let bash = ok(nats.url(), &["completions", "bash"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bash).unwrap();
    // Sourced by a real bash, it registers a completion for `comfaas`; asked
    // to complete `comfaas dep`, it offers `deploy`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p comfaas && COMP_WORDS=(comfaas dep); COMP_CWORD=1; COMP_LINE='comfaas dep'; COMP_POINT=11; _comfaas comfaas dep comfaas && echo \"${{COMPREPLY[@]}}\"",
            file.path().display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("_comfaas"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().contains("deploy"),
        "{stdout}"
    );
    for (shell, marker) in [("zsh", "#compdef comfaas"), ("fish", "complete -c comfaas")] {
        let script = ok(nats.url(), &["completions", shell]);
        assert!(script.contains(marker), "{shell}");
        for command in ["deploy", "invoke", "nodes", "new", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let out = comfaas(nats.url(), &["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"));
}

/// Every runtime's template, made by the binary, deploys with `comfaas
/// deploy` and answers `comfaas invoke` with the size of its input (and,
/// for MPI, its processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfaas_new_makes_a_function_of_every_runtime_that_deploys_and_answers() {
    let p = one_node().await;
    let url = p.nats.url().to_owned();
    let parent = p.scratch.path().join("new");
    std::fs::create_dir_all(&parent).unwrap();
    let parent_arg = parent.to_str().unwrap();
    for runtime in comfaas_schemas::Runtime::ALL {
        let name = format!("new-{runtime}");
        let said = ok(
            &url,
            &[
                "new",
                &name,
                "--runtime",
                runtime.as_str(),
                "--dir",
                parent_arg,
            ],
        );
        assert!(
            said.contains(&format!("created {runtime} function {name}")),
            "{said}"
        );
        let dir = parent.join(&name);
        // Rust builds its `mpi` crate the first time: minutes on 2 cores.
        let deployed = json(&ok(
            &url,
            &["deploy", dir.to_str().unwrap(), "--json", "--wait", "900"],
        ));
        assert_eq!(
            deployed["nodes"][0]["state"], "ready",
            "{runtime}: {deployed}"
        );
        let reply = json(&ok(&url, &["invoke", &name, "--data", "12345", "--json"]));
        let output = json(reply["output"].as_str().unwrap());
        assert_eq!(output["function"], name.as_str(), "{runtime}: {reply}");
        assert_eq!(output["bytes"], 5, "{runtime}: {reply}");
        if runtime.is_mpi() {
            assert_eq!(output["procs"], 2, "{runtime}: {reply}");
        }
    }
    // Once more: the folder exists, and nothing in it changes.
    let out = comfaas(
        &url,
        &["new", "new-c", "--runtime", "c", "--dir", parent_arg],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    for (args, says) in [
        (
            &["new", "Bad_Name", "--runtime", "c"][..],
            "not a function name",
        ),
        (
            &["new", "x", "--runtime", "cobol"],
            "`cobol` is not a runtime",
        ),
        (&["new", "x"], "--runtime"),
    ] {
        let out = comfaas(&url, args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// `comfaas new --handler` makes a warm handler of each runtime that has
/// handler mode: deployed, it answers with the calls its worker served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfaas_new_handler_makes_warm_handlers_that_deploy_and_answer() {
    let p = one_node().await;
    let url = p.nats.url().to_owned();
    let parent = p.scratch.path().join("new");
    std::fs::create_dir_all(&parent).unwrap();
    let parent_arg = parent.to_str().unwrap();
    for runtime in ["python", "c", "java", "exec"] {
        let name = format!("warm-{runtime}");
        let args = [
            "new",
            &name,
            "--runtime",
            runtime,
            "--dir",
            parent_arg,
            "--handler",
        ];
        ok(&url, &args);
        let dir = parent.join(&name);
        let deployed = json(&ok(
            &url,
            &["deploy", dir.to_str().unwrap(), "--json", "--wait", "300"],
        ));
        assert_eq!(
            deployed["nodes"][0]["state"], "ready",
            "{runtime}: {deployed}"
        );
        for calls in [1, 2] {
            let reply = json(&ok(&url, &["invoke", &name, "--data", "12345", "--json"]));
            let output = json(reply["output"].as_str().unwrap());
            assert_eq!(output["function"], name.as_str(), "{runtime}: {reply}");
            assert_eq!(output["bytes"], 5, "{runtime}: {reply}");
            assert_eq!(
                output["calls"], calls,
                "{runtime}: one warm worker: {reply}"
            );
        }
    }
    let out = comfaas(
        &url,
        &[
            "new",
            "x",
            "--runtime",
            "c-mpi",
            "--handler",
            "--dir",
            parent_arg,
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not for MPI runtime `c-mpi`"), "{stderr}");
}

/// A server that takes messages of at most 256 KiB: `--data` larger than
/// that (or too large once the dispatcher wraps it) is uploaded and passed
/// as `Comfaas-Input-Object`, whether it comes from a file or stdin; a
/// small one stays in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_over_the_servers_max_payload_goes_through_the_object_store() {
    let max_payload = 256 * 1024;
    let server = EmbeddedServer::start(comfaas_tests::server_options(&format!(
        "max_payload: {max_payload}\n"
    )))
    .await
    .unwrap();
    let p = Platform::on(server).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    p.deploy(&repo_root().join("functions/hello-c"), &["edge-1"])
        .await;
    let url = p.nats.url().to_owned();
    // Over the limit, and just under it: the latter fits the CLI's message
    // but not the dispatcher's (an `Invocation` around it).
    for size in [max_payload + 40_000, max_payload - 100] {
        let file = p.scratch.path().join(format!("data-{size}"));
        std::fs::write(&file, vec![b'x'; size]).unwrap();
        let at_file = format!("@{}", file.display());
        let out = comfaas(
            &url,
            &["invoke", "hello-c", "--data", &at_file, "-v", "--json"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{size}: {stderr}");
        assert!(
            stderr.contains(&format!("({size} bytes, uploaded)")),
            "{size}: {stderr}"
        );
        let reply = json(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(json(reply["output"].as_str().unwrap())["bytes"], size);
        // The same bytes from stdin: the object is already there.
        let mut child = Command::new(binary("comfaas"))
            .args([
                "--nats-url",
                &url,
                "invoke",
                "hello-c",
                "--data",
                "@-",
                "-v",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &vec![b'x'; size]).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{size}: {stderr}");
        assert!(
            stderr.contains(&format!("({size} bytes, already stored)")),
            "{size}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("\"bytes\": {size}")),
            "{out:?}"
        );
    }
    let out = comfaas(
        &url,
        &["invoke", "hello-c", "--data", "@/nonexistent/input.bin"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/input.bin"),
        "{out:?}"
    );
    let out = comfaas(&url, &["invoke", "hello-c", "--data", "small", "-v"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sha256-"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"bytes\": 5"));
}
