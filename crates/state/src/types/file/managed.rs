//! `file.managed`: a file with exactly these contents, mode and owner.
//! The master reads a `source` (and renders a template) into `contents`
//! before it sends the state. Documented in docs/reference.md under
//! `### state: file.managed`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{
    Attrs, DEFAULT_MODE, FileError, keeps_owner, no_parent, parent_for_write, read_all,
    unified_diff, wanted_owner,
};
use crate::at::{self, AtError, Found, Meta, Parent};
use crate::ctx::{Change, Ctx};
use crate::is_false;
use crate::ledger::{Fingerprint, sha256_bytes};
use crate::mode::Mode;
use crate::owner;
use crate::types::StateType;
use crate::types::keys::{self, KeyError};

/// `file.managed`: a file with exactly these contents, mode and owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileManaged {
    /// Absolute path on the minion.
    pub path: String,
    /// The contents. In a state file either `contents` or `source`; the
    /// master reads a source (and renders a template) into `contents`
    /// before sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// A file in the state tree, relative to its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The contents are a template (minijinja): `{{ facts.hostname }}`,
    /// `{{ minion }}`, `{{ event.data.path }}`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub template: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Create missing parent directories.
    #[serde(default, skip_serializing_if = "is_false")]
    pub makedirs: bool,
    /// Keep the file being replaced, under the minion's data dir.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backup: bool,
}

/// What is wrong with a `file.managed`'s keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("give either `contents` or `source`, not both")]
    Both,
    #[error("missing field `contents` or `source`")]
    Neither,
}

impl StateType for FileManaged {
    type Invalid = Invalid;
    type Error = FileError;

    fn name(&self) -> String {
        self.path.clone()
    }

    fn path(&self) -> Option<&str> {
        Some(&self.path)
    }

    /// A mode that gives others no read (`0600`, `0640`): its author
    /// already said not everyone may read it.
    fn implies_secret(&self) -> bool {
        self.mode.is_some_and(|m| m.0 & 0o004 == 0)
    }

    fn validate(&self) -> Result<(), Invalid> {
        keys::absolute("path", &self.path)?;
        keys::owner("user", &self.user)?;
        keys::owner("group", &self.group)?;
        match (&self.contents, &self.source) {
            (Some(_), Some(_)) => Err(Invalid::Both),
            (None, None) => Err(Invalid::Neither),
            _ => Ok(()),
        }
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, FileError> {
        let f = self;
        let path = Path::new(&f.path);
        let want = f
            .contents
            .as_deref()
            .ok_or(FileError::NoContents)?
            .as_bytes();
        let parent = parent_for_write(path, f.makedirs, ctx.test)?;
        // What is at the path, opened once: the checks, the read, and a
        // mode or owner fix all apply to this one file. Only a regular file
        // counts as current: a symlink, fifo or device is replaced, and lends
        // the new file neither its mode nor its owner.
        let (file, current) = match parent.as_ref().map(Parent::open).transpose()? {
            Some(Found::Dir(..)) => {
                return Err(FileError::IsDirectory {
                    path: f.path.clone(),
                });
            }
            Some(Found::File(file, meta)) => (Some(file), Some(meta)),
            Some(Found::Other(_) | Found::Missing) | None => (None, None),
        };
        let old = file
            .as_ref()
            .map(|file| read_all(file, &f.path))
            .transpose()?;
        let content_differs = old.as_deref() != Some(want);
        let mode = f.mode.map(|m| m.0);
        let new_mode = mode.or(current.map(|m| m.mode)).unwrap_or(DEFAULT_MODE);
        let base = match (&current, &parent) {
            (Some(m), Some(p)) if keeps_owner(m, &Meta::of_file(&p.dir, &f.path)?, new_mode) => {
                m.owner()
            }
            _ => owner::current(),
        };
        let (uid, gid) = wanted_owner(&f.user, &f.group, base)?;
        let attrs = match &current {
            Some(m) if !content_differs => Attrs::diff(m, mode, (uid, gid)),
            _ => Attrs::none(),
        };
        if !content_differs && attrs.is_empty() {
            return Ok(Change::none("file is in the correct state"));
        }
        let mut changes = Map::new();
        let diff = if content_differs {
            changes.insert(
                "contents".into(),
                json!(if old.is_none() { "created" } else { "updated" }),
            );
            unified_diff(&f.path, old.as_deref(), want)
        } else {
            String::new()
        };
        attrs.report(&mut changes);
        let comment = match (&old, content_differs) {
            (None, _) => "file created",
            (Some(_), true) => "contents updated",
            (Some(_), false) => "mode or owner updated",
        };
        if ctx.test {
            return Ok(Change::would(comment, diff, changes));
        }
        let parent = parent.ok_or_else(|| no_parent(path))?;
        // A file with other hard links gets a new inode rather than a chmod
        // or chown, which would change every name it has.
        let in_place = !content_differs && current.is_some_and(|m| m.nlink == 1);
        if let (true, Some(file), Some(meta)) = (in_place, &file, &current) {
            ctx.will_leave(
                path,
                Fingerprint::File {
                    sha256: sha256_bytes(want),
                    mode: attrs.mode.map_or(meta.mode, |(_, m)| m),
                    uid,
                    gid,
                },
            );
            attrs.apply(file, &f.path)?;
            return Ok(Change::changed(comment, diff, changes));
        }
        if content_differs
            && f.backup
            && let (Some(old), Some(dir), Some(meta)) = (&old, ctx.backup_dir, &current)
        {
            let kept = backup(dir, path, old, meta)?;
            changes.insert("backup".into(), json!(kept.display().to_string()));
        }
        parent.write_atomic(want, new_mode, (uid, gid), |written| {
            ctx.will_leave(
                path,
                Fingerprint::File {
                    sha256: sha256_bytes(want),
                    mode: written.mode,
                    uid: written.uid,
                    gid: written.gid,
                },
            )
        })?;
        Ok(Change::changed(comment, diff, changes))
    }
}

/// Keeps `old` under `dir`, named after the path and the time, with the
/// mode and owner it had (`meta`): a backup of a secret is as private as
/// the secret was. `dir` must be a real directory of this process's user
/// (a symlink there is refused) and is kept at 0700.
fn backup(dir: &Path, path: &Path, old: &[u8], meta: &Meta) -> Result<PathBuf, FileError> {
    let failed = |error: AtError| FileError::Backup {
        path: path.display().to_string(),
        error,
    };
    let rel = path
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "%");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let name = format!("{rel}.{stamp}");
    let kept = dir.join(&name);
    let dir_fd = at::open_private_dir(dir).map_err(failed)?;
    Parent {
        dir: dir_fd,
        name: name.into(),
        path: kept.clone(),
    }
    .write_atomic(old, meta.mode, meta.owner(), |_| {})
    .map_err(failed)?;
    Ok(kept)
}
