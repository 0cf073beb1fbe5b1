//! Every file-system operation the outbox makes, in one place, so that its
//! durability rules are visible and a test can cut them at any step.
//!
//! The outbox's rules: a record is published only after it is written (and
//! synced, with `fsync` on); a new file is synced into its directory
//! before anything in it counts; a file replaced by rename is synced before
//! the rename and its directory after; a cut (truncate) is synced before it
//! counts. Under `cfg(test)` each operation
//! first asks [`faults`] whether to fail (as a full disk does) or to stop
//! for good (as a crash does), and a model of what a power cut would keep
//! follows every step.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The kinds of operation, for the fault hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Write,
    Sync,
    SyncDir,
    Rename,
    Remove,
    Truncate,
}

/// Opens (creating if needed) a file for appending.
pub(crate) fn create(path: &Path) -> io::Result<File> {
    hook(Op::Create, path)?;
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    #[cfg(test)]
    faults::after(Op::Create, path, None);
    Ok(file)
}

/// Appends `bytes` to `file` (at `path`).
pub(crate) fn append(file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Err(e) = hook(Op::Write, path) {
        // A full disk writes part of what it was given.
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        return Err(e);
    }
    file.write_all(bytes)
}

/// Writes `bytes` at `offset` of `file` (at `path`), in place.
pub(crate) fn write_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
    hook(Op::Write, path)?;
    file.write_all_at(bytes, offset)
}

/// Makes what was written to `file` durable.
pub(crate) fn sync(file: &File, path: &Path) -> io::Result<()> {
    hook(Op::Sync, path)?;
    file.sync_data()?;
    #[cfg(test)]
    faults::after(Op::Sync, path, None);
    Ok(())
}

/// Makes the names in `dir` durable (files created, renamed, removed).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    hook(Op::SyncDir, dir)?;
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    faults::after(Op::SyncDir, dir, None);
    Ok(())
}

pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    hook(Op::Rename, to)?;
    std::fs::rename(from, to)?;
    #[cfg(test)]
    faults::after(Op::Rename, to, Some(from));
    Ok(())
}

pub(crate) fn remove(path: &Path) -> io::Result<()> {
    hook(Op::Remove, path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    #[cfg(test)]
    faults::after(Op::Remove, path, None);
    Ok(())
}

/// Cuts the file at `path` to `len` bytes, durably: a cut that a power
/// cut could undo would bring back records the outbox said it did not
/// keep (whose seqs it hands out again).
pub(crate) fn truncate(path: &Path, len: u64) -> io::Result<()> {
    hook(Op::Truncate, path)?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    sync(&file, path)
}

/// Bytes an unprivileged writer can still use on the file system holding
/// `dir`.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the outbox path"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `st` is written by statvfs
    // before it is read (only when it returns 0).
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.assume_init()
    };
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// This boot of the machine: a power cut or a reboot changes it, a crash
/// of the minion does not (what it wrote is still in the page cache).
/// This boot's id (never 0 when read), or 0 when it cannot be read.
pub(crate) fn boot_id() -> u64 {
    #[cfg(test)]
    if let Some(id) = faults::boot_override() {
        return id;
    }
    std::fs::read("/proc/sys/kernel/random/boot_id")
        .map(|b| u64::from(crc32fast::hash(&b)) | 1)
        .unwrap_or(0)
}

