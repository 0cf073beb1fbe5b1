//! Opening the directory a file state acts in: the walk from `/`, one
//! component at a time, that follows only the symlinks root owns (see the
//! module doc of `at`).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::{AtError, Kind, Meta, Parent, io};
use crate::owner;

/// Symlinks followed in one path at most (as the kernel's own limit).
const MAX_LINKS: u32 = 40;

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn open_root() -> Result<rustix::fd::OwnedFd, AtError> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open", "/"))
}

/// Opens the directory `path` (absolute) for reading, walking it as the
/// module doc says. With `create`, missing directories are made on the way
/// (mode 0777 less the umask, like `mkdir -p`); without, a missing one
/// gives `None`.
pub(crate) fn open_dir(path: &Path, create: bool) -> Result<Option<File>, AtError> {
    if !path.is_absolute() {
        return Err(AtError::NotAbsolute {
            path: path.display().to_string(),
        });
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
                    Err(e) => return Err(io("create", next.display())(e)),
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let target = trusted_link(&cur, &name, &next)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(AtError::TooManyLinks {
                        path: path.display().to_string(),
                    });
                }
                let mut rest = components(&target);
                rest.extend(todo.drain(..));
                todo = rest;
                if target.is_absolute() {
                    cur = open_root()?;
                    here = PathBuf::from("/");
                }
            }
            Err(e) => return Err(io("open", next.display())(e)),
        }
    }
    let dir = rustix::fs::openat(
        &cur,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open", path.display()))?;
    Ok(Some(File::from(dir)))
}

/// Where the symlink `name` in `dir` points, when it may be followed: it
/// is owned by root or by this process's user, and so is `dir`, which no
/// one else may write to (or only under the sticky bit, which keeps others
/// from renaming what they do not own). Owning the link is not enough:
/// whoever can write its directory can move in a link root made elsewhere
/// (a `file.symlink` state in their home), and so point the path where
/// that link points (review 4, finding 1).
fn trusted_link(dir: &rustix::fd::OwnedFd, name: &OsStr, shown: &Path) -> Result<PathBuf, AtError> {
    let me = owner::current().0;
    let holder = Meta::of_stat(&rustix::fs::fstat(dir).map_err(io("stat", shown.display()))?);
    let others_write = holder.mode & 0o022 != 0 && holder.mode & 0o1000 == 0;
    if (holder.uid != 0 && holder.uid != me) || others_write {
        return Err(AtError::LinkInOpenDir {
            path: shown.display().to_string(),
            uid: holder.uid,
        });
    }
    // The link itself, opened: its owner and its target are read from the
    // same inode, so it cannot be swapped between the check and the read.
    let link = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open", shown.display()))?;
    let st = rustix::fs::fstat(&link).map_err(io("stat", shown.display()))?;
    let meta = Meta::of_stat(&st);
    if meta.kind != Kind::Symlink {
        return Err(AtError::NotADirectory {
            path: shown.display().to_string(),
        });
    }
    if meta.uid != 0 && meta.uid != me {
        return Err(AtError::UntrustedLink {
            path: shown.display().to_string(),
            uid: meta.uid,
        });
    }
    let target =
        rustix::fs::readlinkat(&link, "", Vec::new()).map_err(io("read link", shown.display()))?;
    Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
}

/// Opens the directory holding `path`; `None` when it does not exist and
/// `create` is false.
pub(crate) fn open_parent(path: &Path, create: bool) -> Result<Option<Parent>, AtError> {
    let (Some(dir), Some(Component::Normal(name))) = (path.parent(), path.components().next_back())
    else {
        return Err(AtError::NotAFile {
            path: path.display().to_string(),
        });
    };
    Ok(open_dir(dir, create)?.map(|dir| Parent {
        dir,
        name: name.to_os_string(),
        path: path.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
        let err = open_dir(&tmp.path().join("l1"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too many symlinks"), "{err}");
    }

    #[test]
    fn a_file_in_the_path_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let err = open_dir(&tmp.path().join("f/x"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
