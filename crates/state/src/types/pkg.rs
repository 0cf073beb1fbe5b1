//! `pkg.installed` and `pkg.removed`: a Debian package, through dpkg and
//! apt-get. The state checks with dpkg-query before it changes anything;
//! under `--test`, `pkg.installed` also asks apt-cache whether the package
//! can be installed at all, so a misspelt name fails the dry run instead
//! of the real one.
//! Documented in docs/reference.md under `### state: pkg.installed` and
//! `### state: pkg.removed`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::StateType;
use crate::Command;
use crate::cmd::{CommandError, Output, exec};
use crate::ctx::{Change, Ctx};

const TIMEOUT: Duration = Duration::from_secs(900);

/// The keys of `pkg.installed` and `pkg.removed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkg {
    pub name: String,
}

/// `pkg.installed`: the package is installed (any version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PkgInstalled(pub Pkg);

/// `pkg.removed`: the package is not installed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PkgRemoved(pub Pkg);

/// A `name` dpkg would not take.
#[derive(Debug, thiserror::Error)]
#[error("field `name`: {name:?} is not a Debian package name")]
pub(crate) struct NotPackageName {
    name: String,
}

/// Why a package state could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PkgError {
    #[error("{0} (package states need dpkg: a Debian-based system)")]
    NoDpkg(CommandError),
    /// apt-get could not be run (or did not finish).
    #[error("{0}")]
    AptGet(CommandError),
    /// `--test`: apt knows no installable version of the package.
    #[error(
        "package {name:?} {why}: apt-get install would fail. Check the name (apt-cache search {name}){hint}"
    )]
    NotAvailable {
        name: String,
        why: &'static str,
        hint: &'static str,
    },
    #[error("apt-get {verb} {name} failed ({status}): {stderr}")]
    Failed {
        verb: &'static str,
        name: String,
        status: i32,
        stderr: String,
    },
}

impl Pkg {
    fn validate(&self) -> Result<(), NotPackageName> {
        let name = &self.name;
        let ok = name.len() >= 2
            && name.len() <= 128
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
            });
        if ok {
            Ok(())
        } else {
            Err(NotPackageName { name: name.clone() })
        }
    }
}

impl StateType for PkgInstalled {
    type Invalid = NotPackageName;
    type Error = PkgError;

    fn name(&self) -> String {
        self.0.name.clone()
    }

    fn validate(&self) -> Result<(), NotPackageName> {
        self.0.validate()
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, PkgError> {
        let p = &self.0;
        if let Some(v) = installed_version(&p.name)? {
            return Ok(Change::none(format!("installed ({v})")));
        }
        let mut changes = Map::new();
        if ctx.test {
            let comment = match candidate(&p.name)? {
                Candidate::Version(v) => format!("installed ({v})"),
                // The run fetches the lists first; nothing to check now.
                Candidate::NoLists => {
                    "installed (not checked: this host has no package lists yet)".into()
                }
                Candidate::Unknown => return Err(not_available(p, "is not known to apt")),
                Candidate::None => {
                    return Err(not_available(p, "has no installable version"));
                }
            };
            changes.insert("installed".into(), json!(p.name));
            return Ok(Change::would(comment, String::new(), changes));
        }
        let install = || {
            apt(&[
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                &p.name,
            ])
        };
        let mut out = install()?;
        if out.status != 0 && out.stderr.contains("Unable to locate package") {
            // Package lists may never have been fetched on this host.
            let _ = apt(&["apt-get", "update"]);
            out = install()?;
        }
        if out.status != 0 {
            return Err(failed("install", p, &out));
        }
        let v = installed_version(&p.name)?.unwrap_or_default();
        changes.insert("installed".into(), json!({"name": p.name, "version": v}));
        Ok(Change::changed(
            format!("installed ({v})"),
            String::new(),
            changes,
        ))
    }
}

impl StateType for PkgRemoved {
    type Invalid = NotPackageName;
    type Error = PkgError;

    fn name(&self) -> String {
        self.0.name.clone()
    }

