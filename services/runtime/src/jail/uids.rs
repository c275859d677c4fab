//! A user per function: uids handed out from a configured range, one per
//! function name, never shared, and kept in a file of the node's data
//! directory so a function keeps its uid across restarts (its files from
//! before stay its own).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::SandboxError;

/// The uid and gid a function's runs get (the gid is the same number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// The functions' uids on this node.
#[derive(Debug)]
pub(crate) struct UidTable {
    file: PathBuf,
    base: u32,
    count: u32,
    assigned: Mutex<BTreeMap<String, u32>>,
}

impl UidTable {
    /// The table kept in `file` (created when missing), handing out uids
    /// `base .. base + count`.
    pub fn open(file: PathBuf, base: u32, count: u32) -> Result<Self, SandboxError> {
        if base == 0 || count == 0 || base.checked_add(count).is_none() {
            return Err(SandboxError::Config(format!(
                "sandbox.uid_base {base} and uid_count {count} do not make a range of unprivileged uids"
            )));
        }
        let mut assigned = BTreeMap::new();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let parsed = line
                        .split_once(' ')
                        .and_then(|(name, uid)| Some((name.to_owned(), uid.trim().parse().ok()?)));
                    let Some((name, uid)) = parsed else {
                        return Err(SandboxError::Io {
                            what: format!("read {}", file.display()),
                            source: std::io::Error::other(format!("bad line `{line}`")),
                        });
                    };
                    assigned.insert(name, uid);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    what: format!("read {}", file.display()),
                    source,
                })
            }
        }
        Ok(Self {
            file,
            base,
            count,
            assigned: Mutex::new(assigned),
        })
    }

    /// The identity of `function`: the uid it had, or the lowest free one
    /// of the range, recorded before it is returned.
    pub fn identity(&self, function: &str) -> Result<Identity, SandboxError> {
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uid) = assigned.get(function) {
            return Ok(Identity {
                uid: *uid,
                gid: *uid,
            });
        }
        let taken: std::collections::BTreeSet<u32> = assigned.values().copied().collect();
        let uid = (self.base..self.base + self.count)
            .find(|uid| !taken.contains(uid))
            .ok_or_else(|| {
                SandboxError::Config(format!(
                    "every uid of sandbox.uid_base {} .. +{} is taken: raise uid_count",
                    self.base, self.count
                ))
            })?;
        assigned.insert(function.to_owned(), uid);
        if let Err(source) = write_table(&self.file, &assigned) {
            assigned.remove(function);
            return Err(SandboxError::Io {
                what: format!("write {}", self.file.display()),
                source,
            });
        }
        Ok(Identity { uid, gid: uid })
    }
}

/// Replaces the table's file at once (a temporary file renamed over it),
/// so a crash leaves the old table or the new one.
fn write_table(file: &Path, assigned: &BTreeMap<String, u32>) -> std::io::Result<()> {
    let part = file.with_extension("part");
    let mut out = std::fs::File::create(&part)?;
    for (name, uid) in assigned {
        writeln!(out, "{name} {uid}")?;
    }
    out.sync_all()?;
    std::fs::rename(&part, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_function_gets_its_own_uid_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uids");
        let table = UidTable::open(file.clone(), 200_000, 3).unwrap();
        let a = table.identity("a").unwrap();
        let b = table.identity("b").unwrap();
        assert_eq!(
            a,
            Identity {
                uid: 200_000,
                gid: 200_000
            }
        );
        assert_eq!(b.uid, 200_001);
        assert_eq!(table.identity("a").unwrap(), a, "stable");

        let reopened = UidTable::open(file, 200_000, 3).unwrap();
        assert_eq!(reopened.identity("b").unwrap(), b, "kept across a restart");
        assert_eq!(reopened.identity("c").unwrap().uid, 200_002);
        let full = reopened.identity("d").unwrap_err().to_string();
        assert!(full.contains("raise uid_count"), "{full}");
    }

    #[test]
    fn a_range_that_is_not_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (base, count) in [(0, 10), (1, 0), (u32::MAX, 2)] {
            assert!(UidTable::open(dir.path().join("u"), base, count).is_err());
        }
        std::fs::write(dir.path().join("bad"), "a notanumber\n").unwrap();
        assert!(UidTable::open(dir.path().join("bad"), 1000, 10).is_err());
    }
}
