//! `file.symlink`: a symbolic link to `target`, made under a temp name
//! and renamed over the path. Documented in docs/reference.md under
//! `### state: file.symlink`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{FileError, no_parent, parent_for_write};
use crate::at::{self, Found, Kind};
use crate::ctx::{Change, Ctx};
use crate::is_false;
use crate::ledger::Fingerprint;
use crate::types::StateType;
use crate::types::keys::{self, KeyError};

/// `file.symlink`: a symbolic link to `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSymlink {
    pub path: String,
    pub target: String,
    /// Replace a file (or empty directory) that is in the way.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub makedirs: bool,
}

/// What is wrong with a `file.symlink`'s keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("field `target` must be a non-empty path")]
    Target,
}

impl StateType for FileSymlink {
    type Invalid = Invalid;
    type Error = FileError;

    fn name(&self) -> String {
        self.path.clone()
    }

    fn path(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn validate(&self) -> Result<(), Invalid> {
        keys::absolute("path", &self.path)?;
        if self.target.is_empty() || self.target.contains('\0') {
            return Err(Invalid::Target);
        }
        Ok(())
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, FileError> {
        let f = self;
        let path = Path::new(&f.path);
        let parent = parent_for_write(path, f.makedirs, ctx.test)?;
        let current = match &parent {
            Some(p) => p.lstat()?,
            None => None,
        };
        let mut changes = Map::new();
        let mut clear_dir = false;
        match (&current, &parent) {
            (Some(m), Some(p)) if m.kind == Kind::Symlink => {
                let now = p.readlink()?;
                if now == Path::new(&f.target) {
                    return Ok(Change::none("link points at its target"));
                }
                changes.insert(
                    "target".into(),
                    json!({"old": now.display().to_string(), "new": f.target}),
                );
            }
            (Some(m), _) if !f.force => {
                return Err(FileError::InTheWay {
                    path: f.path.clone(),
                    what: if m.kind == Kind::Dir {
                        "directory"
                    } else {
                        "file"
                    },
                });
            }
            (Some(m), Some(p)) if m.kind == Kind::Dir => {
                let empty = match p.open()? {
                    Found::Dir(d, _) => at::list(&d, path)?.is_empty(),
                    _ => false,
                };
                if !empty {
                    return Err(FileError::NotEmpty {
                        path: f.path.clone(),
                    });
                }
                clear_dir = true;
                changes.insert("replaced".into(), json!(f.path));
                changes.insert("target".into(), json!({"new": f.target}));
            }
            (Some(_), _) => {
                changes.insert("replaced".into(), json!(f.path));
                changes.insert("target".into(), json!({"new": f.target}));
            }
            (None, _) => {
                changes.insert("target".into(), json!({"new": f.target}));
            }
        }
        let comment = if current.is_some() {
            "link updated"
        } else {
            "link created"
        };
        if ctx.test {
            return Ok(Change::would(comment, String::new(), changes));
        }
        let parent = parent.ok_or_else(|| no_parent(path))?;
        // A link made under a temp name, then renamed over the path: atomic,
        // and its fingerprint is known before it takes the path's place.
        parent.symlink_atomic(&f.target, clear_dir, |m| {
            ctx.will_leave(
                path,
                Fingerprint::Other {
                    kind: 'l',
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                },
            )
        })?;
        Ok(Change::changed(comment, String::new(), changes))
    }
}
