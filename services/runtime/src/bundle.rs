//! Bundles: a function folder as a deterministic gzip'd tar, named by its
//! SHA-256 so that the same content is stored and installed once.

use std::io::Read;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

/// Largest total size of the files in a bundle once unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 256 << 20;
/// Most entries in a bundle.
const MAX_ENTRIES: usize = 10_000;
/// Folders never packed: build output and local environments.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "target",
    "node_modules",
];

/// A packed function folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The gzip'd tar.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

/// A bundle that cannot be packed or is refused on unpacking.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing files failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An entry would land outside the bundle root.
    #[error("bundle entry `{0}` escapes the bundle root")]
    EscapingPath(String),
    /// Links, devices and other special files are not allowed.
    #[error(
        "bundle entry `{0}` is not a regular file or folder (links and special files are refused)"
    )]
    SpecialFile(String),
    /// Over a size or count limit.
    #[error("bundle is too large: {0}")]
    TooLarge(String),
    /// The manifest's entry point is not a file the bundle would hold.
    #[error("entry `{entry}` (comfaas.toml) {why}")]
    MissingEntry {
        /// The entry as the manifest writes it.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The bytes do not hash to the expected digest.
    #[error("bundle digest is {actual}, expected {expected}")]
    DigestMismatch {
        /// Announced.
        expected: String,
        /// Computed.
        actual: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Packs `dir` into a bundle. Entries are sorted and timestamps and owners
/// zeroed, so the same files always give the same digest. Symbolic links
/// are refused rather than followed.
pub fn pack(dir: &Path) -> Result<Bundle, BundleError> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let walker = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| {
            !(e.file_type().is_dir()
                && SKIPPED_DIRS.contains(&e.file_name().to_string_lossy().as_ref()))
        });
    let mut total = 0u64;
    for entry in walker {
        let entry = entry.map_err(|e| BundleError::Io {
            context: format!("read {}", dir.display()),
            source: e.into(),
        })?;
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|_| BundleError::EscapingPath(entry.path().display().to_string()))?;
        let name = relative.to_string_lossy().into_owned();
        let file_type = entry.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &name, std::io::empty())
                .map_err(io(format!("pack {name}")))?;
        } else if file_type.is_file() {
            let data = std::fs::read(entry.path()).map_err(io(format!("read {name}")))?;
            total += data.len() as u64;
            if total > MAX_UNPACKED_BYTES {
                return Err(BundleError::TooLarge(format!(
                    "files exceed {MAX_UNPACKED_BYTES} bytes"
                )));
            }
            let executable = is_executable(entry.path());
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, &name, data.as_slice())
                .map_err(io(format!("pack {name}")))?;
        } else {
            return Err(BundleError::SpecialFile(name));
        }
    }
    let bytes = builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(io("finish bundle"))?;
    let digest = digest_of(&bytes);
    Ok(Bundle { bytes, digest })
}

