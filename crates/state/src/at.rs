//! File operations relative to an open directory, for the file states.
//!
//! A file state runs as root on paths a local user may be able to write
//! (their home, a shared 1777 directory). Anything done by path twice (an
//! lstat, then a read or a chmod) can be raced: the user swaps the file for
//! a symlink in between and root reads, chmods or chowns what the link
//! points at. So every step here works on a descriptor:
//!
//! - The parent directory is opened by walking the path from `/` one
//!   component at a time with `openat(O_DIRECTORY|O_NOFOLLOW)`. A symlink
//!   in the parent path is followed only when it is owned by root (or by
//!   this process's user): only its owner or a writer of its directory can
//!   change it, and a user who swaps it for a link of their own makes a
//!   link they own, which is refused. So an admin's `/etc/alternatives/x`
//!   or `/var/run -> /run` works; a link a user planted does not. (The
//!   walk, not `openat2(RESOLVE_NO_SYMLINKS)`: that refuses every link,
//!   the admin's too, and is not on every kernel the minion runs on.)
//! - The final component is never followed: it is opened with
//!   `openat(O_NOFOLLOW|O_NONBLOCK)` and everything after (the type and
//!   owner checks, the read, `fchmod`, `fchown`) uses that descriptor, so
//!   it all applies to the one file that was checked.
//! - Writes go to a temp file made in the open directory
//!   (`openat(O_CREAT|O_EXCL|O_NOFOLLOW)`), renamed into place with
//!   `renameat`; links with `symlinkat` + `renameat`; removals with
//!   `unlinkat`; new directories with `mkdirat`, then opened with
//!   `O_DIRECTORY|O_NOFOLLOW` and checked to be the one just made before
//!   they are given their owner and mode.
//!
//! A directory a user can write may still be replaced by another real
//! directory of theirs between two steps: then the state acts inside that
//! user's own directory, on names the user controls anyway, and never
//! reaches outside it. A hard link is the one way to bring another file
//! into such a directory; `file.managed` changes the mode or owner of a
//! file with other links by writing a new inode, never in place. Reading
//! one (for a diff) is left to the kernel's `protected_hardlinks` (on by
//! default), which stops a user linking a file they cannot read.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::owner;

/// Symlinks followed in one path at most (as the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The type, mode and owner of one file, from `fstat` or `fstatat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
}

impl Meta {
    fn of_raw(mode: u32, uid: u32, gid: u32, nlink: u64) -> Self {
        let kind = match rustix::fs::FileType::from_raw_mode(mode) {
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Self {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            nlink,
        }
    }

    fn of_stat(st: &rustix::fs::Stat) -> Self {
        Self::of_raw(st.st_mode, st.st_uid, st.st_gid, st.st_nlink)
    }

    pub fn of_file(f: &File, shown: &dyn std::fmt::Display) -> Result<Self, String> {
        let m = f
            .metadata()
            .map_err(|e| format!("cannot stat {shown}: {e}"))?;
        Ok(Self::of_raw(m.mode(), m.uid(), m.gid(), m.nlink()))
    }

    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

/// The final component of a path, as it was found (never followed).
pub(crate) enum Found {
    Missing,
    /// A regular file, open for reading.
    File(File, Meta),
    /// A directory, open for reading.
    Dir(File, Meta),
    /// A symlink, a socket, a device...: not opened.
    Other(Meta),
}

impl Found {
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Found::Missing => None,
            Found::File(_, m) | Found::Dir(_, m) | Found::Other(m) => Some(m),
        }
    }
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn open_root() -> Result<rustix::fd::OwnedFd, String> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open /: {e}"))
}

/// Opens the directory `path` (absolute) for reading, walking it as the
/// module doc says. With `create`, missing directories are made on the way
/// (mode 0777 less the umask, like `mkdir -p`); without, a missing one
/// gives `None`.
pub(crate) fn open_dir(path: &Path, create: bool) -> Result<Option<File>, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let walk_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = open_root()?;
    let mut here = PathBuf::from("/");
    let mut todo = components(path);
    let mut links = 0;
    // Bounds the mkdir/open retries should something keep removing what
    // was just made.
    let mut made = 0;
    while let Some(name) = todo.pop_front() {
        let next = here.join(&name);
        match rustix::fs::openat(&cur, name.as_os_str(), walk_flags, Mode::empty()) {
            Ok(fd) => {
                cur = fd;
                if name == ".." {
                    here.pop();
                } else {
                    here = next;
                }
            }
            Err(Errno::NOENT) if create && made < 100 => {
                made += 1;
                match rustix::fs::mkdirat(&cur, name.as_os_str(), Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => todo.push_front(name),
                    Err(e) => return Err(format!("cannot create {}: {e}", next.display())),
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let target = trusted_link(&cur, &name, &next)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{}: too many symlinks", path.display()));
                }
                let mut rest = components(&target);
                rest.extend(todo.drain(..));
                todo = rest;
                if target.is_absolute() {
                    cur = open_root()?;
                    here = PathBuf::from("/");
                }
            }
            Err(e) => return Err(format!("cannot open {}: {e}", next.display())),
        }
    }
    let dir = rustix::fs::openat(
        &cur,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Some(File::from(dir)))
}

