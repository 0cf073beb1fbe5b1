//! `command`: a command's exit status or output changes.
//!
//! ```toml
//! [[beacon]]
//! name = "raid"
//! type = "command"
//! command = "cat /proc/mdstat | grep -c '\\[U*_'"   # by sh -c; or ["argv", "list"]
//! interval = "60s"
//! timeout = "10s"     # then it is killed (with its children)
//! ```
//!
//! The state is the exit status and the output (stdout, trimmed, at most
//! 4 KiB); with `onchange_only` (the default) an event goes out when either
//! changes. Its kind is `ok` (exit status 0) or `failed`. A command that
//! cannot run or times out is an error event.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, json};
use tend_host::cmd::Command;
use tokio::time::Instant;

use crate::config::{Common, ConfigError, config, duration};
use crate::looker::Cost;
use crate::poll::{LookError, Observation, Poll, Polled};
use crate::{Beacon, system};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    command: Command,
    timeout: Option<toml::Value>,
}

const MAX_OUTPUT: usize = 4096;

pub fn build(mut table: toml::Table) -> Result<Box<dyn Beacon>, ConfigError> {
    let common = Common::take(&mut table, Duration::from_secs(60), true, true)?;
    let c: Config = config(table)?;
    match &c.command {
        Command::Shell(s) if s.trim().is_empty() => {
            return Err(ConfigError::rule("command", "is empty"));
        }
        Command::Argv(a) if a.is_empty() || a[0].is_empty() => {
            return Err(ConfigError::rule("command", "is empty"));
        }
        _ => {}
    }
    let timeout = match &c.timeout {
        Some(v) => duration("timeout", v)?,
        None => Duration::from_secs(10),
    };
    if timeout > common.interval {
        return Err(ConfigError::rule(
            "timeout",
            format!(
                "({}) is longer than `interval` ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(common.interval)
            ),
        ));
    }
    Ok(Box::new(Polled {
        common,
        poller: Run {
            command: c.command,
            timeout,
        },
    }))
}

struct Run {
    command: Command,
    timeout: Duration,
}

impl Poll for Run {
    /// It runs a process: on the blocking pool, not the looker thread.
    fn cost(&self) -> Cost {
        Cost::Slow
    }

    fn poll(&mut self, _now: Instant) -> Result<Vec<Observation>, LookError> {
        let out = tend_host::cmd::exec(&self.command, None, &[], self.timeout)?;
        let mut stdout = out.stdout.trim_end().to_string();
        if stdout.len() > MAX_OUTPUT {
            let mut cut = MAX_OUTPUT;
            while !stdout.is_char_boundary(cut) {
                cut -= 1;
            }
            stdout.truncate(cut);
        }
        let mut data = Map::new();
        data.insert("command".into(), json!(self.command.display()));
        data.insert("status".into(), json!(out.status));
        data.insert("output".into(), json!(stdout));
        if !out.stderr.is_empty() {
            data.insert(
                "stderr".into(),
                json!(out.stderr.chars().take(MAX_OUTPUT).collect::<String>()),
            );
        }
        let state = json!({"status": out.status, "output": stdout});
        let kind = if out.status == 0 { "ok" } else { "failed" };
        Ok(vec![system::state("", kind, state, data)])
    }
}
