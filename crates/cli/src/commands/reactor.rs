//! `tend reactor`: reload the master's rules, or try a rule file on an
//! event offline, with the master's own matching and conditions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use tend_proto::v1::{ReloadRules, control_reply, control_request};

use crate::context::Ctx;
use crate::output::json;
use crate::{connection, request};

/// The reactor's rules: reload them, or try one on an event offline.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: ReactorCommand,
}

#[derive(Subcommand)]
enum ReactorCommand {
    /// Read reactor.d again (as SIGHUP does). A bad file is refused and the
    /// rules in force stay.
    Reload,
    /// Say what an event would do under a rule file or the whole rules
    /// directory, and why, without a master.
    #[command(
        after_help = "Example:\n  tend events --tag 'minion/web1/*' --limit 1 --json > e.json\n  tend reactor test reactor.d/restore.toml --event e.json\n  tend reactor test /etc/tend/reactor.d --event e.json"
    )]
    Test {
        /// A rule file, or a directory of them (every *.toml in it, as the
        /// master reads reactor.d).
        rule_file: PathBuf,
        /// A JSON event: as `tend events --json` prints one, or just
        /// {"minion": ..., "tag": ..., "data": {...}}.
        #[arg(long)]
        event: PathBuf,
    },
}

/// Runs `tend reactor`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        ReactorCommand::Reload => reload(ctx),
        ReactorCommand::Test { rule_file, event } => test(&rule_file, &event, ctx.json()),
    }
}

/// `tend reactor reload`: the master reads reactor.d again.
fn reload(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut client = connection::connect(&ctx.global)?;
    let rules = request::ask(
        &mut client,
        control_request::Body::ReloadRules(ReloadRules {}),
        |body| match body {
            control_reply::Body::Reloaded(r) => Some(r.rules),
            _ => None,
        },
    )?
    .unwrap_or(0);
    if ctx.json() {
        println!("{}", json::reloaded(rules));
    } else {
        println!("reloaded: {rules} rule(s) in force");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tend reactor test`: the master's own matching and conditions, offline.
fn test(rule_file: &Path, event_file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    if !rule_file.exists() {
        anyhow::bail!("no rule file or directory at {}", rule_file.display());
    }
    let rules = tend_reactor::Rules::load_dir(rule_file)?;
    let raw = std::fs::read_to_string(event_file)
        .with_context(|| format!("cannot read the event {}", event_file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(raw.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}"))
            .with_context(|| format!("{}: not a JSON event", event_file.display()))?;
    let tag = v["tag"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: the event has no \"tag\"", event_file.display()))?;
    let event = tend_proto::v1::Event {
        minion: v["minion"].as_str().unwrap_or_default().to_string(),
        seq: v["seq"].as_u64().unwrap_or(0),
        tag: tag.to_string(),
        time_us: tend_proto::now_us(),
        data: v
            .get("data")
            .map(|d| d.to_string())
            .unwrap_or_else(|| "{}".into())
            .into_bytes(),
        cause: v["cause"].as_u64().unwrap_or(0),
        local_orders: Default::default(),
    };
    let explanation = tend_reactor::Reactor::explain(&rules, &event);
    if json {
        println!("{}", json::reactor_test(&rules, &event, &explanation));
    } else {
        for line in explanation {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