/// Where the symlink `name` in `dir` points, when it may be followed: it
/// is owned by root or by this process's user.
fn trusted_link(dir: &rustix::fd::OwnedFd, name: &OsStr, shown: &Path) -> Result<PathBuf, String> {
    // The link itself, opened: its owner and its target are read from the
    // same inode, so it cannot be swapped between the check and the read.
    let link = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", shown.display()))?;
    let st =
        rustix::fs::fstat(&link).map_err(|e| format!("cannot stat {}: {e}", shown.display()))?;
    let meta = Meta::of_stat(&st);
    if meta.kind != Kind::Symlink {
        return Err(format!("{} is not a directory", shown.display()));
    }
    if meta.uid != 0 && meta.uid != owner::current().0 {
        return Err(format!(
            "{} is a symlink owned by uid {}: a link in the path is followed only when root owns it",
            shown.display(),
            meta.uid
        ));
    }
    let target = rustix::fs::readlinkat(&link, "", Vec::new())
        .map_err(|e| format!("cannot read link {}: {e}", shown.display()))?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// An open directory and a name in it: where a file state acts.
pub(crate) struct Parent {
    pub dir: File,
    pub name: OsString,
    /// The whole path, for messages.
    pub path: PathBuf,
}

/// Opens the directory holding `path`; `None` when it does not exist and
/// `create` is false.
pub(crate) fn open_parent(path: &Path, create: bool) -> Result<Option<Parent>, String> {
    let (Some(dir), Some(Component::Normal(name))) = (path.parent(), path.components().next_back())
    else {
        return Err(format!("{} does not name a file", path.display()));
    };
    Ok(open_dir(dir, create)?.map(|dir| Parent {
        dir,
        name: name.to_os_string(),
        path: path.to_path_buf(),
    }))
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
    pub fn lstat(&self) -> Result<Option<Meta>, String> {
        match rustix::fs::statat(&self.dir, self.name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(format!("cannot stat {}: {e}", self.shown())),
        }
    }

    /// Opens what is at the name when it is a regular file or a directory
    /// (never through a symlink, never blocking on a fifo); the metadata
    /// comes from the open descriptor.
    pub fn open(&self) -> Result<Found, String> {
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
                return Err(format!(
                    "{} changed while it was being opened; not touched",
                    self.shown()
                ));
            }
            Err(e) => return Err(format!("cannot open {}: {e}", self.shown())),
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
    pub fn readlink(&self) -> Result<PathBuf, String> {
        let t = rustix::fs::readlinkat(&self.dir, self.name.as_os_str(), Vec::new())
            .map_err(|e| format!("cannot read link {}: {e}", self.shown()))?;
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
    ) -> Result<(), String> {
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
                Err(e) => return Err(format!("cannot create a temp file in {dir_shown}: {e}")),
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
                .map_err(|e| format!("cannot chown {shown}: {e}"))?;
        }
        // After chown, which clears set-id bits.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot chmod {shown}: {e}"))?;
        file.write_all(bytes)
            .map_err(|e| format!("cannot write {shown}: {e}"))?;
        file.sync_all()
            .map_err(|e| format!("cannot sync {shown}: {e}"))?;
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
    ) -> Result<(), String> {
        let mut tries = 0;
        let tmp = loop {
            let tmp = temp_name(&self.name);
            match rustix::fs::symlinkat(target, &self.dir, tmp.as_os_str()) {
                Ok(()) => break tmp,
                Err(Errno::EXIST) if tries < 100 => tries += 1,
                Err(e) => {
                    return Err(format!(
                        "cannot create a link next to {}: {e}",
                        self.shown()
                    ));
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

    fn rename_into_place(&self, guard: &mut TempGuard<'_>) -> Result<(), String> {
        rustix::fs::renameat(
            &self.dir,
            guard.name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(|e| format!("cannot rename onto {}: {e}", self.shown()))?;
        guard.armed = false;
        self.dir.sync_all().map_err(|e| {
            format!(
                "cannot sync {}: {e}",
                self.path.parent().unwrap_or(Path::new("/")).display()
            )
        })
    }

    /// Removes the name: a file or link with unlinkat, a directory with
    /// everything under it (each level opened O_NOFOLLOW, nothing followed).
    pub fn remove(&self) -> Result<(), String> {
        remove_at(&self.dir, &self.name, &self.path)
    }

    /// Removes the empty directory at the name.
    pub fn remove_empty_dir(&self) -> Result<(), String> {
        rustix::fs::unlinkat(&self.dir, self.name.as_os_str(), AtFlags::REMOVEDIR)
            .map_err(|e| format!("cannot remove {}: {e}", self.shown()))
    }

    /// Makes the directory at the name (private to this process's user
    /// until it has its owner and mode), opens it without following a
    /// link and checks it is the one just made.
    pub fn mkdir(&self) -> Result<(File, Meta), String> {
        rustix::fs::mkdirat(&self.dir, self.name.as_os_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| format!("cannot create {}: {e}", self.shown()))?;
        let Found::Dir(dir, meta) = self.open()? else {
            return Err(format!(
                "{} changed while it was being created",
                self.shown()
            ));
        };
        if meta.uid != owner::current().0 {
            return Err(format!(
                "{} was replaced by a directory of uid {} while it was being created",
                self.shown(),
                meta.uid
            ));
        }
        Ok((dir, meta))
    }
}

/// Sets the owner, then the mode (chown clears set-id bits), of an open
/// file or directory.
pub(crate) fn set_attrs(
    f: &File,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    shown: &dyn std::fmt::Display,
) -> Result<(), String> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(f, Some(u), Some(g))
            .map_err(|e| format!("cannot chown {shown}: {e}"))?;
    }
    if let Some(m) = mode {
        f.set_permissions(std::fs::Permissions::from_mode(m))
            .map_err(|e| format!("cannot chmod {shown}: {e}"))?;
    }
    Ok(())
}

/// The names in an open directory (without `.` and `..`).
pub(crate) fn list(dir: &File, shown: &Path) -> Result<Vec<OsString>, String> {
    let d = rustix::fs::Dir::read_from(dir)
        .map_err(|e| format!("cannot list {}: {e}", shown.display()))?;
    let mut names = Vec::new();
    for entry in d {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", shown.display()))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir`, a directory with all it holds, never following
/// a link.
pub(crate) fn remove_at(dir: &File, name: &OsStr, shown: &Path) -> Result<(), String> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(format!("cannot stat {}: {e}", shown.display())),
    };
    if Meta::of_stat(&st).kind == Kind::Dir {
        let sub = match rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(format!("cannot open {}: {e}", shown.display())),
        };
        for entry in list(&sub, shown)? {
            remove_at(&sub, &entry, &shown.join(&entry))?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", shown.display())),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", shown.display())),
        }
    }
}