/// Checks, before anything is packed or uploaded, that `entry` (relative
/// to the function folder `dir`, as the manifest validated it) is a
/// regular file that [`pack`] puts in the bundle: not missing, not a
/// folder or link, not under a folder never packed (`target/`, `.venv/`,
/// ...). Otherwise every node would fail the install, later and less clearly.
pub fn check_entry(dir: &Path, entry: &str) -> Result<(), BundleError> {
    let refuse = |why: String| {
        Err(BundleError::MissingEntry {
            entry: entry.to_owned(),
            why,
        })
    };
    let relative = Path::new(entry);
    if let Some(skipped) = relative
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .find_map(|c| match c {
            Component::Normal(name) => SKIPPED_DIRS
                .iter()
                .find(|s| std::ffi::OsStr::new(s) == name),
            _ => None,
        })
    {
        return refuse(format!(
            "is under `{skipped}/`, a folder never packed into bundles"
        ));
    }
    let path = dir.join(relative);
    // Every folder on the way must be a real folder: pack refuses links.
    let mut walked = dir.to_path_buf();
    for component in relative.components() {
        walked.push(component);
        match std::fs::symlink_metadata(&walked) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refuse(format!("does not exist in {}", dir.display()));
            }
            Err(e) => return refuse(format!("cannot be read in {}: {e}", dir.display())),
            Ok(meta) if meta.file_type().is_symlink() => {
                return refuse(format!(
                    "goes through the symbolic link {} (bundles hold no links)",
                    walked.display()
                ));
            }
            Ok(meta) if walked == path && !meta.is_file() => {
                return refuse(format!("is not a regular file in {}", dir.display()));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks `bytes` against `digest` and unpacks them into `dest` (which must
/// not exist yet). Refuses absolute or `..` paths, links, special files, and
/// archives over the size or entry limits; on refusal nothing is left in
/// `dest`.
pub fn unpack(bytes: &[u8], digest: &str, dest: &Path) -> Result<(), BundleError> {
    let actual = digest_of(bytes);
    if actual != digest {
        return Err(BundleError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    let result = unpack_checked(bytes, dest);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// Stops a decompressing reader after `left` bytes: bounds what the tar
/// reader may pull into memory (long names, PAX headers) or onto disk.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other(format!(
                "more than {MAX_UNPACKED_BYTES} bytes once decompressed"
            )));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// At most 200 characters of an entry name, for error messages.
fn short(name: &str) -> String {
    match name.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

fn unpack_checked(bytes: &[u8], dest: &Path) -> Result<(), BundleError> {
    std::fs::create_dir_all(dest).map_err(io(format!("create {}", dest.display())))?;
    // Headers add a little to the files' own bytes; a few MiB of slack.
    let stream = Capped {
        inner: flate2::read::GzDecoder::new(bytes),
        left: MAX_UNPACKED_BYTES + (4 << 20),
    };
    let mut archive = tar::Archive::new(stream);
    let mut total = 0u64;
    let entries = archive.entries().map_err(io("read bundle"))?;
    for (index, entry) in entries.enumerate() {
        if index >= MAX_ENTRIES {
            return Err(BundleError::TooLarge(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let mut entry = entry.map_err(io("read bundle entry"))?;
        let path = entry
            .path()
            .map_err(io("read bundle entry name"))?
            .into_owned();
        let name = short(&path.display().to_string());
        if path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(BundleError::EscapingPath(name));
        }
        let target = dest.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(io(format!("create {name}")))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry
                    .header()
                    .size()
                    .map_err(io(format!("size of {name}")))?;
                total = total.saturating_add(size);
                if total > MAX_UNPACKED_BYTES {
                    return Err(BundleError::TooLarge(format!(
                        "files exceed {MAX_UNPACKED_BYTES} bytes"
                    )));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io(format!("create {name}")))?;
                }
                let executable = entry
                    .header()
                    .mode()
                    .map(|m| m & 0o111 != 0)
                    .unwrap_or(false);
                let mut file =
                    std::fs::File::create(&target).map_err(io(format!("write {name}")))?;
                // Copy at most the announced size: a lying header cannot grow the file.
                std::io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(io(format!("write {name}")))?;
                set_mode(&target, if executable { 0o755 } else { 0o644 })
                    .map_err(io(format!("chmod {name}")))?;
            }
            _ => return Err(BundleError::SpecialFile(name)),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("comfaas.toml"), "name = \"x\"").unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/util.py"), "X = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/junk.pyc"), "junk").unwrap();
        dir
    }

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let dir = folder();
        let a = pack(dir.path()).unwrap();
        let b = pack(dir.path()).unwrap();
        assert_eq!(a.digest, b.digest);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("b");
        unpack(&a.bytes, &a.digest, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("lib/util.py")).unwrap(),
            "X = 1\n"
        );
        assert!(!dest.join("__pycache__").exists());
    }

    #[test]
    fn the_entry_must_be_a_file_the_bundle_holds() {
        let dir = folder();
        std::fs::create_dir(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/app"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("lib"), dir.path().join("linked")).unwrap();
        for (entry, expect) in [
            ("lib/util.py", "ok"),
            ("comfaas.toml", "ok"),
            ("main.py", "does not exist in"),
            ("lib/nope.py", "does not exist in"),
            ("lib", "is not a regular file"),
            ("target/app", "is under `target/`"),
            ("linked/util.py", "symbolic link"),
        ] {
            let got = match check_entry(dir.path(), entry) {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                got.contains(expect),
                "{entry}: expected {expect:?}, got {got:?}"
            );
            if expect != "ok" {
                assert!(got.starts_with(&format!("entry `{entry}`")), "{got}");
            }
        }
    }

    #[test]
    fn a_wrong_digest_is_refused_and_nothing_is_written() {
        let dir = folder();
        let bundle = pack(dir.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("b");
        let err = unpack(&bundle.bytes, "sha256:00", &dest).unwrap_err();
        assert!(matches!(err, BundleError::DigestMismatch { .. }));
        assert!(!dest.exists());
    }

    /// Builds a tar.gz by hand with one entry of the given type and path.
    fn hostile(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(if kind == tar::EntryType::Regular {
            3
        } else {
            0
        });
        header.set_mode(0o644);
        // Write the raw name so the tar crate's own checks do not stop us.
        let name = header.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"abc"
        } else {
            b""
        };
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn hostile_bundles_are_refused_and_leave_nothing() {
        let cases = [
            (
                hostile("../evil.py", tar::EntryType::Regular, None),
                "escapes",
            ),
            (
                hostile("/etc/evil", tar::EntryType::Regular, None),
                "escapes",
            ),
            (
                hostile("a/../../evil", tar::EntryType::Regular, None),
                "escapes",
            ),
            (
                hostile("link", tar::EntryType::Symlink, Some("/etc/passwd")),
                "not a regular",
            ),
            (
                hostile("hard", tar::EntryType::Link, Some("/etc/passwd")),
                "not a regular",
            ),
            (hostile("fifo", tar::EntryType::Fifo, None), "not a regular"),
            (b"not a tarball at all".to_vec(), "read bundle"),
        ];
        for (bytes, expect) in cases {
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("b");
            let err = unpack(&bytes, &digest_of(&bytes), &dest)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "expected {expect:?}, got {err:?}");
            assert!(!dest.exists(), "{expect}: something was left behind");
            assert!(!out.path().join("evil.py").exists());
        }
    }

    #[test]
    fn symlinks_in_a_folder_are_refused_at_pack() {
        let dir = folder();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let err = pack(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::SpecialFile(name) if name == "passwd"));
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    /// A GNU long-name entry whose name is `len` bytes: the tar reader
    /// would hold the whole name in memory before we see it.
    fn long_name(len: usize) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_size(len as u64);
        header.set_mode(0o644);
        header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        header.set_cksum();
        use std::io::Write;
        gz.write_all(header.as_bytes()).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            gz.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        gz.finish().unwrap()
    }

    #[test]
    fn a_huge_long_name_is_refused_without_reading_it_all() {
        let bytes = long_name((MAX_UNPACKED_BYTES + (16 << 20)) as usize);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("b");
        let err = unpack(&bytes, &digest_of(&bytes), &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("once decompressed"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn error_messages_quote_at_most_200_characters_of_a_name() {
        let name = format!("../{}", "b".repeat(5000));
        assert!(short(&name).chars().count() <= 201);
    }
}
