//! `tend status`: the master's version and counters.

use std::process::ExitCode;

use anyhow::anyhow;
use tend_proto::v1::{GetStatus, control_reply, control_request};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// Show the master's counters.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tend status --json | jq .counters.events_stored")]
pub struct Args {}

/// Runs `tend status`; its exit status.
pub fn exec(ctx: &Ctx, _args: Args) -> anyhow::Result<ExitCode> {
    let mut client = connection::connect(&ctx.global)?;
    let status = request::ask(
        &mut client,
        control_request::Body::GetStatus(GetStatus {}),
        |body| match body {
            control_reply::Body::Status(s) => Some(s),
            _ => None,
        },
    )?
    .ok_or_else(|| anyhow!("the master sent no status"))?;
    if ctx.json() {
        println!("{}", json::status(&status));
    } else {
        output::status::show(&status);
    }
    Ok(ExitCode::SUCCESS)
}
