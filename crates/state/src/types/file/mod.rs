//! What the file states (`file.managed`, `file.absent`,
//! `file.directory`, `file.symlink`, `file.line`) share. Every write is
//! atomic (a temp file in the same directory, fsynced, renamed over the
//! target) so a reader never sees half a file, and announced in the
//! ledger before it happens. Every step works on an open descriptor,
//! never following a symlink at the path itself (see `at` for the rule
//! on the directories above it).

pub mod absent;
pub mod directory;
pub mod line;
pub mod managed;
pub mod symlink;

use std::fs;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::at::{self, AtError, Meta, Parent};
use crate::owner::{self, OwnerError};

/// Why a file state could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error(transparent)]
    At(#[from] AtError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{dir} does not exist (set makedirs = true to create it)")]
    NoParent { dir: String },
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is a directory")]
    IsDirectory { path: String },
    #[error("{path} exists and is not a directory")]
    NotDirectory { path: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is a {what} in the way of the link (set force = true to replace it)")]
    InTheWay { path: String, what: &'static str },
    #[error(
        "{path} is a directory that is not empty; force replaces files and empty directories only"
    )]
    NotEmpty { path: String },
    #[error("the master sent no contents")]
    NoContents,
    #[error("cannot read {path} as text: {error}")]
    NotText {
        path: String,
        error: std::string::FromUtf8Error,
    },
    #[error("bad match: {0}")]
    BadMatch(regex::Error),
    #[error("cannot keep a backup of {path}: {error}")]
    Backup { path: String, error: AtError },
}

/// Mode of a file the engine creates without a `mode` (and when what is
/// at the path is not a regular file whose mode could be kept).
const DEFAULT_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

fn mode_str(m: u32) -> String {
    format!("{m:04o}")
}

/// Mode and owner changes on something that exists: what differs, for
/// the report, and the chmod/chown to make it right.
struct Attrs {
    mode: Option<(u32, u32)>,
    owner: Option<((u32, u32), (u32, u32))>,
}

impl Attrs {
    fn diff(meta: &Meta, mode: Option<u32>, owner: (u32, u32)) -> Self {
        Self {
            mode: mode.filter(|m| *m != meta.mode).map(|m| (meta.mode, m)),
            owner: (owner != meta.owner()).then_some((meta.owner(), owner)),
        }
    }

    fn none() -> Self {
        Self {
            mode: None,
            owner: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.mode.is_none() && self.owner.is_none()
    }

    fn report(&self, changes: &mut Map<String, Value>) {
        if let Some((old, new)) = self.mode {
            changes.insert(
                "mode".into(),
                json!({"old": mode_str(old), "new": mode_str(new)}),
            );
        }
        if let Some((old, new)) = self.owner {
            changes.insert(
                "owner".into(),
                json!({"old": format!("{}:{}", old.0, old.1), "new": format!("{}:{}", new.0, new.1)}),
            );
        }
    }

    /// Applies the changes to the open file or directory they were
    /// computed from (never by path: a symlink swapped in meanwhile is not
    /// followed).
    fn apply(&self, f: &fs::File, shown: &str) -> Result<(), AtError> {
        at::set_attrs(
            f,
            self.owner.map(|(_, o)| o),
            self.mode.map(|(_, m)| m),
            &shown,
        )
    }
}

fn no_parent(path: &Path) -> FileError {
    FileError::NoParent {
        dir: path
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string(),
    }
}

/// The parent of `path`, opened: `None` in a dry run when it does not
/// exist yet; created when `makedirs`.
fn parent_for_write(path: &Path, makedirs: bool, test: bool) -> Result<Option<Parent>, FileError> {
    match at::open_parent(path, false)? {
        Some(p) => Ok(Some(p)),
        None if test => Ok(None),
        None if makedirs => Ok(at::open_parent(path, true)?),
        None => Err(no_parent(path)),
    }
}

/// Whether an existing regular file keeps its owner and group when the
/// state names none, given the mode it will have and its directory.
///
/// It does, unless the file holds a secret (its mode does not let everyone
/// read it) and its owner, not root nor this process's user, could have
/// put it there themselves: the directory is theirs, or anyone but its
/// owner may write it (group- or world-writable, like a 1777 /tmp).
/// Otherwise a local user could pre-create the path and be handed the
/// secret. Then the file goes to this process's user and group; a state
/// that means to give a secret to a user names them in `user`.
fn keeps_owner(file: &Meta, dir: &Meta, mode: u32) -> bool {
    let trusted = file.uid == 0 || file.uid == owner::current().0;
    let could_plant = file.uid == dir.uid || dir.mode & 0o022 != 0;
    let secret = mode & 0o004 == 0;
    trusted || !(could_plant && secret)
}

/// The owner to give: the state's `user` and `group`, each defaulting to
/// `base`.
fn wanted_owner(
    user: &Option<String>,
    group: &Option<String>,
    base: (u32, u32),
) -> Result<(u32, u32), OwnerError> {
    Ok((
        user.as_deref()
            .map(owner::uid)
            .transpose()?
            .unwrap_or(base.0),
        group
            .as_deref()
            .map(owner::gid)
            .transpose()?
            .unwrap_or(base.1),
    ))
}

fn read_all(mut f: &fs::File, shown: &str) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|error| FileError::Read {
        path: shown.to_string(),
        error,
    })?;
    Ok(buf)
}

fn unified_diff(path: &str, old: Option<&[u8]>, new: &[u8]) -> String {
    let (Ok(old_text), Ok(new_text)) = (
        std::str::from_utf8(old.unwrap_or_default()),
        std::str::from_utf8(new),
    ) else {
        return "binary contents differ\n".to_string();
    };
    let old_name = if old.is_some() { path } else { "/dev/null" };
    similar::TextDiff::from_lines(old_text, new_text)
        .unified_diff()
        .context_radius(3)
        .header(old_name, path)
        .to_string()
}
