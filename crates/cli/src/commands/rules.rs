//! `tend rules`: the rules in force on the master, and what each did since
//! it was loaded: how often it acted, how often its condition or an action
//! failed, the last failure, and when it last acted. A rule that never
//! fires because its condition fails on every event shows here.

use std::process::ExitCode;

use anyhow::anyhow;
use serde_json::json;
use tend_proto::v1::{ListRules, RuleInfo, control_reply, control_request};

use crate::context::Ctx;
use crate::output::{json, table};
use crate::{connection, request};

/// List the rules in force: file, fires, errors, last error, last fired.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  tend rules\n  tend rules --json | jq 'select(.condition_errors > 0)'"
)]
pub struct Args {}

/// Runs `tend rules`; its exit status.
pub fn exec(ctx: &Ctx, _args: Args) -> anyhow::Result<ExitCode> {
    let mut client = connection::connect(&ctx.global)?;
    let list = request::ask(
        &mut client,
        control_request::Body::ListRules(ListRules {}),
        |body| match body {
            control_reply::Body::Rules(r) => Some(r),
            _ => None,
        },
    )?
    .ok_or_else(|| anyhow!("the master sent no rules"))?;
    if ctx.json() {
        for r in &list.rules {
            println!("{}", rule_json(r));
        }
    } else if list.rules.is_empty() {
        println!("no rules in force (add *.toml files to reactor.d, then `tend reactor reload`)");
    } else {
        table::print(
            &["RULE", "FILE", "FIRES", "ERRORS", "LAST FIRED", "LAST ERROR"],
            list.rules.iter().map(row).collect(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A rule as a table row; errors as `condition/action`.
fn row(r: &RuleInfo) -> Vec<String> {
    let last_error = if r.last_error.is_empty() {
        "-".to_string()
    } else {
        format!("{} ({})", r.last_error, table::ago(r.last_error_us))
    };
    vec![
        r.name.clone(),
        r.file.clone(),
        r.fires.to_string(),
        format!(
            "{} condition, {} action",
            r.condition_errors, r.action_errors
        ),
        table::ago(r.last_fired_us),
        last_error,
    ]
}

/// A rule as `--json` prints it (one object per line).
fn rule_json(r: &RuleInfo) -> serde_json::Value {
    json!({
        "name": r.name,
        "file": r.file,
        "on": r.on,
        "when": (!r.when.is_empty()).then_some(&r.when),
        "fires": r.fires,
        "condition_errors": r.condition_errors,
        "action_errors": r.action_errors,
        "last_error": (!r.last_error.is_empty()).then_some(&r.last_error),
        "last_error_time": json::time(r.last_error_us),
        "last_fired_time": json::time(r.last_fired_us),
    })
}
