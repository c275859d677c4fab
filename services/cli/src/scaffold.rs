//! `comfaas new NAME --runtime R`: a function folder that deploys and
//! answers as it is, one template per runtime, in the shape of the
//! examples under `functions/`.
//!
//! Every template answers `{"function": NAME, "bytes": <input length>}`
//! (MPI ones add `"procs"`, the processes of the job; handler-mode ones,
//! made with `--handler`, add `"calls"`, the calls their warm worker has
//! served), so a user sees at once that input reached the code and output
//! came back.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use comfaas_schemas::{Manifest, Runtime, MANIFEST_FILE};

/// The lock file of the `functions/pi-mpi-rs` example: a Rust function's
/// template depends on the same `mpi` crate, so it ships the same locked
/// versions (executors build with `--locked`, and offline when told to).
const RUST_MPI_LOCK: &str = include_str!("../../../functions/pi-mpi-rs/Cargo.lock");

/// The root package of [`RUST_MPI_LOCK`], renamed for each new function.
const RUST_MPI_LOCK_ROOT: &str = "[[package]]\nname = \"pi-mpi-rs\"\nversion = \"1.0.0\"\n";

/// Creates the folder `parent/name` holding a function `name` of
/// `runtime`: its `comfaas.toml` and entry (and `Cargo.toml`/`Cargo.lock`
/// for `rust-mpi`); with `handler`, a warm handler (runtimes python, c,
/// java and exec). Refuses a name that is not a function name, handler
/// mode for an MPI runtime and a folder that already exists. Returns the
/// folder.
pub fn create(
    parent: &Path,
    name: &str,
    runtime: Runtime,
    handler: bool,
) -> anyhow::Result<PathBuf> {
    comfaas_schemas::validate_function_name(name)?;
    if handler && runtime.is_mpi() {
        anyhow::bail!(
            "--handler is not for MPI runtime `{runtime}`: an MPI job is one `mpirun` per \
             invocation (handler mode is for python, c, java and exec)"
        );
    }
    let dir = parent.join(name);
    if dir.symlink_metadata().is_ok() {
        anyhow::bail!(
            "{} already exists: choose another name or remove it",
            dir.display()
        );
    }
    let files = if handler {
        handler_files(name, runtime)
    } else {
        files(name, runtime)?
    };
    // Checked before anything is written: a template must pass what
    // `deploy` checks.
    let manifest = files
        .iter()
        .find(|(path, _, _)| *path == MANIFEST_FILE)
        .map(|(_, text, _)| text.as_str())
        .unwrap_or_default();
    Manifest::from_toml(manifest).context("the template's manifest is invalid")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (path, text, executable) in &files {
        let file = dir.join(path);
        if let Some(folder) = file.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", file.display()))?;
        }
    }
    Ok(dir)
}

/// The files of a new function: (path in the folder, text, executable).
fn files(name: &str, runtime: Runtime) -> anyhow::Result<Vec<(&'static str, String, bool)>> {
    let (entry, code, extra): (&str, String, &str) = match runtime {
        Runtime::Python => ("main.py", python(name), "timeout = \"10s\"\n"),
        Runtime::PythonMpi => (
            "main.py",
            python_mpi(name),
            "timeout = \"60s\"\n# MPI processes: a count, or a range such as \"1-16\" fitted to each node.\nprocs = 2\n",
        ),
        Runtime::C => ("main.c", c(name), "timeout = \"10s\"\n"),
        Runtime::CMpi => (
            "main.c",
            c_mpi(name),
            "timeout = \"60s\"\n# MPI processes: a count, or a range such as \"1-16\" fitted to each node.\nprocs = 2\n",
        ),
        Runtime::RustMpi => (
            "src/main.rs",
            rust_mpi(name),
            "timeout = \"60s\"\n# MPI processes: a count, or a range such as \"1-16\" fitted to each node.\nprocs = 2\n",
        ),
        Runtime::Java => ("Main.java", java(name), "timeout = \"20s\"\n"),
        Runtime::Exec => ("run.sh", exec(name), "timeout = \"10s\"\n"),
    };
    let manifest = format!(
        "# The manifest of a comfaas function; deploy it with `comfaas deploy {name}`.\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         runtime = \"{runtime}\"\n\
         entry = \"{entry}\"\n\
         description = \"A new {runtime} function\"\n\
         {extra}"
    );
    let mut files = vec![
        (MANIFEST_FILE, manifest, false),
        (
            match runtime {
                Runtime::Python | Runtime::PythonMpi => "main.py",
                Runtime::C | Runtime::CMpi => "main.c",
                Runtime::RustMpi => "src/main.rs",
                Runtime::Java => "Main.java",
                Runtime::Exec => "run.sh",
            },
            code,
            runtime == Runtime::Exec,
        ),
    ];
    if runtime == Runtime::RustMpi {
        files.push(("Cargo.toml", cargo_toml(name), false));
        files.push(("Cargo.lock", cargo_lock(name)?, false));
    }
    Ok(files)
}

