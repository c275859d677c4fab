//! `exec`: nothing to install; the entry is any executable in the bundle.

use comfaas_schemas::Runtime;

use super::installation::{InstallError, Installation, Job};

pub(super) fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let Job {
        manifest,
        bundle_dir,
        entry,
        ..
    } = *job;
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(entry)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(InstallError::BadEntry {
            entry: manifest.entry.clone(),
            reason: "is not executable (chmod +x it before deploying)".to_owned(),
        });
    }
    Ok(Installation {
        runtime: Runtime::Exec,
        bundle_dir: bundle_dir.to_path_buf(),
        program: entry.to_path_buf(),
        args: Vec::new(),
        path: Vec::new(),
    })
}
