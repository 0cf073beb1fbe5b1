//! `tend events`: stored events, newest first; or, with `--follow`, a live
//! tail of them.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail};
use tend_proto::v1::ListEvents;

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, follow, request};

/// List stored events, newest first; or follow them live.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend events --minion web1 --limit 20\n  tend events --tag 'minion/*/job/*' --json\n  tend events --follow --tag 'minion/*/beacon/motd/**'   # a beacon by its name\n  tend events -f --since 5m --json | jq .tag"
)]
pub struct Args {
    /// Follow: print events as they are stored, oldest first, until
    /// interrupted; goes on across master restarts without missing any.
    /// With --since, first the events stored since then.
    #[arg(long, short)]
    follow: bool,
    /// Only events from this minion.
    #[arg(long)]
    minion: Option<String>,
    /// Only events whose tag matches this glob (`*` crosses `/`).
    #[arg(long)]
    tag: Option<String>,
    /// Only events stored since then: a duration ago (`90s`, `10m`,
    /// `2h`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// At most this many (without --follow).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// Runs `tend events`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    if args.follow {
        let since_us = match &args.since {
            Some(s) => parse_since(s)?,
            None => 0,
        };
        return follow::run(
            || connection::connect(&ctx.global),
            follow::Filter {
                minion: args.minion.unwrap_or_default(),
                tag: args.tag.unwrap_or_default(),
                since_us,
            },
            json,
        );
    }
    let mut client = connection::connect(&ctx.global)?;
    let since_us = match &args.since {
        Some(s) => parse_since(s)?,
        None => 0,
    };
    let events = request::list_events(
        &mut client,
        ListEvents {
            minion: args.minion.unwrap_or_default(),
            tag: args.tag.unwrap_or_default(),
            since_us,
            limit: args.limit,
            before_id: 0,
        },
    )?;
    if json {
        for e in &events {
            println!("{}", json::event(e));
        }
    } else {
        output::events::list(&events);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration ago, or an RFC 3339 time; microseconds.
pub(super) fn parse_since(s: &str) -> anyhow::Result<i64> {
    let at = if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| anyhow!("--since {s}: too long ago"))?
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else {
        bail!("--since {s:?}: give a duration (90s, 10m, 2h) or a time (2026-11-29T10:00:00Z)");
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0))
}
