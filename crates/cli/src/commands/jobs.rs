//! `tend jobs`: the master's recent jobs, or one in full.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use tend_proto::v1::{GetJob, ListJobs, control_reply, control_request};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// List jobs, or show one.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tend jobs --limit 10\n  tend jobs show 12 --json")]
pub struct Args {
    #[command(subcommand)]
    what: Option<JobsCommand>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Show one job with every state result.
    Show { id: u64 },
}

/// Runs `tend jobs`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    let mut client = connection::connect(&ctx.global)?;
    match args.what {
        None => {
            let jobs = request::ask(
                &mut client,
                control_request::Body::ListJobs(ListJobs { limit: args.limit }),
                |body| match body {
                    control_reply::Body::Jobs(list) => Some(list.jobs),
                    _ => None,
                },
            )?
            .unwrap_or_default();
            if json {
                for j in &jobs {
                    println!("{}", json::job(j));
                }
            } else {
                output::jobs::list(&jobs);
            }
        }
        Some(JobsCommand::Show { id }) => {
            let job = request::ask(
                &mut client,
                control_request::Body::GetJob(GetJob { id }),
                |body| match body {
                    control_reply::Body::Job(j) => Some(j),
                    _ => None,
                },
            )?
            .ok_or_else(|| anyhow!("no job {id}"))?;
            if json {
                println!("{}", json::job(&job));
            } else {
                output::jobs::show(&job);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
