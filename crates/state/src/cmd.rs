//! `cmd.run`: run a command, unless `unless`, `onlyif` or `creates` say it
//! is not needed. Exit status 0 is a change; anything else is a failure.
//! Output is reported, cut at 64 KiB per stream (see [`tend_host::cmd`]).

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, json};
use tend_proto::v1::Outcome;

pub(crate) use tend_host::cmd::Output;

use crate::engine::{Change, Ctx};
use crate::{CmdRun, Command};

const DEFAULT_TIMEOUT: u64 = 600;

/// [`tend_host::cmd::exec`], its error said as the states' failures are.
pub(crate) fn exec(
    cmd: &Command,
    cwd: Option<&str>,
    env: &[(&String, &String)],
    timeout: Duration,
) -> Result<Output, String> {
    tend_host::cmd::exec(cmd, cwd, env, timeout).map_err(|e| e.to_string())
}

pub(crate) fn run(c: &CmdRun, ctx: &Ctx) -> Result<Change, String> {
    let env: Vec<(&String, &String)> = c.env.iter().collect();
    let timeout = Duration::from_secs(c.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let cwd = c.cwd.as_deref();
    if let Some(p) = &c.creates
        && Path::new(p).exists()
    {
        return Ok(Change::none(format!("not run: {p} exists (creates)")));
    }
    // The checks run in dry runs too: they are how we know what would run.
    if let Some(u) = &c.unless
        && exec(u, cwd, &env, timeout)?.status == 0
    {
        return Ok(Change::none(format!(
            "not run: `{}` succeeded (unless)",
            u.display()
        )));
    }
    if let Some(o) = &c.onlyif
        && exec(o, cwd, &env, timeout)?.status != 0
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
    changes.insert("command".into(), json!(c.command.display()));
    if ctx.test {
        return Ok(Change::would(format!("run{why}"), String::new(), changes));
    }
    // What the command writes is its job's doing: a beacon seeing it
    // marks it caused, whatever it is.
    let _running = ctx.ledger.map(|l| l.running(ctx.job));
    let out = exec(&c.command, cwd, &env, timeout)?;
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
