//! `file.absent`: nothing at this path (a file, a link, or a whole
//! tree). Documented in docs/reference.md under `### state: file.absent`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::FileError;
use crate::at::{self, Kind};
use crate::ctx::{Change, Ctx};
use crate::ledger::Fingerprint;
use crate::types::StateType;
use crate::types::keys::{self, KeyError};

/// `file.absent`: nothing at this path (a file, a link, or a whole tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAbsent {
    pub path: String,
}

/// What is wrong with a `file.absent`'s keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("field `path`: refusing to remove /")]
    Root,
}

impl StateType for FileAbsent {
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
        if self.path.trim_end_matches('/').is_empty() {
            return Err(Invalid::Root);
        }
        Ok(())
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, FileError> {
        let f = self;
        let path = Path::new(&f.path);
        let Some(parent) = at::open_parent(path, false)? else {
            return Ok(Change::none("already absent"));
        };
        let Some(meta) = parent.lstat()? else {
            return Ok(Change::none("already absent"));
        };
        let what = if meta.kind == Kind::Dir {
            "directory tree removed"
        } else {
            "removed"
        };
        let mut changes = Map::new();
        changes.insert("removed".into(), json!(f.path));
        if ctx.test {
            return Ok(Change::would(what, String::new(), changes));
        }
        ctx.will_leave(path, Fingerprint::Absent);
        parent.remove()?;
        Ok(Change::changed(what, String::new(), changes))
    }
}