/// The files of a new handler-mode function (`runtime` is not MPI).
fn handler_files(name: &str, runtime: Runtime) -> Vec<(&'static str, String, bool)> {
    let (entry, code) = match runtime {
        Runtime::C => ("main.c", c_handler(name)),
        Runtime::Java => ("Main.java", java_handler(name)),
        Runtime::Exec => ("handler", exec_handler(name)),
        _ => ("main.py", python_handler(name)),
    };
    let manifest = format!(
        "# The manifest of a comfaas function; deploy it with `comfaas deploy {name}`.\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         runtime = \"{runtime}\"\n\
         entry = \"{entry}\"\n\
         description = \"A new {runtime} handler\"\n\
         timeout = \"10s\"\n\
         # Warm workers: one process per worker serves call after call.\n\
         mode = \"handler\"\n\
         workers = 1\n"
    );
    vec![
        (MANIFEST_FILE, manifest, false),
        (entry, code, runtime == Runtime::Exec),
    ]
}

fn python_handler(name: &str) -> String {
    format!(
        r#""""{name}: a warm handler. The module is loaded once per worker; each
invocation calls handle(data) with the input bytes. print() goes to the log."""
import json

CALLS = 0


def handle(data: bytes):
    global CALLS
    CALLS += 1
    return json.dumps({{"function": "{name}", "bytes": len(data), "calls": CALLS}})
"#
    )
}

fn c_handler(name: &str) -> String {
    format!(
        r#"/* {name}: a warm handler. One process serves many calls, so globals
 * keep their values; printf goes to the log. Return non-zero to fail a
 * call, with the message in `out`. */
#include <comfaas_handler.h>

static int calls;

static int handle(const uint8_t *in, size_t n, comfaas_out *out) {{
    (void)in;
    calls++;
    return comfaas_printf(out, "{{\"function\": \"{name}\", \"bytes\": %zu, \"calls\": %d}}", n,
                          calls);
}}

int main(void) {{ return comfaas_serve(handle); }}
"#
    )
}

fn java_handler(name: &str) -> String {
    format!(
        r#"// {name}: a warm handler. One JVM serves many calls, so fields keep
// their values; System.out goes to the log. Throw to fail a call.
public class Main implements comfaas.Handler {{
    private int calls;

    public byte[] handle(byte[] input) throws Exception {{
        calls++;
        String out = "{{\"function\": \"{name}\", \"bytes\": " + input.length + ", \"calls\": " + calls + "}}";
        return out.getBytes("UTF-8");
    }}
}}
"#
    )
}

fn exec_handler(name: &str) -> String {
    format!(
        r#"#!/usr/bin/python3
"""{name}: a warm handler in any language, speaking handler mode's protocol
itself (see the README). A compiled one is the same loop: the runtime's C
header and the Rust crate comfaas-handler do it for you."""
import json
import os
import struct
import sys

CALL_END = b"\x00comfaas-call-end\x00"


def read_exact(stream, n):
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def main():
    proto_in = os.fdopen(0, "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # prints go to the log: stdout carries the protocol
    sys.stdout = sys.stderr
    proto_out.write(struct.pack(">BI", 2, 5) + b"ready")
    calls = 0
    while True:
        header = read_exact(proto_in, 4)
        if header is None:
            return 0
        (n,) = struct.unpack(">I", header)
        data = read_exact(proto_in, n) if n else b""
        if data is None:
            return 0
        calls += 1
        out = json.dumps({{"function": "{name}", "bytes": len(data), "calls": calls}}).encode()
        sys.stderr.flush()
        os.write(2, CALL_END)
        proto_out.write(struct.pack(">BI", 0, len(out)) + out)


if __name__ == "__main__":
    sys.exit(main())
"#
    )
}

fn python(name: &str) -> String {
    format!(
        r#""""{name}: reads its input on stdin, writes its output on stdout."""
import json
import sys


def main() -> int:
    data = sys.stdin.buffer.read()
    json.dump({{"function": "{name}", "bytes": len(data)}}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#
    )
}

fn python_mpi(name: &str) -> String {
    format!(
        r#""""{name}: an MPI job (mpi4py). Every rank can read the input file named
in COMFAAS_INPUT_FILE; rank 0 writes the output on stdout."""
import json
import os
import sys

from mpi4py import MPI


def main() -> int:
    comm = MPI.COMM_WORLD
    path = os.environ.get("COMFAAS_INPUT_FILE", "")
    size = os.path.getsize(path) if path and os.path.exists(path) else 0
    procs = comm.reduce(1, op=MPI.SUM, root=0)
    if comm.Get_rank() == 0:
        print(json.dumps({{"function": "{name}", "bytes": size, "procs": procs}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#
    )
}

fn c(name: &str) -> String {
    format!(
        r#"/* {name}: reads its input on stdin, writes its output on stdout. */
#include <stdio.h>

int main(void) {{
    char buf[4096];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    printf("{{\"function\": \"{name}\", \"bytes\": %zu}}\n", total);
    return 0;
}}
"#
    )
}

fn c_mpi(name: &str) -> String {
    format!(
        r#"/* {name}: an MPI job. Every rank can read the input file named in
 * COMFAAS_INPUT_FILE; rank 0 writes the output on stdout. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {{
    MPI_Init(&argc, &argv);
    int rank, one = 1, procs = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *path = getenv("COMFAAS_INPUT_FILE");
    FILE *f = path ? fopen(path, "rb") : NULL;
    long bytes = 0;
    if (f && fseek(f, 0, SEEK_END) == 0) bytes = ftell(f);
    if (f) fclose(f);
    MPI_Reduce(&one, &procs, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("{{\"function\": \"{name}\", \"bytes\": %ld, \"procs\": %d}}\n", bytes, procs);
    MPI_Finalize();
    return 0;
}}
"#
    )
}

fn rust_mpi(name: &str) -> String {
    format!(
        r#"//! {name}: an MPI job. Every rank can read the input file named in
//! `COMFAAS_INPUT_FILE`; rank 0 writes the output on stdout.

use std::process::ExitCode;

use mpi::collective::SystemOperation;
use mpi::traits::*;

fn main() -> ExitCode {{
    let Some(universe) = mpi::initialize() else {{
        eprintln!("MPI could not be initialised");
        return ExitCode::from(2);
    }};
    let world = universe.world();
    let path = std::env::var("COMFAAS_INPUT_FILE").unwrap_or_default();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let root = world.process_at_rank(0);
    if world.rank() == 0 {{
        let mut procs = 0i32;
        root.reduce_into_root(&1i32, &mut procs, SystemOperation::sum());
        println!("{{{{\"function\": \"{name}\", \"bytes\": {{bytes}}, \"procs\": {{procs}}}}}}");
    }} else {{
        root.reduce_into(&1i32, SystemOperation::sum());
    }}
    ExitCode::SUCCESS
}}
"#
    )
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# The executor builds this binary, named as the function.
[[bin]]
name = "{name}"
path = "src/main.rs"

[dependencies]
mpi = {{ version = "0.8", default-features = false }}

[profile.release]
opt-level = 3
"#
    )
}

/// [`RUST_MPI_LOCK`] with its root package renamed `name`, kept in the
/// order cargo writes (by name), so a `--locked` build accepts it.
fn cargo_lock(name: &str) -> anyhow::Result<String> {
    let (head, packages) = RUST_MPI_LOCK
        .split_once("\n[[package]]")
        .context("the template's Cargo.lock has no packages")?;
    let mut blocks: Vec<String> = packages
        .split("\n[[package]]")
        .map(|b| format!("[[package]]{}", b.trim_end()))
        .collect();
    let root = blocks
        .iter()
        .position(|b| b.starts_with(RUST_MPI_LOCK_ROOT))
        .context("the template's Cargo.lock has no root package")?;
    let renamed = blocks[root].replacen(
        RUST_MPI_LOCK_ROOT,
        &format!("[[package]]\nname = \"{name}\"\nversion = \"0.1.0\"\n"),
        1,
    );
    blocks.remove(root);
    if blocks.iter().any(|b| block_name(b) == name) {
        anyhow::bail!("a rust-mpi function cannot be named `{name}`: a crate it depends on is");
    }
    let at = blocks
        .iter()
        .position(|b| block_name(b) > name)
        .unwrap_or(blocks.len());
    blocks.insert(at, renamed);
    Ok(format!("{}\n\n{}\n", head.trim_end(), blocks.join("\n\n")))
}

fn block_name(block: &str) -> &str {
    block
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_default()
}

fn java(name: &str) -> String {
    format!(
        r#"// {name}: reads its input on stdin, writes its output on stdout.
public class Main {{
    public static void main(String[] args) throws Exception {{
        byte[] input = System.in.readAllBytes();
        System.out.println("{{\"function\": \"{name}\", \"bytes\": " + input.length + "}}");
    }}
}}
"#
    )
}

fn exec(name: &str) -> String {
    format!(
        r#"#!/bin/sh
# {name}: any executable; reads its input on stdin, writes its output on stdout.
bytes=$(wc -c | tr -d ' ')
printf '{{"function": "{name}", "bytes": %s}}\n' "$bytes"
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn the_rust_lock_keeps_cargos_order_and_renames_only_the_root() {
        let lock = cargo_lock("aaa-fn").unwrap();
        assert!(!lock.contains("pi-mpi-rs"), "{lock}");
        let names: Vec<&str> = lock.split("[[package]]").skip(1).map(block_name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(names.first(), Some(&"aaa-fn"));
        assert_eq!(
            lock.matches("[[package]]").count(),
            RUST_MPI_LOCK.matches("[[package]]").count()
        );
        // The same text as the original when nothing moves.
        assert_eq!(
            cargo_lock("pi-mpi-rs").unwrap(),
            RUST_MPI_LOCK.replace(
                "name = \"pi-mpi-rs\"\nversion = \"1.0.0\"",
                "name = \"pi-mpi-rs\"\nversion = \"0.1.0\""
            )
        );
        assert!(cargo_lock("mpi").unwrap_err().to_string().contains("`mpi`"));
    }

    #[test]
    fn a_bad_name_or_an_existing_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["Bad", "a.b", "", "-x", "x/y"] {
            let e = create(dir.path(), bad, Runtime::Python, false).unwrap_err();
            assert!(e.to_string().contains("not a function name"), "{bad}: {e}");
        }
        create(dir.path(), "taken", Runtime::C, false).unwrap();
        let e = create(dir.path(), "taken", Runtime::Python, false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        // What was there is untouched.
        assert!(dir.path().join("taken/main.c").is_file());
        assert!(!dir.path().join("taken/main.py").exists());
    }

    #[test]
    fn every_runtime_has_a_template_whose_manifest_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        for runtime in Runtime::ALL {
            let name = format!("t-{runtime}");
            let folder = create(dir.path(), &name, runtime, false).unwrap();
            let manifest = crate::deploy::read_manifest(&folder).unwrap();
            assert_eq!(manifest.name, name);
            assert_eq!(manifest.runtime, runtime);
            assert!(folder.join(&manifest.entry).is_file(), "{runtime}");
        }
    }

    #[test]
    fn handler_templates_are_warm_and_mpi_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for runtime in Runtime::ALL {
            let name = format!("h-{runtime}");
            let made = create(dir.path(), &name, runtime, true);
            if runtime.is_mpi() {
                let e = made.unwrap_err().to_string();
                assert!(e.contains("not for MPI runtime"), "{runtime}: {e}");
                assert!(!dir.path().join(&name).exists());
                continue;
            }
            let folder = made.unwrap();
            let manifest = crate::deploy::read_manifest(&folder).unwrap();
            assert_eq!(manifest.mode, comfaas_schemas::Mode::Handler, "{runtime}");
            assert!(folder.join(&manifest.entry).is_file(), "{runtime}");
        }
    }
}
