//! `tend jobs`: the master's recent jobs, filtered by minion, rule,
//! operator, status and time; one in full; or the newest.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use tend_bus::ControlClient;
use tend_proto::v1::{GetJob, Job, ListJobs, control_reply, control_request};

use super::events::parse_since;
use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// List jobs (newest first), show one, or the last one.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend jobs --limit 10\n  tend jobs --minion web1 --status failed --since 1h\n  tend jobs --operator alice\n  tend jobs --rule restore-motd\n  tend jobs last\n  tend jobs show 12 --json"
)]
pub struct Args {
    #[command(subcommand)]
    what: Option<JobsCommand>,
    #[command(flatten)]
    filter: Filter,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// Which jobs: every filter given must hold (among the newest 10,000).
#[derive(clap::Args)]
struct Filter {
    /// Only jobs that went to this minion.
    #[arg(long)]
    minion: Option<String>,
    /// Only jobs this rule started.
    #[arg(long)]
    rule: Option<String>,
    /// Only jobs this operator ran: an operator key's name, or a local
    /// user's name.
    #[arg(long)]
    operator: Option<String>,
    /// Only jobs in this state: ended so, or still queued or running.
    #[arg(long, value_parser = ["queued", "running", "ok", "changed", "would-change", "failed", "interrupted"])]
    status: Option<String>,
    /// Only jobs started since then: a duration ago (`90s`, `10m`, `2h`)
    /// or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Show one job with every state result.
    Show {
        #[arg(add = crate::complete::jobs())]
        id: u64,
    },
    /// Show the newest job (of those the filters pass) with every result.
    Last {
        #[command(flatten)]
        filter: Filter,
    },
}

impl Filter {
    /// This filter, with what it leaves open taken from `outer` (the
    /// filters given before `last`: `tend jobs --minion web1 last`).
    fn or(self, outer: Filter) -> Filter {
        Filter {
            minion: self.minion.or(outer.minion),
            rule: self.rule.or(outer.rule),
            operator: self.operator.or(outer.operator),
            status: self.status.or(outer.status),
            since: self.since.or(outer.since),
        }
    }

    /// The request for at most `limit` jobs passing this filter.
    fn request(&self, limit: u32) -> anyhow::Result<ListJobs> {
        Ok(ListJobs {
            limit,
            minion: self.minion.clone().unwrap_or_default(),
            rule: self.rule.clone().unwrap_or_default(),
            operator: self.operator.clone().unwrap_or_default(),
            status: self.status.clone().unwrap_or_default(),
            since_us: match &self.since {
                Some(s) => parse_since(s)?,
                None => 0,
            },
        })
    }
}

fn list(client: &mut ControlClient, q: ListJobs) -> anyhow::Result<Vec<Job>> {
    Ok(request::ask(
        client,
        control_request::Body::ListJobs(q),
        |body| match body {
            control_reply::Body::Jobs(list) => Some(list.jobs),
            _ => None,
        },
    )?
    .unwrap_or_default())
}

fn show(job: &Job, json: bool) {
    if json {
        println!("{}", json::job(job));
    } else {
        output::jobs::show(job);
    }
}

/// Runs `tend jobs`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    let mut client = connection::connect(&ctx.global)?;
    match args.what {
        None => {
            let jobs = list(&mut client, args.filter.request(args.limit)?)?;
            if json {
                for j in &jobs {
                    println!("{}", json::job(j));
                }
            } else {
                output::jobs::list(&jobs);
            }
        }
        Some(JobsCommand::Last { filter }) => {
            let filter = filter.or(args.filter);
            let Some(job) = list(&mut client, filter.request(1)?)?.into_iter().next() else {
                bail!("no job matches (`tend jobs` lists the recent ones)");
            };
            show(&job, json);
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
            show(&job, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}