    fn validate(&self) -> Result<(), NotPackageName> {
        self.0.validate()
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, PkgError> {
        let p = &self.0;
        let Some(v) = installed_version(&p.name)? else {
            return Ok(Change::none("not installed"));
        };
        let mut changes = Map::new();
        changes.insert("removed".into(), json!({"name": p.name, "version": v}));
        if ctx.test {
            return Ok(Change::would("removed", String::new(), changes));
        }
        let out = apt(&["apt-get", "remove", "-y", &p.name])?;
        if out.status != 0 {
            return Err(failed("remove", p, &out));
        }
        Ok(Change::changed("removed", String::new(), changes))
    }
}

fn not_available(p: &Pkg, why: &'static str) -> PkgError {
    PkgError::NotAvailable {
        name: p.name.clone(),
        why,
        hint: if why.starts_with("has no") {
            "; a virtual package needs the package that provides it named"
        } else {
            ", or run apt-get update if the package lists are old"
        },
    }
}

fn failed(verb: &'static str, p: &Pkg, out: &Output) -> PkgError {
    PkgError::Failed {
        verb,
        name: p.name.clone(),
        status: out.status,
        stderr: out.stderr.trim().to_string(),
    }
}

/// Runs a dpkg or apt-get command line, never asking questions;
/// `cannot` says what it means that it could not be run.
fn run(argv: &[&str], cannot: fn(CommandError) -> PkgError) -> Result<Output, PkgError> {
    let env_key = "DEBIAN_FRONTEND".to_string();
    let env_val = "noninteractive".to_string();
    exec(
        &Command::Argv(argv.iter().map(|s| s.to_string()).collect()),
        None,
        &[(&env_key, &env_val)],
        TIMEOUT,
    )
    .map_err(cannot)
}

fn apt(argv: &[&str]) -> Result<Output, PkgError> {
    run(argv, PkgError::AptGet)
}

/// The installed version, if the package is installed.
fn installed_version(name: &str) -> Result<Option<String>, PkgError> {
    let out = run(
        &["dpkg-query", "-W", "-f=${Status}\t${Version}", name],
        PkgError::NoDpkg,
    )?;
    if out.status != 0 {
        return Ok(None);
    }
    Ok(out
        .stdout
        .split_once('\t')
        .filter(|(status, _)| status.ends_with(" installed"))
        .map(|(_, v)| v.to_string()))
}

/// What apt would install for a package.
#[derive(Debug, PartialEq)]
enum Candidate {
    Version(String),
    /// apt knows the package but has no version to install (a virtual
    /// package, say).
    None,
    /// apt does not know the name.
    Unknown,
    /// apt has no package lists at all (never fetched): nothing can be
    /// told.
    NoLists,
}

/// Asks `apt-cache policy` what `apt-get install name` would install.
fn candidate(name: &str) -> Result<Candidate, PkgError> {
    let out = apt(&["apt-cache", "policy", name])?;
    if out.status != 0 {
        return Err(failed("cache policy", &Pkg { name: name.into() }, &out));
    }
    match parse_candidate(&out.stdout) {
        Candidate::Unknown => {
            let all = apt(&["apt-cache", "policy"])?;
            Ok(if has_lists(&all.stdout) {
                Candidate::Unknown
            } else {
                Candidate::NoLists
            })
        }
        c => Ok(c),
    }
}

/// The `Candidate:` line of `apt-cache policy NAME` (empty output: apt
/// does not know the name).
fn parse_candidate(policy: &str) -> Candidate {
    match policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
    {
        None => Candidate::Unknown,
        Some("(none)") => Candidate::None,
        Some(v) => Candidate::Version(v.to_string()),
    }
}

/// Whether `apt-cache policy` (no name) lists any package file besides
/// dpkg's own status file: whether package lists were ever fetched.
fn has_lists(policy: &str) -> bool {
    policy
        .lines()
        .any(|l| l.trim_end().ends_with(" Packages") && !l.contains("/dpkg/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_cache_policy_is_read() {
        let known =
            "bash:\n  Installed: 5.2.15-2+b8\n  Candidate: 5.2.15-2+b13\n  Version table:\n";
        assert_eq!(
            parse_candidate(known),
            Candidate::Version("5.2.15-2+b13".into())
        );
        let virt =
            "mail-transport-agent:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        assert_eq!(parse_candidate(virt), Candidate::None);
        assert_eq!(parse_candidate(""), Candidate::Unknown);

        let fetched = "Package files:\n 100 /var/lib/dpkg/status\n     release a=now\n \
            500 http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert!(has_lists(fetched));
        let never =
            "Package files:\n 100 /var/lib/dpkg/status\n     release a=now\nPinned packages:\n";
        assert!(!has_lists(never));
    }
}
