//! `file.directory`: a directory with this mode and owner, and with
//! `clean`, nothing in it that no state of the run manages. Documented in
//! docs/reference.md under `### state: file.directory`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{Attrs, DEFAULT_DIR_MODE, FileError, no_parent, parent_for_write, wanted_owner};
use crate::at::{self, Found, Meta};
use crate::ctx::{Change, Ctx};
use crate::ledger::Fingerprint;
use crate::mode::Mode;
use crate::owner;
use crate::types::StateType;
use crate::types::keys::{self, KeyError};
use crate::{is_false, is_true, yes};

/// `file.directory`: a directory with this mode and owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirectory {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Create missing parents.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub makedirs: bool,
    /// Remove entries no other state in the same run manages.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clean: bool,
}

impl StateType for FileDirectory {
    type Invalid = KeyError;
    type Error = FileError;

    fn name(&self) -> String {
        self.path.clone()
    }

    fn path(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn validate(&self) -> Result<(), KeyError> {
        keys::absolute("path", &self.path)?;
        keys::owner("user", &self.user)?;
        keys::owner("group", &self.group)
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, FileError> {
        let f = self;
        let path = Path::new(&f.path);
        let parent = parent_for_write(path, f.makedirs, ctx.test)?;
        let found = match &parent {
            Some(p) => p.open()?,
            None => Found::Missing,
        };
        if matches!(found, Found::File(..) | Found::Other(_)) {
            return Err(FileError::NotDirectory {
                path: f.path.clone(),
            });
        }
        let base = found.meta().map_or(owner::current(), Meta::owner);
        let (uid, gid) = wanted_owner(&f.user, &f.group, base)?;
        let mut changes = Map::new();
        let mut did = Vec::new();
        let mode = f.mode.map(|m| m.0);
        // The directory, open, once it exists: its mode, owner and entries
        // are all handled through this descriptor.
        let mut opened = None;
        match found {
            Found::Missing => {
                changes.insert("directory".into(), json!("created"));
                did.push("created");
                if !ctx.test {
                    let parent = parent.as_ref().ok_or_else(|| no_parent(path))?;
                    let m = mode.unwrap_or(DEFAULT_DIR_MODE);
                    ctx.will_leave(
                        path,
                        Fingerprint::Other {
                            kind: 'd',
                            mode: m,
                            uid,
                            gid,
                        },
                    );
                    // Made 0700 and ours; given its owner and mode through
                    // the descriptor once it is checked to be the one made.
                    let (dir, made) = parent.mkdir()?;
                    let new_owner = (made.owner() != (uid, gid)).then_some((uid, gid));
                    at::set_attrs(&dir, new_owner, Some(m), &f.path)?;
                    opened = Some(dir);
                }
            }
            Found::Dir(dir, meta) => {
                let attrs = Attrs::diff(&meta, mode, (uid, gid));
                if !attrs.is_empty() {
                    attrs.report(&mut changes);
                    did.push("mode or owner updated");
                    if !ctx.test {
                        ctx.will_leave(
                            path,
                            Fingerprint::Other {
                                kind: 'd',
                                mode: attrs.mode.map_or(meta.mode, |(_, m)| m),
                                uid,
                                gid,
                            },
                        );
                        attrs.apply(&dir, &f.path)?;
                    }
                }
                opened = Some(dir);
            }
            Found::File(..) | Found::Other(_) => unreachable!("refused above"),
        }
        if f.clean
            && let Some(dir) = &opened
        {
            let mut removed = Vec::new();
            for name in at::list(dir, path)? {
                let p = path.join(&name);
                let ps = p.to_string_lossy();
                let kept = ctx
                    .managed_paths
                    .iter()
                    .filter(|m| m.as_str() != f.path)
                    .any(|m| m.as_str() == ps || m.starts_with(&format!("{ps}/")));
                if kept {
                    continue;
                }
                removed.push(ps.to_string());
                if !ctx.test {
                    ctx.will_leave(&p, Fingerprint::Absent);
                    at::remove_at(dir, &name, &p)?;
                }
            }
            if !removed.is_empty() {
                removed.sort();
                changes.insert("removed".into(), json!(removed));
                did.push("unmanaged entries removed");
            }
        }
        if did.is_empty() {
            return Ok(Change::none("directory is in the correct state"));
        }
        Ok(Change::did(
            ctx.test,
            did.join(", "),
            String::new(),
            changes,
        ))
    }
}
