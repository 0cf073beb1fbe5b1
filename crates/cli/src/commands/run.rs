//! `tend run`: run a command on minions and show what each one printed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use tend_proto::v1::{RunCommand, control_request};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, job};

/// Run a command on minions and show what each one printed.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend run web1 -- uptime\n  tend run 'label.role:web' -- systemctl is-active nginx\n  tend run '*' -- 'df -h / | tail -1'"
)]
pub struct Args {
    /// Minions, as for apply.
    #[arg(add = crate::complete::minions())]
    target: String,
    /// The command: one argument is run by `sh -c`; several, directly.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// Seconds to wait for the minions.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Runs `tend run`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    let mut client = connection::connect(&ctx.global)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let job = job::watch(
        &mut client,
        control_request::Body::Run(RunCommand {
            target: args.target,
            argv: args.command,
            timeout_ms: timeout.as_millis() as u32,
        }),
        timeout,
        (!json).then_some(output::jobs::run_result as fn(&_)),
        |r| r.status == "ok",
    )?
    .ok_or_else(|| anyhow!("the master ended the run without a job"))?;
    if json {
        println!("{}", json::job(&job));
    } else {
        output::jobs::summary(&job);
    }
    let failed = job.minions.iter().any(|m| m.status != "ok");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
