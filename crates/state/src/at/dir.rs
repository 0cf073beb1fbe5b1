//! Operations on an open file or directory: its owner and mode, its
//! entries, removing a whole tree, and the private directory backups go
//! to. None follows a symlink.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{AtError, Found, Kind, Meta, io, open_parent};
use crate::owner;

/// Sets the owner, then the mode (chown clears set-id bits), of an open
/// file or directory.
pub(crate) fn set_attrs(
    f: &File,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    shown: &dyn std::fmt::Display,
) -> Result<(), AtError> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(f, Some(u), Some(g)).map_err(io("chown", shown))?;
    }
    if let Some(m) = mode {
        f.set_permissions(std::fs::Permissions::from_mode(m))
            .map_err(io("chmod", shown))?;
    }
    Ok(())
}

/// The names in an open directory (without `.` and `..`).
pub(crate) fn list(dir: &File, shown: &Path) -> Result<Vec<OsString>, AtError> {
    let d = rustix::fs::Dir::read_from(dir).map_err(io("list", shown.display()))?;
    let mut names = Vec::new();
    for entry in d {
        let entry = entry.map_err(io("list", shown.display()))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` in `dir`, a directory with all it holds, never following
/// a link.
pub(crate) fn remove_at(dir: &File, name: &OsStr, shown: &Path) -> Result<(), AtError> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io("stat", shown.display())(e)),
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
            Err(e) => return Err(io("open", shown.display())(e)),
        };
        for entry in list(&sub, shown)? {
            remove_at(&sub, &entry, &shown.join(&entry))?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io("remove", shown.display())(e)),
        }
    } else {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io("remove", shown.display())(e)),
        }
    }
}

/// Opens `dir` for backups: created 0700 when missing; an existing one
/// must be a real directory (not a link) owned by this process's user,
/// and is tightened to 0700.
pub(crate) fn open_private_dir(dir: &Path) -> Result<File, AtError> {
    let parent = open_parent(dir, true)?.ok_or_else(|| AtError::CannotCreate {
        path: dir.display().to_string(),
    })?;
    match rustix::fs::mkdirat(
        &parent.dir,
        parent.name.as_os_str(),
        Mode::from_raw_mode(0o700),
    ) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io("create", dir.display())(e)),
    }
    let Found::Dir(d, meta) = parent.open()? else {
        return Err(AtError::NotARealDirectory {
            path: dir.display().to_string(),
        });
    };
    if meta.uid != owner::current().0 {
        return Err(AtError::NotOurs {
            path: dir.display().to_string(),
            uid: meta.uid,
        });
    }
    if meta.mode != 0o700 {
        set_attrs(&d, None, Some(0o700), &dir.display())?;
    }
    Ok(d)
}
