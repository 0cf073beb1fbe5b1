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

mod dir;
mod entry;
mod walk;

use std::fs::File;
use std::os::unix::fs::MetadataExt;

pub(crate) use dir::{list, open_private_dir, remove_at, set_attrs};
pub(crate) use entry::Parent;
pub(crate) use walk::open_parent;

/// A file operation that failed or was refused, and on what.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AtError {
    /// A system call failed: `op` is what was being done (`open`,
    /// `chmod`, `rename onto`...), `path` what it was done to.
    #[error("cannot {op} {path}: {error}")]
    Io {
        op: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{path} is not an absolute path")]
    NotAbsolute { path: String },
    #[error("{path} does not name a file")]
    NotAFile { path: String },
    #[error("{path}: too many symlinks")]
    TooManyLinks { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error(
        "{path} is a symlink owned by uid {uid}: a link in the path is followed only when root owns it"
    )]
    UntrustedLink { path: String, uid: u32 },
    #[error(
        "{path} is a symlink in a directory that uid {uid} can change (a link root made elsewhere could have been moved there): not followed"
    )]
    LinkInOpenDir { path: String, uid: u32 },
    #[error("{path} changed while it was being opened; not touched")]
    ChangedWhileOpened { path: String },
    #[error("{path} changed while it was being created")]
    ChangedWhileCreated { path: String },
    #[error("{path} was replaced by a directory of uid {uid} while it was being created")]
    ReplacedWhileCreated { path: String, uid: u32 },
    #[error("cannot create {path}")]
    CannotCreate { path: String },
    #[error("{path} is not a directory (a symlink is not followed there)")]
    NotARealDirectory { path: String },
    #[error("{path} is owned by uid {uid}, not by this process's user")]
    NotOurs { path: String, uid: u32 },
}

/// The error of system call `op` on `path`, from a rustix or std error.
fn io<E: Into<std::io::Error>>(
    op: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(E) -> AtError {
    move |e| AtError::Io {
        op,
        path: path.to_string(),
        error: e.into(),
    }
}

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

    pub fn of_file(f: &File, shown: &dyn std::fmt::Display) -> Result<Self, AtError> {
        let m = f.metadata().map_err(io("stat", shown))?;
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
