//! tend-state: the desired configuration of a server, and the engine that
//! makes it so.
//!
//! The master reads state files from its state tree ([`StateTree`]),
//! validates them and renders them into [`State`]s: everything a minion
//! needs, with sources already read. The minion runs them with [`apply`]:
//! idempotently (a second run changes nothing), or as a dry run that only
//! shows what would change. File writes are announced in a [`Ledger`]
//! before they happen, so the file beacon can tell a restore from drift.

mod engine;
mod file;
mod ledger;
mod mode;
mod parse;
mod tree;

use serde::{Deserialize, Serialize};

pub use engine::{ApplyOptions, apply};
pub use ledger::{Fingerprint, Ledger};
pub use mode::Mode;
pub use parse::parse_state_file;
pub use tree::StateTree;

/// One state, resolved and ready to run on a minion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The id given in the state file.
    pub id: String,
    /// The state file it came from, by name (`motd`, `web.nginx`).
    pub sls: String,
    pub spec: Spec,
}

/// What a state does: one variant per state type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Spec {
    #[serde(rename = "file.managed")]
    FileManaged(FileManaged),
}

impl Spec {
    /// The state type as written in state files.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::FileManaged(_) => "file.managed",
        }
    }

    /// What the state is about, for results (a path, a service name).
    pub fn name(&self) -> &str {
        match self {
            Spec::FileManaged(f) => &f.path,
        }
    }
}

/// `file.managed`: a file with exactly these contents (and mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileManaged {
    /// Absolute path on the minion.
    pub path: String,
    /// The contents. In a state file either `contents` or `source` is
    /// given; the master reads a source into `contents` before sending.
    pub contents: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Create missing parent directories.
    #[serde(default)]
    pub makedirs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}: state {state:?}: {message}")]
    Invalid {
        file: String,
        state: String,
        message: String,
    },
    #[error("state {name:?} not found: no {path} in the state tree")]
    NotFound { name: String, path: String },
    #[error("refused path {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_as_json_and_refuse_unknown_fields() {
        let s = State {
            id: "m".into(),
            sls: "motd".into(),
            spec: Spec::FileManaged(FileManaged {
                path: "/etc/motd".into(),
                contents: "x".into(),
                mode: Some(Mode(0o644)),
                makedirs: false,
            }),
        };
        let json = serde_json::to_string(&[&s]).unwrap();
        assert!(json.contains(r#""type":"file.managed""#), "{json}");
        let back: Vec<State> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0], s);
        let bad = json.replace(r#""makedirs":false"#, r#""makedirs":false,"evil":1"#);
        assert!(serde_json::from_str::<Vec<State>>(&bad).is_err());
    }
}
