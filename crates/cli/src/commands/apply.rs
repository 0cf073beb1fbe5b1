//! `tend apply`: apply states to minions and show what changed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tend_proto::v1::{ApplyCommand, control_request};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, job, salt};

/// Apply states to minions and show what changed; with no state, what
/// the top file gives each minion (highstate).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend apply web1 motd\n  tend apply 'web*' motd nginx --test\n  tend apply 'os:debian and label.role:web'\n  tend apply web1,web2 motd"
)]
pub struct Args {
    /// Minions: an id glob (`web*`), ids (`web1,web2`), facts
    /// (`os:debian`, `label.role:web`), combined with and / or / not.
    #[arg(add = crate::complete::minions())]
    target: String,
    /// State names (`motd`, `web.nginx`); none: the top file's.
    #[arg(add = crate::complete::states())]
    states: Vec<String>,
    /// Dry run: change nothing, show what would change.
    #[arg(long)]
    test: bool,
    /// Seconds to wait for the minions.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Runs `tend apply`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    // Before anything is sent: a Salt habit is a hint, never a job.
    if let Some(hint) = args.states.iter().find_map(|s| salt::apply_hint(s)) {
        bail!("{hint}. Nothing was sent");
    }
    let json = ctx.json();
    let mut client = connection::connect(&ctx.global)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let job = job::watch(
        &mut client,
        control_request::Body::Apply(ApplyCommand {
            target: args.target,
            states: args.states,
            test: args.test,
            timeout_ms: timeout.as_millis() as u32,
        }),
        timeout,
        (!json).then_some(output::jobs::minion_result as fn(&_)),
        |r| matches!(r.status.as_str(), "ok" | "changed" | "would-change"),
    )?
    .ok_or_else(|| anyhow!("the master ended the apply without a job"))?;
    if json {
        println!("{}", json::job(&job));
    } else {
        output::jobs::summary(&job);
    }
    let failed = job.minions.iter().any(|m| {
        matches!(
            m.status.as_str(),
            "failed" | "timeout" | "unreachable" | "interrupted"
        )
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
