//! `cmd.run`: run a command, unless `unless`, `onlyif` or `creates` say it
//! is not needed. Exit status 0 is a change; anything else is a failure.
//! Output is reported (cut at 64 KiB per stream).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Map, json};
use tend_proto::v1::Outcome;

use crate::engine::{Change, Ctx};
use crate::{CmdRun, Command};

const MAX_OUTPUT: usize = 64 * 1024;
const DEFAULT_TIMEOUT: u64 = 600;

/// The umask commands run with, when set: the minion keeps 077 for its
/// own files, and gives its commands the one it was started with.
static COMMAND_UMASK: OnceLock<libc::mode_t> = OnceLock::new();

/// Sets the umask every command is started with (once per process).
pub fn set_command_umask(mask: libc::mode_t) {
    let _ = COMMAND_UMASK.set(mask);
}

pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion or `timeout` (then kills it and everything it
/// started: it runs in its own process group).
pub fn exec(
    cmd: &Command,
    cwd: Option<&str>,
    env: &[(&String, &String)],
    timeout: Duration,
) -> Result<Output, String> {
    let mut p = match cmd {
        Command::Shell(s) => {
            let mut p = Process::new("/bin/sh");
            p.arg("-c").arg(s);
            p
        }
        Command::Argv(a) => {
            let mut p = Process::new(&a[0]);
            p.args(&a[1..]);
            p
        }
    };
    if let Some(d) = cwd {
        p.current_dir(d);
    }
    for (k, v) in env {
        p.env(k, v);
    }
    // Its own process group, so a timeout kills `sh -c`'s children too
    // (they would otherwise hold the output pipes open).
    p.process_group(0);
    if let Some(&mask) = COMMAND_UMASK.get() {
        // SAFETY: runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: umask(2) is one, and
        // nothing is allocated.
        unsafe {
            p.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            });
        }
    }
    let mut child = p
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cmd.display()))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) on our child's process group; no memory
                // is touched.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {} s; killed",
                    cmd.display(),
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", cmd.display())),
        }
    };
    let text = |b: Vec<u8>| {
        let s = String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
        if b.len() > MAX_OUTPUT {
            format!("{s}\n[cut at {MAX_OUTPUT} bytes]")
        } else {
            s
        }
    };
    Ok(Output {
        status: status.code().unwrap_or(-1),
        stdout: text(out.join().unwrap_or_default()),
        stderr: text(err.join().unwrap_or_default()),
    })
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
