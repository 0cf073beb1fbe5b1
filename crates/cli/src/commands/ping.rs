//! `tend ping`: check that minions answer, and how fast.

use std::process::ExitCode;
use std::time::Duration;

use tend_proto::v1::{PingMinions, control_reply, control_request};

use crate::context::Ctx;
use crate::output::progress::Progress;
use crate::output::{self, json};
use crate::request::{QUERY_TIMEOUT, call};
use crate::connection;

/// Check that minions answer, and how fast.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tend ping web1\n  tend ping '*' --timeout 2")]
pub struct Args {
    /// Minion id glob or comma-separated ids.
    #[arg(add = crate::complete::minions())]
    target: String,
    /// Seconds to wait for each minion.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Runs `tend ping`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    let mut client = connection::connect(&ctx.global)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let (mut ok, mut failed) = (0, 0);
    let mut progress = Progress::new();
    call(
        &mut client,
        control_request::Body::Ping(PingMinions {
            target: args.target,
            timeout_ms: timeout.as_millis() as u32,
        }),
        timeout + QUERY_TIMEOUT,
        |body| match body {
            control_reply::Body::Targeted(t) => progress.targeted(t.minions.len()),
            control_reply::Body::Pong(p) => {
                if p.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                progress.clear();
                if json {
                    println!("{}", json::pong(&p));
                } else {
                    output::minions::pong(&p);
                }
                progress.answered(p.ok);
            }
            _ => {}
        },
    )?;
    progress.clear();
    if !json {
        println!("{ok} of {} answered", ok + failed);
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