#[cfg(not(test))]
fn hook(_op: Op, _path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
fn hook(op: Op, path: &Path) -> io::Result<()> {
    faults::before(op, path)
}

/// Fault injection for the crash-consistency tests: fail the Nth
/// operation (a full disk: the outbox goes on) or stop at it for good (a
/// crash), and keep a model of what survives a power cut: file contents as
/// of their last sync, names as of their directory's last sync.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io;
    use std::path::{Path, PathBuf};

    use super::Op;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Mode {
        /// Operation N fails with "no space left"; the rest go through.
        Fail,
        /// Operation N and every one after it fail: the process is gone.
        Crash,
    }

    struct Faults {
        steps: u64,
        at: u64,
        mode: Mode,
        crashed: bool,
        fired: bool,
        /// Durable contents by file identity (inode).
        synced: HashMap<u64, Vec<u8>>,
        /// Names as the disk knows them after the last directory sync.
        names_durable: HashMap<PathBuf, u64>,
        names_live: HashMap<PathBuf, u64>,
        next_inode: u64,
    }

    thread_local! {
        static FAULTS: RefCell<Option<Faults>> = const { RefCell::new(None) };
        static BOOT: RefCell<Option<u64>> = const { RefCell::new(None) };
    }

    /// Starts counting operations on files in `dir` (whose present files
    /// count as durable), failing or crashing at operation `at`.
    pub(crate) fn arm(dir: &Path, at: u64, mode: Mode) {
        let mut f = Faults {
            steps: 0,
            at,
            mode,
            crashed: false,
            fired: false,
            synced: HashMap::new(),
            names_durable: HashMap::new(),
            names_live: HashMap::new(),
            next_inode: 1,
        };
        for entry in std::fs::read_dir(dir).expect("read the test dir").flatten() {
            let id = f.next_inode;
            f.next_inode += 1;
            f.synced
                .insert(id, std::fs::read(entry.path()).expect("read a test file"));
            f.names_durable.insert(entry.path(), id);
            f.names_live.insert(entry.path(), id);
        }
        FAULTS.with(|x| *x.borrow_mut() = Some(f));
    }

    /// Stops injecting. Returns whether the fault fired.
    pub(crate) fn disarm() -> bool {
        FAULTS.with(|x| x.borrow_mut().take().is_some_and(|f| f.fired))
    }

    /// A power cut: `dir` becomes what the disk held durably, and the
    /// machine boots again (a new boot id). Returns whether the fault
    /// fired.
    pub(crate) fn power_cut(dir: &Path) -> bool {
        let f = FAULTS
            .with(|x| x.borrow_mut().take())
            .expect("faults armed");
        for entry in std::fs::read_dir(dir).expect("read the test dir").flatten() {
            std::fs::remove_file(entry.path()).expect("clear the test dir");
        }
        for (name, id) in &f.names_durable {
            let data = f.synced.get(id).cloned().unwrap_or_default();
            std::fs::write(name, data).expect("write back a durable file");
        }
        BOOT.with(|b| {
            let next = b.borrow().unwrap_or(1) + 1;
            *b.borrow_mut() = Some(next);
        });
        f.fired
    }

    pub(crate) fn boot_override() -> Option<u64> {
        BOOT.with(|b| *b.borrow())
    }

    pub(super) fn before(op: Op, path: &Path) -> io::Result<()> {
        FAULTS.with(|x| {
            let mut x = x.borrow_mut();
            let Some(f) = x.as_mut() else { return Ok(()) };
            f.steps += 1;
            if f.crashed || f.steps == f.at {
                f.fired = true;
                f.crashed |= f.mode == Mode::Crash;
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "injected fault at step {} ({op:?} {})",
                        f.steps,
                        path.display()
                    ),
                ));
            }
            Ok(())
        })
    }

    pub(super) fn after(op: Op, path: &Path, from: Option<&Path>) {
        FAULTS.with(|x| {
            let mut x = x.borrow_mut();
            let Some(f) = x.as_mut() else { return };
            match op {
                Op::Create => {
                    if !f.names_live.contains_key(path) {
                        let id = f.next_inode;
                        f.next_inode += 1;
                        f.names_live.insert(path.to_path_buf(), id);
                    }
                }
                Op::Sync => {
                    if let Some(id) = f.names_live.get(path) {
                        let data = std::fs::read(path).unwrap_or_default();
                        f.synced.insert(*id, data);
                    }
                }
                Op::SyncDir => {
                    let dir = path.to_path_buf();
                    f.names_durable.retain(|n, _| n.parent() != Some(&dir));
                    let live: Vec<_> = f
                        .names_live
                        .iter()
                        .filter(|(n, _)| n.parent() == Some(&dir))
                        .map(|(n, id)| (n.clone(), *id))
                        .collect();
                    f.names_durable.extend(live);
                }
                Op::Rename => {
                    if let Some(id) = from.and_then(|from| f.names_live.remove(from)) {
                        f.names_live.insert(path.to_path_buf(), id);
                    }
                }
                Op::Remove => {
                    f.names_live.remove(path);
                }
                Op::Write | Op::Truncate => {}
            }
        })
    }
}
