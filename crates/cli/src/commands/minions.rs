//! `tend minions`: the minions the master knows.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// List the minions the master knows: key, connection, last seen, system.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend minions\n  tend minions --json | jq -r 'select(.connected) | .id'"
)]
pub struct Args {}

/// Runs `tend minions`; its exit status.
pub fn exec(ctx: &Ctx, _args: Args) -> anyhow::Result<ExitCode> {
    let mut client = connection::connect(&ctx.global)?;
    let minions = request::list_minions(&mut client)?;
    if ctx.json() {
        for m in &minions {
            println!("{}", json::minion(m));
        }
    } else {
        output::minions::list(&minions);
    }
    Ok(ExitCode::SUCCESS)
}
