//! `cmd.run`: run a command, unless `unless`, `onlyif` or `creates` say it
//! is not needed. Exit status 0 is a change; anything else is a failure.
//! Documented in docs/reference.md under `### state: cmd.run`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use tend_proto::v1::Outcome;

use super::StateType;
use super::keys::{self, KeyError};
use crate::Command;
use crate::cmd::{CommandError, exec};
use crate::ctx::{Change, Ctx};

/// Seconds a command may run when the state gives no `timeout`.
const DEFAULT_TIMEOUT: u64 = 600;

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

/// What is wrong with a `cmd.run`'s keys.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CmdRunInvalid {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("field `timeout` must be 1 to 86400 seconds")]
    Timeout,
}

/// A command (the state's, or a check) that could not be run or did not
/// finish in time; a command that ran and failed is a failed change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CannotRun(CommandError);

impl StateType for CmdRun {
    type Invalid = CmdRunInvalid;
    type Error = CannotRun;

    fn name(&self) -> String {
        self.command.display()
    }

    fn validate(&self) -> Result<(), CmdRunInvalid> {
        keys::command("command", &self.command)?;
        if let Some(u) = &self.unless {
            keys::command("unless", u)?;
        }
        if let Some(o) = &self.onlyif {
            keys::command("onlyif", o)?;
        }
        if let Some(p) = &self.creates {
            keys::absolute("creates", p)?;
        }
        if let Some(p) = &self.cwd {
            keys::absolute("cwd", p)?;
        }
        if self.timeout.is_some_and(|t| t == 0 || t > 86_400) {
            return Err(CmdRunInvalid::Timeout);
        }
        Ok(())
    }

    fn run(&self, ctx: &Ctx) -> Result<Change, CannotRun> {
        let env: Vec<(&String, &String)> = self.env.iter().collect();
        let timeout = Duration::from_secs(self.timeout.unwrap_or(DEFAULT_TIMEOUT));
        let cwd = self.cwd.as_deref();
        let exec = |c: &Command| exec(c, cwd, &env, timeout).map_err(CannotRun);
        if let Some(p) = &self.creates
            && Path::new(p).exists()
        {
            return Ok(Change::none(format!("not run: {p} exists (creates)")));
        }
        // The checks run in dry runs too: they are how we know what would run.
        if let Some(u) = &self.unless
            && exec(u)?.status == 0
        {
            return Ok(Change::none(format!(
                "not run: `{}` succeeded (unless)",
                u.display()
            )));
        }
        if let Some(o) = &self.onlyif
            && exec(o)?.status != 0
        {
            return Ok(Change::none(format!(
                "not run: `{}` failed (onlyif)",
                o.display()
            )));
        }
        let why = if ctx.watch_fired.is_empty() {
            String::new()
        } else {
            format!(" ({} changed)", ctx.watch_fired.join(", "))
        };
        let mut changes = Map::new();
        changes.insert("command".into(), json!(self.command.display()));
        if ctx.test {
            return Ok(Change::would(format!("run{why}"), String::new(), changes));
        }
        // What the command writes is its job's doing: a beacon seeing it
        // marks it caused, whatever it is.
        let _running = ctx.ledger.map(|l| l.running(ctx.job));
        let out = exec(&self.command)?;
        changes.insert("status".into(), json!(out.status));
        changes.insert("stdout".into(), json!(out.stdout));
        changes.insert("stderr".into(), json!(out.stderr));
        if out.status == 0 {
            Ok(Change::changed(format!("ran{why}"), String::new(), changes))
        } else {
            Ok(Change {
                outcome: Outcome::Failed,
                comment: format!(
                    "exit status {}: {}",
                    out.status,
                    out.stderr.lines().last().unwrap_or("")
                ),
                diff: String::new(),
                changes,
            })
        }
    }
}
