//! `java`: compiled once with `javac` together with handler mode's helper
//! (`comfaas.Handler`), run with `java -cp`; in handler mode the helper's
//! `main` serves the entry class.

use comfaas_schemas::{Mode, Runtime};
use tokio::process::Command;

use super::installation::{create_dir, step, write_file, InstallError, Installation, Job};

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
            reason: "must be a .java file whose class has a main method (or implements \
                     comfaas.Handler, in handler mode)"
                .to_owned(),
        })?;
    let classes = job.env_dir.join("classes");
    create_dir(&classes).await?;
    // Handler mode's helper, compiled with every bundle.
    let helper = job.env_dir.join("sdk").join(crate::sdk::JAVA_HANDLER_FILE);
    if let Some(dir) = helper.parent() {
        create_dir(dir).await?;
    }
    write_file(&helper, crate::sdk::JAVA_HANDLER).await?;
    let mut compile = Command::new(javac);
    compile
        .arg("-d")
        .arg(&classes)
        .arg(job.entry)
        .arg(&helper)
        .current_dir(job.bundle_dir);
    step("javac", compile, job).await?;
    let mut args: Vec<std::ffi::OsString> = vec!["-Xshare:auto".into(), "-XX:+UseSerialGC".into()];
    if job.manifest.mode == Mode::Handler {
        // A warm worker lives long: the optimising compiler pays off.
        args.extend([
            "-cp".into(),
            classes.into(),
            crate::sdk::JAVA_HANDLER_CLASS.into(),
        ]);
    } else {
        // Small heaps and one GC thread: functions are short and many.
        args.extend([
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            classes.into(),
        ]);
    }
    args.push(class.into());
    Ok(job.installation(java, args, Vec::new()))
}
