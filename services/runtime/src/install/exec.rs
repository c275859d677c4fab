//! `exec`: nothing to install; the entry is any executable in the bundle.

use super::installation::{InstallError, Installation, Job};

pub(super) fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(job.entry)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(InstallError::BadEntry {
            entry: job.manifest.entry.clone(),
            reason: "is not executable (chmod +x it before deploying)".to_owned(),
        });
    }
    Ok(job.installation(job.entry.to_path_buf(), Vec::new(), Vec::new()))
}
