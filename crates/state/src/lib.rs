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
mod engine;
mod file;
mod mode;
mod owner;
mod parse;
mod pkg;
mod service;
mod target;
mod template;
mod tree;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use engine::{ApplyOptions, apply, order};
pub use mode::Mode;
pub use parse::parse_state_file;
pub use target::{Target, TargetError};
pub use template::{
    Context as TemplateContext, render_shell as render_shell_template,
    render_with as render_template,
};
pub use tend_host::cmd::{
    Command, Output as CommandOutput, exec as run_command, set_command_umask,
};
use tend_host::ledger;
pub use tend_host::ledger::{Fingerprint, Ledger};
pub use tree::{StateTree, TopFile};

/// One state, ready to run on a minion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The id given in the state file.
    pub id: String,
    /// The state file it came from, by name (`motd`, `web.nginx`).
    pub sls: String,
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
        self.secret
            || matches!(&self.spec, Spec::FileManaged(f) if f.mode.is_some_and(|m| m.0 & 0o004 == 0))
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

/// What a state does: one variant per state type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Spec {
    #[serde(rename = "file.managed")]
    FileManaged(FileManaged),
    #[serde(rename = "file.absent")]
    FileAbsent(FileAbsent),
    #[serde(rename = "file.directory")]
    FileDirectory(FileDirectory),
    #[serde(rename = "file.symlink")]
    FileSymlink(FileSymlink),
    #[serde(rename = "file.line")]
    FileLine(FileLine),
    #[serde(rename = "cmd.run")]
    CmdRun(CmdRun),
    #[serde(rename = "service.running")]
    ServiceRunning(Service),
    #[serde(rename = "service.dead")]
    ServiceDead(Service),
    #[serde(rename = "pkg.installed")]
    PkgInstalled(Pkg),
    #[serde(rename = "pkg.removed")]
    PkgRemoved(Pkg),
}

/// Every state type, as written in state files.
pub const TYPES: &[&str] = &[
    "file.managed",
    "file.absent",
    "file.directory",
    "file.symlink",
    "file.line",
    "cmd.run",
    "service.running",
    "service.dead",
    "pkg.installed",
    "pkg.removed",
];

impl Spec {
    /// The state type as written in state files.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::FileManaged(_) => "file.managed",
            Spec::FileAbsent(_) => "file.absent",
            Spec::FileDirectory(_) => "file.directory",
            Spec::FileSymlink(_) => "file.symlink",
            Spec::FileLine(_) => "file.line",
            Spec::CmdRun(_) => "cmd.run",
            Spec::ServiceRunning(_) => "service.running",
            Spec::ServiceDead(_) => "service.dead",
            Spec::PkgInstalled(_) => "pkg.installed",
            Spec::PkgRemoved(_) => "pkg.removed",
        }
    }

    /// What the state is about, for results (a path, a command, a name).
    pub fn name(&self) -> String {
        match self {
            Spec::FileManaged(f) => f.path.clone(),
            Spec::FileAbsent(f) => f.path.clone(),
            Spec::FileDirectory(f) => f.path.clone(),
            Spec::FileSymlink(f) => f.path.clone(),
            Spec::FileLine(f) => f.path.clone(),
            Spec::CmdRun(c) => c.command.display(),
            Spec::ServiceRunning(s) | Spec::ServiceDead(s) => s.name.clone(),
            Spec::PkgInstalled(p) | Spec::PkgRemoved(p) => p.name.clone(),
        }
    }

    /// The path a file state manages (for `file.directory`'s `clean`).
    pub fn path(&self) -> Option<&str> {
        match self {
            Spec::FileManaged(f) => Some(&f.path),
            Spec::FileAbsent(f) => Some(&f.path),
            Spec::FileDirectory(f) => Some(&f.path),
            Spec::FileSymlink(f) => Some(&f.path),
            Spec::FileLine(f) => Some(&f.path),
            _ => None,
        }
    }
}

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

/// `file.absent`: nothing at this path (a file, a link, or a whole tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAbsent {
    pub path: String,
}

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

/// `cmd.run`: run a command (unless it is not needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmdRun {
    pub command: Command,
    /// Skip when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<Command>,
    /// Run only when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onlyif: Option<Command>,
    /// Skip when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds before the command is killed (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// `service.running` / `service.dead`: a systemd unit's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Also enabled (or disabled) at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

/// `pkg.installed` / `pkg.removed`: a Debian package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkg {
    pub name: String,
}

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
    #[error("requisites form a cycle: {0}")]
    Cycle(String),
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
