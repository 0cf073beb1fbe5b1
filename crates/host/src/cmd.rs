//! Running a command on the host: the `cmd.run` state, `pkg` and
//! `service` states, the `command` beacon and the minion's `run` all go
//! through [`exec`]. It runs in its own process group (a timeout kills
//! everything it started), with the umask the minion was started with, and
//! its output is cut at 64 KiB per stream: read through a fixed buffer, the
//! rest counted and dropped, never held.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const MAX_OUTPUT: usize = 64 * 1024;

/// A command: a string run by `sh -c`, or an argument list run directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The command as a person would type it, for messages.
    pub fn display(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => a.join(" "),
        }
    }
}

/// Why a command did not run to completion. (A command that ran and
/// failed is an [`Output`] with a non-zero status, not an error.)
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started (not found, not executable, a bad `cwd`).
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// It ran past its timeout, and it and its process group were killed.
    #[error("{command} did not finish within {timeout:?}; killed")]
    Timeout { command: String, timeout: Duration },
    /// Its status could not be read.
    #[error("waiting for {command}: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
}

/// The umask commands run with, when set: the minion keeps 077 for its
/// own files, and gives its commands the one it was started with.
static COMMAND_UMASK: OnceLock<libc::mode_t> = OnceLock::new();

/// Sets the umask every command is started with (once per process).
pub fn set_command_umask(mask: libc::mode_t) {
    let _ = COMMAND_UMASK.set(mask);
}

/// What a command that ran to its end said.
pub struct Output {
    /// Its exit status; -1 when a signal ended it.
    pub status: i32,
    /// What it printed, cut at 64 KiB (the cut is said at the end).
    pub stdout: String,
    /// As `stdout`.
    pub stderr: String,
}

/// Runs `cmd` to completion or `timeout` (then kills it and everything it
/// started: it runs in its own process group).
pub fn exec(
    cmd: &Command,
    cwd: Option<&str>,
    env: &[(&String, &String)],
    timeout: Duration,
) -> Result<Output, CommandError> {
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
        .map_err(|source| CommandError::Spawn {
            command: cmd.display(),
            source,
        })?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
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
                return Err(CommandError::Timeout {
                    command: cmd.display(),
                    timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(CommandError::Wait {
                    command: cmd.display(),
                    source,
                });
            }
        }
    };
    Ok(Output {
        status: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default().text(),
        stderr: err.join().unwrap_or_default().text(),
    })
}

/// What was kept of a stream: its first `MAX_OUTPUT` bytes, and how many
/// it carried in all.
#[derive(Default)]
struct Kept {
    head: Vec<u8>,
    total: u64,
}

impl Kept {
    fn text(self) -> String {
        let s = String::from_utf8_lossy(&self.head).into_owned();
        if self.total > self.head.len() as u64 {
            format!(
                "{s}\n[output cut: {} of {} bytes kept]",
                self.head.len(),
                self.total
            )
        } else {
            s
        }
    }
}

/// Reads `stream` to its end on a thread of its own, through a fixed
/// buffer: the first `MAX_OUTPUT` bytes are kept, the rest counted and
/// dropped, so a command printing gigabytes costs no more memory than one
/// printing a page (and it is never blocked on a full pipe).
fn drain(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Kept> {
    std::thread::spawn(move || {
        let mut kept = Kept::default();
        let Some(mut r) = stream else {
            return kept;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let room = MAX_OUTPUT - kept.head.len();
            kept.head.extend_from_slice(&buf[..n.min(room)]);
            kept.total += n as u64;
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_counted_dropped_and_marked() {
        let argv = |a: &[&str]| Command::Argv(a.iter().map(|s| s.to_string()).collect());
        let t = Duration::from_secs(30);
        let out = exec(
            &argv(&["head", "-c", "10000000", "/dev/zero"]),
            None,
            &[],
            t,
        )
        .unwrap();
        assert_eq!(out.status, 0);
        assert!(
            out.stdout
                .ends_with("\n[output cut: 65536 of 10000000 bytes kept]"),
            "{:?}",
            &out.stdout[out.stdout.len() - 60..]
        );
        assert_eq!(
            out.stdout.len(),
            MAX_OUTPUT + "\n[output cut: 65536 of 10000000 bytes kept]".len()
        );
        let out = exec(&argv(&["printf", "short"]), None, &[], t).unwrap();
        assert_eq!(out.stdout, "short");
    }
}
