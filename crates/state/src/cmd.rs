//! Running a command for the state types (`cmd.run`, the package and
//! service states): [`tend_host::cmd::exec`], which reads output through a
//! fixed buffer (64 KiB kept per stream, the rest counted and dropped),
//! with its error said as the states' failures are.

use std::time::Duration;

pub(crate) use tend_host::cmd::Output;

use crate::Command;

/// [`tend_host::cmd::exec`], its error as the text a state's failure
/// carries.
pub(crate) fn exec(
    cmd: &Command,
    cwd: Option<&str>,
    env: &[(&String, &String)],
    timeout: Duration,
) -> Result<Output, String> {
    tend_host::cmd::exec(cmd, cwd, env, timeout).map_err(|e| e.to_string())
}
