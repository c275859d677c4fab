//! `java`: compiled once with `javac`, run with `java -cp`.

use comfaas_schemas::Runtime;
use tokio::process::Command;

use super::installation::{create_dir, step, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let (javac, java) = job
        .toolchain
        .java
        .clone()
        .ok_or(InstallError::UnsupportedRuntime(
            Runtime::Java,
            "javac and java",
        ))?;
    let class = job
        .entry
        .file_stem()
        .filter(|_| job.entry.extension().is_some_and(|e| e == "java"))
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| InstallError::BadEntry {
            entry: job.manifest.entry.clone(),
            reason: "must be a .java file whose class has a main method".to_owned(),
        })?;
    let classes = job.env_dir.join("classes");
    create_dir(&classes).await?;
    let mut compile = Command::new(javac);
    compile
        .arg("-d")
        .arg(&classes)
        .arg(job.entry)
        .current_dir(job.bundle_dir);
    step("javac", compile, job.toolchain, job.env_dir).await?;
    // Small heaps and one GC thread: functions are short and many.
    Ok(job.installation(
        java,
        vec![
            "-Xshare:auto".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            classes.into(),
            class.into(),
        ],
        Vec::new(),
    ))
}
