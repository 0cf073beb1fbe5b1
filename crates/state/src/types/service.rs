//! `service.running` and `service.dead`: a systemd unit's state, through
//! systemctl. Where systemd does not run (a container, a chroot), the
//! state fails and says so. Documented in docs/reference.md under
//! `### state: service.running` and `### state: service.dead`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::StateType;
use crate::Command;
use crate::cmd::{CommandError, Output, exec};
use crate::ctx::{Change, Ctx};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The keys of `service.running` and `service.dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Also enabled (or disabled) at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

/// `service.running`: the unit runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceRunning(pub Service);

/// `service.dead`: the unit is stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceDead(pub Service);

/// A `name` systemd would not take.
#[derive(Debug, thiserror::Error)]
#[error("field `name`: {name:?} is not a systemd unit name")]
pub(crate) struct NotUnitName {
    name: String,
}

/// Why a service state could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error(
        "systemd is not running on this machine (no /run/systemd/system): service states need it"
    )]
    NoSystemd,
    /// systemctl could not be run (or did not finish).
    #[error("{0}")]
    Systemctl(CommandError),
    #[error("systemctl {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: i32,
        stderr: String,
    },
}

impl Service {
    fn validate(&self) -> Result<(), NotUnitName> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 256
            && self.name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')
            });
        if ok {
            Ok(())
        } else {
            Err(NotUnitName {
                name: self.name.clone(),
            })
        }
    }

    /// Enables or disables the unit at boot, as `want` says.
    fn enablement(
        &self,
        want: bool,
        ctx: &Ctx,
        changes: &mut Map<String, serde_json::Value>,
        did: &mut Vec<String>,
    ) -> Result<(), ServiceError> {
        let enabled = check(&["is-enabled", "--quiet", &self.name])?;
        if enabled != want {
            let verb = if want { "enable" } else { "disable" };
            changes.insert("enabled".into(), json!(want));
            did.push(format!("{verb}d"));
            if !ctx.test {
                act(&[verb, &self.name])?;
            }
        }
        Ok(())
    }
}

impl StateType for ServiceRunning {
    type Invalid = NotUnitName;
    type Error = ServiceError;

    fn name(&self) -> String {
        self.0.name.clone()
    }

    fn validate(&self) -> Result<(), NotUnitName> {
        self.0.validate()
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, ServiceError> {
        let s = &self.0;
        systemd()?;
        let active = check(&["is-active", "--quiet", &s.name])?;
        let mut changes = Map::new();
        let mut did = Vec::new();
        if !active {
            changes.insert("running".into(), json!(true));
            did.push("started".to_string());
            if !ctx.test {
                act(&["start", &s.name])?;
            }
        } else if !ctx.watch_fired.is_empty() {
            changes.insert("restarted".into(), json!(ctx.watch_fired));
            did.push(format!(
                "restarted ({} changed)",
                ctx.watch_fired.join(", ")
            ));
            if !ctx.test {
                act(&["restart", &s.name])?;
            }
        }
        s.finish(ctx, changes, did, "running")
    }
}

impl StateType for ServiceDead {
    type Invalid = NotUnitName;
    type Error = ServiceError;

    fn name(&self) -> String {
        self.0.name.clone()
    }

    fn validate(&self) -> Result<(), NotUnitName> {
        self.0.validate()
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, ServiceError> {
        let s = &self.0;
        systemd()?;
        let active = check(&["is-active", "--quiet", &s.name])?;
        let mut changes = Map::new();
        let mut did = Vec::new();
        if active {
            changes.insert("running".into(), json!(false));
            did.push("stopped".to_string());
            if !ctx.test {
                act(&["stop", &s.name])?;
            }
        }
        s.finish(ctx, changes, did, "not running")
    }
}

impl Service {
    /// What both states end with: enablement as asked, then the change
    /// (or `unchanged`, when nothing was done).
    fn finish(
        &self,
        ctx: &Ctx,
        mut changes: Map<String, serde_json::Value>,
        mut did: Vec<String>,
        unchanged: &str,
    ) -> Result<Change, ServiceError> {
        if let Some(want) = self.enable {
            self.enablement(want, ctx, &mut changes, &mut did)?;
        }
        if did.is_empty() {
            return Ok(Change::none(unchanged));
        }
        Ok(Change::did(
            ctx.test,
            did.join(", "),
            String::new(),
            changes,
        ))
    }
}

fn systemd() -> Result<(), ServiceError> {
    if Path::new("/run/systemd/system").is_dir() {
        Ok(())
    } else {
        Err(ServiceError::NoSystemd)
    }
}

fn systemctl(args: &[&str]) -> Result<Output, ServiceError> {
    let mut argv = vec!["systemctl".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    exec(&Command::Argv(argv), None, &[], TIMEOUT).map_err(ServiceError::Systemctl)
}

fn check(args: &[&str]) -> Result<bool, ServiceError> {
    Ok(systemctl(args)?.status == 0)
}

fn act(args: &[&str]) -> Result<(), ServiceError> {
    let out = systemctl(args)?;
    if out.status == 0 {
        Ok(())
    } else {
        Err(ServiceError::Failed {
            args: args.join(" "),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        })
    }
}
