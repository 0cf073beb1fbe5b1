//! The ledger of what state runs wrote: how a restore is told from drift.
//!
//! Before the engine changes a file it records, for that path, the
//! fingerprint the file will have afterwards (content hash, mode, owner) and
//! the job doing it. When the file beacon then sees the path change, it
//! fingerprints the file as it is now: if that matches the ledger, the change
//! is the job's own and the event carries the job as its cause, so rules do
//! not react to it. This depends on what the file *is*, not on when the
//! event arrives: no blind pause, no race. A hand edit right after a restore
//! changes the fingerprint and is drift again, whatever the timing.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// What a path is, in the terms that matter for drift.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    /// Nothing at the path.
    Absent,
    /// A regular file: its content hash, permission bits and owner.
    File {
        sha256: [u8; 32],
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A directory, symlink or special file: its type, mode and owner.
    Other {
        kind: char,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl Fingerprint {
    /// Fingerprints `path` as it is now (without following a final symlink).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::Absent),
            Err(e) => return Err(e),
        };
        let (mode, uid, gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
        if !meta.is_file() {
            let kind = if meta.is_dir() {
                'd'
            } else if meta.file_type().is_symlink() {
                'l'
            } else {
                '?'
            };
            return Ok(Self::Other {
                kind,
                mode,
                uid,
                gid,
            });
        }
        let sha256 = match sha256_file(path) {
            Ok(h) => h,
            // Deleted between the stat and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::Absent),
            Err(e) => return Err(e),
        };
        Ok(Self::File {
            sha256,
            mode,
            uid,
            gid,
        })
    }

    /// The content hash in hex, when this is a regular file.
    pub fn sha256_hex(&self) -> Option<String> {
        match self {
            Self::File { sha256, .. } => Some(hex(sha256)),
            _ => None,
        }
    }

    /// The permission bits, when there is something at the path.
    pub fn mode(&self) -> Option<u32> {
        match self {
            Self::File { mode, .. } | Self::Other { mode, .. } => Some(*mode),
            Self::Absent => None,
        }
    }
}

/// SHA-256 of a file's contents, streamed.
fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// SHA-256 of `bytes`: what a file holding them fingerprints as.
pub fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

struct Entry {
    fingerprint: Fingerprint,
    job: u64,
    n: u64,
}

/// Paths the state engine changed, with what it left there and for which
/// job. Bounded: the oldest entries go first when it is full.
///
/// A command (`cmd.run`) can write anything, so while one runs every change
/// seen is marked as its job's: coarser than a fingerprint, and limited to
/// the command's own run time.
pub struct Ledger {
    inner: Mutex<(HashMap<PathBuf, Entry>, u64)>,
    capacity: usize,
    running: Mutex<Option<u64>>,
}

/// While this lives, a command of job `.0` is running.
pub struct Running<'a>(&'a Ledger);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::with_capacity(10_000)
    }
}

impl Ledger {
    /// A ledger that holds at most `capacity` paths (at least 2).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashMap::new(), 0)),
            capacity: capacity.max(2),
            running: Mutex::new(None),
        }
    }

    /// Job `job` is running a command until the returned guard is dropped.
    pub fn running(&self, job: u64) -> Running<'_> {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        Running(self)
    }

    /// Job `job` is about to leave `path` as `fingerprint`.
    pub fn record(&self, path: &Path, fingerprint: Fingerprint, job: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, counter) = &mut *guard;
        *counter += 1;
        let n = *counter;
        if map.len() >= self.capacity && !map.contains_key(path) {
            let keep_after = n - (self.capacity as u64 / 2);
            map.retain(|_, e| e.n > keep_after);
        }
        map.insert(
            path.to_path_buf(),
            Entry {
                fingerprint,
                job,
                n,
            },
        );
    }

    /// The job that left `path` as `now`, if one did (or the job whose
    /// command is running).
    pub fn cause_of(&self, path: &Path, now: &Fingerprint) -> Option<u64> {
        let exact = {
            let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            guard
                .0
                .get(path)
                .filter(|e| &e.fingerprint == now)
                .map(|e| e.job)
        };
        exact.or_else(|| *self.running.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many paths it holds.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Whether it holds no path.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_fingerprint_the_job_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "managed").unwrap();
        let ledger = Ledger::default();
        let fp = Fingerprint::of(&p).unwrap();
        ledger.record(&p, fp.clone(), 7);
        assert_eq!(ledger.cause_of(&p, &fp), Some(7));
        std::fs::write(&p, "hand edit").unwrap();
        assert_eq!(ledger.cause_of(&p, &Fingerprint::of(&p).unwrap()), None);
        assert_eq!(
            Fingerprint::of(&dir.path().join("nope")).unwrap(),
            Fingerprint::Absent
        );
    }

    #[test]
    fn stays_bounded() {
        let ledger = Ledger::with_capacity(100);
        for i in 0..1000 {
            ledger.record(Path::new(&format!("/f{i}")), Fingerprint::Absent, i);
        }
        assert!(ledger.len() <= 100);
        assert_eq!(
            ledger.cause_of(Path::new("/f999"), &Fingerprint::Absent),
            Some(999)
        );
    }
}
