//! Acting on one name in an open directory ([`Parent`]): what is there,
//! atomic writes and links through a temp name, removal, mkdir.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{AtError, Found, Kind, Meta, io, remove_at};
use crate::owner;

/// An open directory and a name in it: where a file state acts.
pub(crate) struct Parent {
    pub dir: File,
    pub name: OsString,
    /// The whole path, for messages.
    pub path: PathBuf,
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // The name need not be secret (O_EXCL refuses anything in the way);
    // random only so that no one can block it by guessing.
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    let n = u64::from_ne_bytes(b) ^ u64::from(std::process::id());
    format!("{n:016x}")
}

/// A temp name next to `name`: `.name.tend-<random>`, the form the file
/// beacon ignores.
fn temp_name(name: &OsStr) -> OsString {
    let mut t = OsString::from(".");
    t.push(name);
    t.push(".tend-");
    t.push(random_suffix());
    t
}

/// Removes a temp entry unless it was renamed into place.
struct TempGuard<'a> {
    dir: &'a File,
    name: OsString,
    armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::fs::unlinkat(self.dir, self.name.as_os_str(), AtFlags::empty());
        }
    }
}

impl Parent {
    fn shown(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// What is at the name, without following it.
    pub fn lstat(&self) -> Result<Option<Meta>, AtError> {
        match rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io("stat", self.shown())(e)),
        }
    }

    /// Opens what is at the name when it is a regular file or a directory
    /// (never through a symlink, never blocking on a fifo); the metadata
    /// comes from the open descriptor.
    pub fn open(&self) -> Result<Found, AtError> {
        let Some(seen) = self.lstat()? else {
            return Ok(Found::Missing);
        };
        if !matches!(seen.kind, Kind::File | Kind::Dir) {
            return Ok(Found::Other(seen));
        }
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.dir, self.name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOENT) => {
                return Err(AtError::ChangedWhileOpened {
                    path: self.shown().to_string(),
                });
            }
            Err(e) => return Err(io("open", self.shown())(e)),
        };
        let file = File::from(fd);
        let meta = Meta::of_file(&file, &self.shown())?;
        Ok(match meta.kind {
            Kind::File => Found::File(file, meta),
            Kind::Dir => Found::Dir(file, meta),
            _ => Found::Other(meta),
        })
    }

    /// Where the symlink at the name points.
    pub fn readlink(&self) -> Result<PathBuf, AtError> {
        let t = rustix::fs::readlinkat(&self.dir, self.name.as_os_str(), Vec::new())
            .map_err(io("read link", self.shown()))?;
        Ok(PathBuf::from(OsStr::from_bytes(t.as_bytes())))
    }

    /// Writes `bytes` to a temp file in the directory, fsyncs it, and
    /// renames it over the name; then fsyncs the directory so the rename
    /// survives a crash. `before_rename` sees the finished temp file's
    /// metadata just before it takes the name's place.
    ///
    /// The temp file is created (O_EXCL, under a random name) readable by
    /// this process's user alone, and given its final owner and mode while
    /// it is still empty: at no moment can anyone read the contents who
    /// could not read the finished file. Its owner is checked with fstat
    /// and set whenever it differs (a setgid directory gives a new file
    /// the directory's group, not this process's).
    pub fn write_atomic(
        &self,
        bytes: &[u8],
        mode: u32,
        owner: (u32, u32),
        before_rename: impl FnOnce(&Meta),
    ) -> Result<(), AtError> {
        let dir_shown = self.path.parent().unwrap_or(Path::new("/")).display();
        let mut tries = 0;
        let (fd, tmp) = loop {
            let tmp = temp_name(&self.name);
            match rustix::fs::openat(
                &self.dir,
                tmp.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (fd, tmp),
                Err(Errno::EXIST) if tries < 100 => tries += 1,
                Err(e) => return Err(io("create a temp file in", dir_shown)(e)),
            }
        };
        let mut guard = TempGuard {
            dir: &self.dir,
            name: tmp,
            armed: true,
        };
        let shown = Path::new(&self.path.parent().unwrap_or(Path::new("/")))
            .join(&guard.name)
            .display()
            .to_string();
        let mut file = File::from(fd);
        let made = Meta::of_file(&file, &shown)?;
        if made.owner() != owner {
            std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))
                .map_err(io("chown", &shown))?;
        }
        // After chown, which clears set-id bits.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &shown))?;
        file.write_all(bytes).map_err(io("write", &shown))?;
        file.sync_all().map_err(io("sync", &shown))?;
        let written = Meta::of_file(&file, &shown)?;
        before_rename(&written);
        self.rename_into_place(&mut guard)
    }

    /// Makes a symlink to `target` under a temp name and renames it over
    /// the name (after removing the empty directory there, with
    /// `clear_dir`). `before_rename` sees the link's metadata.
    pub fn symlink_atomic(
        &self,
        target: &str,
        clear_dir: bool,
        before_rename: impl FnOnce(&Meta),
    ) -> Result<(), AtError> {
        let mut tries = 0;
        let tmp = loop {
            let tmp = temp_name(&self.name);
            match rustix::fs::symlinkat(target, &self.dir, tmp.as_os_str()) {
                Ok(()) => break tmp,
                Err(Errno::EXIST) if tries < 100 => tries += 1,
                Err(e) => {
                    return Err(io("create a link next to", self.shown())(e));
                }
            }
        };
        let mut guard = TempGuard {
            dir: &self.dir,
            name: tmp,
            armed: true,
        };
        if let Ok(st) =
            rustix::fs::statat(&self.dir, guard.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
        {
            before_rename(&Meta::of_stat(&st));
        }
        if clear_dir {
            self.remove_empty_dir()?;
        }
        self.rename_into_place(&mut guard)
    }

    fn rename_into_place(&self, guard: &mut TempGuard<'_>) -> Result<(), AtError> {
        rustix::fs::renameat(
            &self.dir,
            guard.name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(io("rename onto", self.shown()))?;
        guard.armed = false;
        self.dir.sync_all().map_err(io(
            "sync",
            self.path.parent().unwrap_or(Path::new("/")).display(),
        ))
    }

    /// Removes the name: a file or link with unlinkat, a directory with
    /// everything under it (each level opened O_NOFOLLOW, nothing followed).
    pub fn remove(&self) -> Result<(), AtError> {
        remove_at(&self.dir, &self.name, &self.path)
    }

    /// Removes the empty directory at the name.
    pub fn remove_empty_dir(&self) -> Result<(), AtError> {
        rustix::fs::unlinkat(&self.dir, self.name.as_os_str(), AtFlags::REMOVEDIR)
            .map_err(io("remove", self.shown()))
    }

    /// Makes the directory at the name (private to this process's user
    /// until it has its owner and mode), opens it without following a
    /// link and checks it is the one just made.
    pub fn mkdir(&self) -> Result<(File, Meta), AtError> {
        rustix::fs::mkdirat(&self.dir, self.name.as_os_str(), Mode::from_raw_mode(0o700))
            .map_err(io("create", self.shown()))?;
        let Found::Dir(dir, meta) = self.open()? else {
            return Err(AtError::ChangedWhileCreated {
                path: self.shown().to_string(),
            });
        };
        if meta.uid != owner::current().0 {
            return Err(AtError::ReplacedWhileCreated {
                path: self.shown().to_string(),
                uid: meta.uid,
            });
        }
        Ok((dir, meta))
    }
}
