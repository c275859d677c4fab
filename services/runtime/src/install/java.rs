//! `java`: compiled once with `javac`, run with `java -cp`.

use comfaas_schemas::Runtime;
use tokio::process::Command;

use super::installation::{create_dir, step, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let Job {
        manifest,
        bundle_dir,
        entry,
        env_dir,
        toolchain,
    } = *job;
    let (javac, java) = toolchain
        .java
        .clone()
        .ok_or(InstallError::UnsupportedRuntime(
            Runtime::Java,
            "javac and java",
        ))?;
    let class = entry
        .file_stem()
        .filter(|_| entry.extension().is_some_and(|e| e == "java"))
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| InstallError::BadEntry {
            entry: manifest.entry.clone(),
            reason: "must be a .java file whose class has a main method".to_owned(),
        })?;
    let classes = env_dir.join("classes");
    create_dir(&classes).await?;
    let mut compile = Command::new(javac);
    compile
        .arg("-d")
        .arg(&classes)
        .arg(entry)
        .current_dir(bundle_dir);
    step("javac", compile, toolchain).await?;
    Ok(Installation {
        runtime: Runtime::Java,
        bundle_dir: bundle_dir.to_path_buf(),
        program: java,
        // Small heaps and one GC thread: functions are short and many.
        args: vec![
            "-Xshare:auto".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            classes.into(),
            class.into(),
        ],
        path: Vec::new(),
    })
}
