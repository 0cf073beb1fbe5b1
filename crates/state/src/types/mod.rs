//! The state types, and the one registry that lists them.
//!
//! A state type is one module: its config (the keys a state file gives
//! it, `serde(deny_unknown_fields)`), what serde cannot check about them
//! (`StateType::validate`), and how it makes them so
//! (`StateType::run`: idempotent, a dry run when `ctx.test`, a diff
//! where there is one). Each is documented in docs/reference.md under
//! `### state: <type>`; a test here fails when one is not.
//!
//! Adding a type is its module (a `pub mod` line here, or in `file` for a
//! file state) plus one line in the `registry!` list below: the [`Spec`]
//! variant, [`TYPES`] (what parses) and the dispatch from `Spec` to the
//! type all come from that line, so none of them can drift from the
//! others.

pub mod cmd_run;
pub mod file;
mod keys;
pub mod pkg;
pub mod service;

use serde::{Deserialize, Serialize};

use crate::StateError;
use crate::ctx::{Change, Ctx};

/// One state type, implemented by its config.
pub(crate) trait StateType {
    /// What can be wrong with the keys serde accepted (the message names
    /// the key; the caller adds the file and the state).
    type Invalid: std::error::Error;
    /// What can stop a run.
    type Error: std::error::Error;

    /// What the state is about, for results (a path, a command, a unit).
    fn name(&self) -> String;

    /// The path it manages, for file states (`file.directory`'s `clean`
    /// leaves the run's own paths alone).
    fn path(&self) -> Option<&str> {
        None
    }

    /// Whether its keys alone say it holds a secret (a `file.managed`
    /// others may not read), without `secret = true`.
    fn implies_secret(&self) -> bool {
        false
    }

    /// What serde cannot check: paths, names, combinations of keys.
    fn validate(&self) -> Result<(), Self::Invalid>;

    /// Makes the state so, or in a dry run (`ctx.test`) says what would
    /// change. A second run changes nothing.
    fn run(&self, ctx: &Ctx) -> Result<Change, Self::Error>;
}

/// Defines [`Spec`], [`TYPES`] and the dispatch from a `Spec` to its type
/// from one list of `"type.name" => Variant(Config)` lines.
macro_rules! registry {
    ($($kind:literal => $variant:ident($config:ty),)*) => {
        /// What a state does: one variant per state type, tagged by `type`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", deny_unknown_fields)]
        pub enum Spec {
            $(
                #[doc = concat!("`", $kind, "`")]
                #[serde(rename = $kind)]
                $variant($config),
            )*
        }

        /// Every state type, as written in state files.
        pub const TYPES: &[&str] = &[$($kind),*];

        impl Spec {
            /// The state type as written in state files.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Spec::$variant(_) => $kind,)*
                }
            }

            /// What the state is about, for results (a path, a command, a
            /// name).
            pub fn name(&self) -> String {
                match self {
                    $(Spec::$variant(c) => c.name(),)*
                }
            }

            /// The path a file state manages (for `file.directory`'s
            /// `clean`).
            pub fn path(&self) -> Option<&str> {
                match self {
                    $(Spec::$variant(c) => c.path(),)*
                }
            }

            /// Whether its keys alone say it holds a secret.
            pub(crate) fn implies_secret(&self) -> bool {
                match self {
                    $(Spec::$variant(c) => c.implies_secret(),)*
                }
            }

            /// Checks what serde cannot, for state `state` of file `file`.
            pub(crate) fn validate(&self, file: &str, state: &str) -> Result<(), StateError> {
                let invalid = |e: &dyn std::error::Error| StateError::Invalid {
                    file: file.to_string(),
                    state: state.to_string(),
                    message: e.to_string(),
                };
                match self {
                    $(Spec::$variant(c) => c.validate().map_err(|e| invalid(&e)),)*
                }
            }

            /// Runs the state; a run that cannot finish is a failed
            /// change saying why.
            pub(crate) fn run(&self, ctx: &Ctx) -> Change {
                let failed = |e: &dyn std::error::Error| Change::failed(e.to_string());
                match self {
                    $(Spec::$variant(c) => c.run(ctx).unwrap_or_else(|e| failed(&e)),)*
                }
            }
        }
    };
}

registry! {
    "file.managed" => FileManaged(file::managed::FileManaged),
    "file.absent" => FileAbsent(file::absent::FileAbsent),
    "file.directory" => FileDirectory(file::directory::FileDirectory),
    "file.symlink" => FileSymlink(file::symlink::FileSymlink),
    "file.line" => FileLine(file::line::FileLine),
    "cmd.run" => CmdRun(cmd_run::CmdRun),
    "service.running" => ServiceRunning(service::ServiceRunning),
    "service.dead" => ServiceDead(service::ServiceDead),
    "pkg.installed" => PkgInstalled(pkg::PkgInstalled),
    "pkg.removed" => PkgRemoved(pkg::PkgRemoved),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_its_type_tag_beside_its_keys_on_the_wire() {
        for (json, kind) in [
            (
                r#"{"type":"service.running","name":"nginx","enable":true}"#,
                "service.running",
            ),
            (r#"{"type":"pkg.removed","name":"telnet"}"#, "pkg.removed"),
            (r#"{"type":"file.absent","path":"/tmp/x"}"#, "file.absent"),
        ] {
            let spec: Spec = serde_json::from_str(json).unwrap();
            assert_eq!(spec.kind(), kind);
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
        }
        let e = serde_json::from_str::<Spec>(r#"{"type":"service.dead","name":"x","nme":1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `nme`, expected `name` or `enable`"),
            "{e}"
        );
    }

    #[test]
    fn every_state_type_has_an_entry_in_the_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reference.md");
        let doc = std::fs::read_to_string(path).expect("docs/reference.md");
        let missing: Vec<&str> = TYPES
            .iter()
            .copied()
            .filter(|t| !doc.contains(&format!("\n### state: {t}\n")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/reference.md has no `### state: <type>` entry for: {}",
            missing.join(", ")
        );
    }
}
