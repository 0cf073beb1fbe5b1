//! `file.line`: one line of a file, present, absent or replaced; the
//! rest of the file, its mode and its owner are kept. Documented in
//! docs/reference.md under `### state: file.line`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::{FileError, read_all, unified_diff};
use crate::at::{self, Found};
use crate::ctx::{Change, Ctx};
use crate::is_default;
use crate::ledger::{Fingerprint, sha256_bytes};
use crate::types::StateType;
use crate::types::keys::{self, KeyError};

/// What `file.line` makes true.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnsure {
    /// `line` is in the file: the first line matching `match` becomes
    /// `line`, or `line` is appended.
    #[default]
    Present,
    /// No line matches `match` (or equals `line`).
    Absent,
    /// Every line matching `match` becomes `line`; nothing is added.
    Replace,
}

/// `file.line`: one line of a file, present, absent or replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLine {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// A regular expression the line to act on matches.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub ensure: LineEnsure,
}

/// What is wrong with a `file.line`'s keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("field `match`: {0}")]
    Match(regex::Error),
    #[error("missing field `line` (the line to have in the file)")]
    NoLine,
    #[error("missing field `match` (which lines to replace)")]
    NoMatch,
    #[error("give `line` or `match`: which lines must be absent")]
    NeitherForAbsent,
    #[error("field `line` must be one line")]
    MultiLine,
}

impl StateType for FileLine {
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
        if let Some(p) = &self.pattern {
            regex::Regex::new(p).map_err(Invalid::Match)?;
        }
        match self.ensure {
            LineEnsure::Present | LineEnsure::Replace if self.line.is_none() => {
                return Err(Invalid::NoLine);
            }
            LineEnsure::Replace if self.pattern.is_none() => return Err(Invalid::NoMatch),
            LineEnsure::Absent if self.line.is_none() && self.pattern.is_none() => {
                return Err(Invalid::NeitherForAbsent);
            }
            _ => {}
        }
        if self.line.as_deref().is_some_and(|l| l.contains('\n')) {
            return Err(Invalid::MultiLine);
        }
        Ok(())
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, FileError> {
        let f = self;
        let path = Path::new(&f.path);
        let parent = at::open_parent(path, false)?.ok_or_else(|| FileError::Missing {
            path: f.path.clone(),
        })?;
        // Read through the descriptor that was checked to be a regular file,
        // and written back with the mode and owner that same file had.
        let (file, meta) = match parent.open()? {
            Found::File(file, meta) => (file, meta),
            Found::Missing => {
                return Err(FileError::Missing {
                    path: f.path.clone(),
                });
            }
            Found::Dir(..) | Found::Other(_) => {
                return Err(FileError::NotRegular {
                    path: f.path.clone(),
                });
            }
        };
        let old =
            String::from_utf8(read_all(&file, &f.path)?).map_err(|error| FileError::NotText {
                path: f.path.clone(),
                error,
            })?;
        let re = f
            .pattern
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(FileError::BadMatch)?;
        let hits = |l: &str| match (&re, &f.line) {
            (Some(re), _) => re.is_match(l),
            (None, Some(want)) => l == want,
            (None, None) => false,
        };
        let trailing_newline = old.ends_with('\n') || old.is_empty();
        let mut lines: Vec<String> = old.lines().map(String::from).collect();
        match f.ensure {
            LineEnsure::Present => {
                let want = f.line.clone().unwrap_or_default();
                if !lines.contains(&want) {
                    match lines.iter().position(|l| hits(l)) {
                        Some(i) => lines[i] = want,
                        None => lines.push(want),
                    }
                }
            }
            LineEnsure::Absent => lines.retain(|l| !hits(l)),
            LineEnsure::Replace => {
                let want = f.line.clone().unwrap_or_default();
                for l in lines.iter_mut().filter(|l| hits(l)) {
                    *l = want.clone();
                }
            }
        }
        let mut new = lines.join("\n");
        if trailing_newline && !new.is_empty() {
            new.push('\n');
        }
        if new == old {
            return Ok(Change::none("line is in the correct state"));
        }
        let diff = unified_diff(&f.path, Some(old.as_bytes()), new.as_bytes());
        let mut changes = Map::new();
        changes.insert(
            "line".into(),
            json!(format!("{:?}", f.ensure).to_lowercase()),
        );
        if ctx.test {
            return Ok(Change::would("line changed", diff, changes));
        }
        let bytes = new.into_bytes();
        parent.write_atomic(&bytes, meta.mode, meta.owner(), |written| {
            ctx.will_leave(
                path,
                Fingerprint::File {
                    sha256: sha256_bytes(&bytes),
                    mode: written.mode,
                    uid: written.uid,
                    gid: written.gid,
                },
            )
        })?;
        Ok(Change::changed("line changed", diff, changes))
    }
}
