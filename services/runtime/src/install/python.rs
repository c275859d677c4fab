//! `python` and `python-mpi`: a venv of the function's own, made with uv
//! (or `python3 -m venv` + pip), its requirements (and `mpi4py`)
//! installed into it; handler mode adds the warm worker's loop.

use comfaas_schemas::Runtime;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tokio::process::Command;

use super::installation::{step, InstallError, Installation, Job};
use super::toolchain::VenvPython;

/// Checks every line of a bundle's `requirements.txt` with the rule of the
/// manifest's requirements: no options (`--index-url`, `-r`, `-e`, ...), no
/// URLs, no paths; blank lines and comments are fine.
async fn check_requirements_file(file: &std::path::Path) -> Result<(), InstallError> {
    let text = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| InstallError::Requirement {
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
    for (number, line) in text.lines().enumerate() {
        // pip joins a line ending in `\` with the next: refuse rather than
        // check a line pip would not see.
        let content = line.split(" #").next().unwrap_or_default().trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let refused = if content.ends_with('\\') {
            Err("continued lines are not allowed".to_owned())
        } else {
            comfaas_schemas::check_requirement(content).map_err(|e| e.0)
        };
        if let Err(reason) = refused {
            return Err(InstallError::Requirement {
                line: number + 1,
                reason,
            });
        }
    }
    Ok(())
}

/// Writes a venv of `interpreter` at `env_dir`, as `uv venv` lays it out
/// without its activation scripts (runs start `bin/python` directly):
/// `pyvenv.cfg`, `bin/python` (and `python3`, `python3.X`) linking to the
/// interpreter, an empty `lib/python3.X/site-packages`, and `lib64` for
/// distributions whose platform libraries go there. A few file writes
/// instead of a process that queries the interpreter again: on a busy host
/// `uv venv` took 60 to 190 ms of a cold deploy.
async fn write_venv(interpreter: &VenvPython, env_dir: &Path) -> Result<(), InstallError> {
    let failed = |what: &str, e: std::io::Error| InstallError::Step {
        step: "venv".to_owned(),
        detail: format!("{what}: {e}"),
    };
    let short = &interpreter.short_version;
    let bin = env_dir.join("bin");
    let site = env_dir
        .join("lib")
        .join(format!("python{short}"))
        .join("site-packages");
    for dir in [&bin, &site] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| failed(&format!("create {}", dir.display()), e))?;
    }
    let home = interpreter.executable.parent().unwrap_or(Path::new("/"));
    let config = format!(
        "home = {}\nimplementation = CPython\nversion_info = {}\ninclude-system-site-packages = false\n",
        home.display(),
        interpreter.version
    );
    tokio::fs::write(env_dir.join("pyvenv.cfg"), config)
        .await
        .map_err(|e| failed("write pyvenv.cfg", e))?;
    let links = [
        (bin.join("python"), interpreter.executable.clone()),
        (bin.join("python3"), PathBuf::from("python")),
        (bin.join(format!("python{short}")), PathBuf::from("python")),
        (env_dir.join("lib64"), PathBuf::from("lib")),
    ];
    for (link, target) in links {
        tokio::fs::symlink(&target, &link)
            .await
            .map_err(|e| failed(&format!("link {}", link.display()), e))?;
    }
    Ok(())
}

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let python = job.env_dir.join("bin").join("python");
    let mut requirements: Vec<OsString> = job
        .manifest
        .requirements
        .iter()
        .map(OsString::from)
        .collect();
    let requirements_file = job.bundle_dir.join("requirements.txt");
    if requirements.is_empty() && requirements_file.is_file() {
        check_requirements_file(&requirements_file).await?;
        requirements = vec!["-r".into(), requirements_file.into_os_string()];
    }
    if job.manifest.runtime == Runtime::PythonMpi {
        requirements.push("mpi4py".into());
    }
    let mut sources: Vec<OsString> = Vec::new();
    for dir in &job.toolchain.find_links {
        sources.push("--find-links".into());
        sources.push(dir.clone().into_os_string());
    }
    if job.toolchain.no_index {
        sources.push("--no-index".into());
    }
    match &job.toolchain.uv {
        Some(uv) => {
            if let Some(interpreter) = &job.toolchain.venv_python {
                let started = std::time::Instant::now();
                let written = write_venv(interpreter, job.env_dir).await;
                job.steps.record("venv", started);
                written?;
            } else {
                let mut venv = Command::new(uv);
                // Not the executor's folder: uv looks for configuration there.
                venv.current_dir(job.bundle_dir)
                    .arg("venv")
                    .arg("--quiet")
                    .arg("--python")
                    .arg(&job.toolchain.python)
                    .arg(job.env_dir);
                step("uv venv", venv, job).await?;
            }
            if !requirements.is_empty() {
                let mut pip = Command::new(uv);
                pip.current_dir(job.bundle_dir)
                    .args(["pip", "install", "--quiet", "--python"])
                    .arg(&python)
                    .args(&sources)
                    .args(&requirements);
                step("uv pip install", pip, job).await?;
            }
        }
        None => {
            let mut venv = Command::new(&job.toolchain.python);
            venv.current_dir(job.bundle_dir)
                .args(["-m", "venv"])
                .arg(job.env_dir);
            step("python3 -m venv", venv, job).await?;
            if !requirements.is_empty() {
                let mut pip = Command::new(job.env_dir.join("bin").join("pip"));
                pip.current_dir(job.bundle_dir)
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(&sources)
                    .args(&requirements);
                step("pip install", pip, job).await?;
            }
        }
    }
    // -s: no user site-packages; -E: ignore PYTHON* variables; -B: do not
    // write bytecode into the shared bundle.
    let mut args: Vec<OsString> = vec!["-s".into(), "-E".into(), "-B".into()];
    if job.manifest.mode == comfaas_schemas::Mode::Handler {
        let worker = job.env_dir.join(crate::handler::WORKER_FILE);
        tokio::fs::write(&worker, crate::handler::WORKER_SOURCE)
            .await
            .map_err(|e| InstallError::Step {
                step: "write the handler worker".to_owned(),
                detail: e.to_string(),
            })?;
        args.push(worker.into());
    }
    args.push(job.entry.into());
    Ok(job.installation(python, args, vec![job.env_dir.join("bin")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_requirements_file_may_name_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("requirements.txt");
        let check = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let file = file.clone();
            async move {
                check_requirements_file(&file)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        assert!(
            check("# tools\nnumpy==1.26  # pinned\n\nrequests[socks]>=2\n")
                .await
                .is_ok()
        );
        for (text, says) in [
            ("numpy\n--index-url http://evil/simple\n", "line 2"),
            ("--extra-index-url=http://evil\n", "options are not allowed"),
            ("-i http://evil\n", "options"),
            ("-f http://evil/wheels\n", "options"),
            ("--trusted-host evil\n", "options"),
            ("-r ../../other.txt\n", "options"),
            ("-e git+https://evil/x\n", "options"),
            ("https://evil/x.whl\n", "URLs"),
            ("x @ file:///etc/passwd\n", "URLs"),
            ("numpy \\\n--index-url http://evil\n", "continued lines"),
        ] {
            let refused = check(text).await.unwrap_err();
            assert!(refused.contains(says), "{text:?}: {refused}");
            assert!(refused.starts_with("requirements.txt line"), "{refused}");
        }
    }
}

#[cfg(test)]
mod venv_tests {
    use super::*;

    #[tokio::test]
    async fn a_written_venv_is_one_python_recognises() {
        let interpreter = VenvPython::detect(Path::new("/usr/bin/python3")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("env");
        write_venv(&interpreter, &env).await.unwrap();
        let output = std::process::Command::new(env.join("bin").join("python"))
            .args([
                "-s",
                "-E",
                "-c",
                "import sys, site; print(sys.prefix); print(sys.base_prefix); \
                 print(site.getsitepackages()[0])",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(Path::new(lines[0]), env, "the venv is the prefix");
        assert_ne!(lines[1], lines[0], "the system's is the base");
        assert_eq!(
            Path::new(lines[2]),
            env.join(format!(
                "lib/python{}/site-packages",
                interpreter.short_version
            ))
        );
        for name in ["python3", &format!("python{}", interpreter.short_version)] {
            assert!(env.join("bin").join(name).exists(), "{name}");
        }
        // Where a venv cannot be written, the step says what failed.
        let taken = dir.path().join("file");
        std::fs::write(&taken, "").unwrap();
        let refused = write_venv(&interpreter, &taken).await.unwrap_err();
        assert!(
            refused.to_string().starts_with("venv failed: create "),
            "{refused}"
        );
    }
}
