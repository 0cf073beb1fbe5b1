//! tend-state: the desired configuration of a server, and the engine that
//! makes it so.
//!
//! The master reads state files from its state tree ([`StateTree`]),
//! validates them, picks what the top file gives each minion, and renders
//! them (sources read, templates filled in with the minion's facts and the
//! triggering event) into [`State`]s: everything a minion needs. The minion
//! runs them with [`apply`], in requisite order: idempotently (a second run
//! changes nothing), or as a dry run that only says what would change. File
//! writes are announced in a [`Ledger`] before they happen, so the file
//! beacon can tell a restore from drift.

mod at;
mod cmd;
mod ctx;
mod engine;
mod mode;
mod owner;
mod parse;
mod target;
mod template;
mod tree;
pub mod types;

use serde::{Deserialize, Serialize};

pub use engine::{ApplyOptions, apply, order, run_status};
pub use mode::{Mode, ModeError};
pub use parse::parse_state_file;
pub use target::{Target, TargetError, TargetProblem};
pub use template::{
    Context as TemplateContext, TemplateError, render_shell as render_shell_template,
    render_with as render_template,
};
pub use tend_host::cmd::{
    Command, Output as CommandOutput, exec as run_command, set_command_umask,
};
use tend_host::ledger;
pub use tend_host::ledger::{Fingerprint, Ledger};
pub use tree::{StateTree, TopFile};
pub use types::Spec;

/// One state, ready to run on a minion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The id given in the state file.
    pub id: String,
    /// The state file it came from, by name (`motd`, `web.nginx`).
    pub sls: String,
    /// Its type and that type's keys.
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Requisites::is_empty")]
    pub requisites: Requisites,
    /// Declared `secret = true` in the state file: it holds something
    /// only the minions it is meant for may see.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
}

impl State {
    /// Whether the state holds a secret: declared `secret = true`, or a
    /// `file.managed` whose mode lets others no read (`0600`, `0640`):
    /// its author already said not everyone may read it.
    pub fn holds_secret(&self) -> bool {
        self.secret || self.spec.implies_secret()
    }
}

/// How a state depends on others, by state id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requisites {
    /// Run after these; skipped if one of them failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// As require; and when one of them changed, react (a service
    /// restarts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
    /// Run only when one of these changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onchanges: Vec<String>,
    /// Run only when one of these failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onfail: Vec<String>,
}

impl Requisites {
    /// No requisite at all.
    pub fn is_empty(&self) -> bool {
        self.require.is_empty()
            && self.watch.is_empty()
            && self.onchanges.is_empty()
            && self.onfail.is_empty()
    }

    /// Every state this one waits for.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.require
            .iter()
            .chain(&self.watch)
            .chain(&self.onchanges)
            .chain(&self.onfail)
    }
}

// For serde's `default` and `skip_serializing_if` in the state types.
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}
fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// A state file, a state in it, or a set of states that cannot be used;
/// the message names the file, the state and the key.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file as a whole: unreadable, not TOML, a cycle through it.
    #[error("{file}: {message}")]
    File { file: String, message: String },
    /// One state of the file: a key missing, unknown or unusable.
    #[error("{file}: state {state:?}: {message}")]
    Invalid {
        file: String,
        state: String,
        message: String,
    },
    #[error("state {name:?} not found: no {path} in the state tree")]
    NotFound { name: String, path: String },
    /// A path from a state file or a name that could leave the state root.
    #[error("refused path {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },
    /// Requisites that wait on each other (`a -> b -> a`).
    #[error("requisites form a cycle: {0}")]
    Cycle(String),
    /// A set of states that cannot be used, with who named it (a rule, a
    /// top file target), so the operator knows what to fix.
    #[error("{by}: {error}")]
    NamedBy {
        /// Who named the states: `FILE: rule "NAME"`, `top.toml: target #N`.
        by: String,
        error: Box<StateError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::file::managed::FileManaged;

    #[test]
    fn states_round_trip_as_json_and_refuse_unknown_fields() {
        let s = State {
            id: "m".into(),
            sls: "motd".into(),
            spec: Spec::FileManaged(FileManaged {
                path: "/etc/motd".into(),
                contents: Some("x".into()),
                source: None,
                template: false,
                mode: Some(Mode(0o644)),
                user: None,
                group: None,
                makedirs: false,
                backup: false,
            }),
            requisites: Requisites {
                require: vec!["a".into()],
                ..Default::default()
            },
            secret: false,
        };
        let json = serde_json::to_string(&[&s]).unwrap();
        assert!(json.contains(r#""type":"file.managed""#), "{json}");
        let back: Vec<State> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0], s);
        let bad = json.replace(r#""path":"/etc/motd""#, r#""path":"/etc/motd","evil":1"#);
        assert!(serde_json::from_str::<Vec<State>>(&bad).is_err());
    }
}