/// Opens `dir` for backups: created 0700 when missing; an existing one
/// must be a real directory (not a link) owned by this process's user,
/// and is tightened to 0700.
pub(crate) fn open_private_dir(dir: &Path) -> Result<File, String> {
    let parent =
        open_parent(dir, true)?.ok_or_else(|| format!("cannot create {}", dir.display()))?;
    match rustix::fs::mkdirat(
        &parent.dir,
        parent.name.as_os_str(),
        Mode::from_raw_mode(0o700),
    ) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let Found::Dir(d, meta) = parent.open()? else {
        return Err(format!(
            "{} is not a directory (a symlink is not followed there)",
            dir.display()
        ));
    };
    if meta.uid != owner::current().0 {
        return Err(format!(
            "{} is owned by uid {}, not by this process's user",
            dir.display(),
            meta.uid
        ));
    }
    if meta.mode != 0o700 {
        set_attrs(&d, None, Some(0o700), &dir.display())?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_dir(a: &File, b: &Path) -> bool {
        let (x, y) = (a.metadata().unwrap(), std::fs::metadata(b).unwrap());
        (x.dev(), x.ino()) == (y.dev(), y.ino())
    }

    #[test]
    fn the_walk_follows_our_own_relative_links_and_dot_dot_like_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("a/b");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink("a/b", tmp.path().join("rel")).unwrap();
        let d = open_dir(&tmp.path().join("rel"), false).unwrap().unwrap();
        assert!(same_dir(&d, &real));
        // `..` after a link is the link target's parent, as for the kernel.
        let d = open_dir(&tmp.path().join("rel/.."), false)
            .unwrap()
            .unwrap();
        assert!(same_dir(&d, &tmp.path().join("a")));
        assert!(
            open_dir(&tmp.path().join("nope/x"), false)
                .unwrap()
                .is_none()
        );
        let made = open_dir(&tmp.path().join("rel/c/d"), true)
            .unwrap()
            .unwrap();
        assert!(same_dir(&made, &real.join("c/d")));
    }

    #[test]
    fn a_symlink_loop_in_the_path_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("l2", tmp.path().join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", tmp.path().join("l2")).unwrap();
        let err = open_dir(&tmp.path().join("l1"), false).unwrap_err();
        assert!(err.contains("too many symlinks"), "{err}");
    }

    #[test]
    fn a_file_in_the_path_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let err = open_dir(&tmp.path().join("f/x"), false).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
