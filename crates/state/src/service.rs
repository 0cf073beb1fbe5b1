//! `service.running` and `service.dead`, through systemctl. Where systemd
//! does not run (a container, a chroot), the state fails and says so.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, json};

use crate::cmd::exec;
use crate::engine::{Change, Ctx};
use crate::{Command, Service};

const TIMEOUT: Duration = Duration::from_secs(120);

fn systemd() -> Result<(), String> {
    if Path::new("/run/systemd/system").is_dir() {
        Ok(())
    } else {
        Err("systemd is not running on this machine (no /run/systemd/system): service states need it".into())
    }
}

fn systemctl(args: &[&str]) -> Result<crate::cmd::Output, String> {
    let mut argv = vec!["systemctl".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    exec(&Command::Argv(argv), None, &[], TIMEOUT)
}

fn check(args: &[&str]) -> Result<bool, String> {
    Ok(systemctl(args)?.status == 0)
}

fn act(args: &[&str]) -> Result<(), String> {
    let out = systemctl(args)?;
    if out.status == 0 {
        Ok(())
    } else {
        Err(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        ))
    }
}

fn enablement(
    s: &Service,
    want: bool,
    ctx: &Ctx,
    changes: &mut Map<String, serde_json::Value>,
    did: &mut Vec<String>,
) -> Result<(), String> {
    let enabled = check(&["is-enabled", "--quiet", &s.name])?;
    if enabled != want {
        let verb = if want { "enable" } else { "disable" };
        changes.insert("enabled".into(), json!(want));
        did.push(format!("{verb}d"));
        if !ctx.test {
            act(&[verb, &s.name])?;
        }
    }
    Ok(())
}

pub(crate) fn running(s: &Service, ctx: &Ctx) -> Result<Change, String> {
    systemd()?;
    let active = check(&["is-active", "--quiet", &s.name])?;
    let mut changes = Map::new();
    let mut did = Vec::new();
    if !active {
        changes.insert("running".into(), json!(true));
        did.push("started".to_string());
        if !ctx.test {
            act(&["start", &s.name])?;
        }
    } else if !ctx.watch_fired.is_empty() {
        changes.insert("restarted".into(), json!(ctx.watch_fired));
        did.push(format!(
            "restarted ({} changed)",
            ctx.watch_fired.join(", ")
        ));
        if !ctx.test {
            act(&["restart", &s.name])?;
        }
    }
    if let Some(want) = s.enable {
        enablement(s, want, ctx, &mut changes, &mut did)?;
    }
    if did.is_empty() {
        return Ok(Change::none("running"));
    }
    Ok(Change::did(
        ctx.test,
        did.join(", "),
        String::new(),
        changes,
    ))
}

pub(crate) fn dead(s: &Service, ctx: &Ctx) -> Result<Change, String> {
    systemd()?;
    let active = check(&["is-active", "--quiet", &s.name])?;
    let mut changes = Map::new();
    let mut did = Vec::new();
    if active {
        changes.insert("running".into(), json!(false));
        did.push("stopped".to_string());
        if !ctx.test {
            act(&["stop", &s.name])?;
        }
    }
    if let Some(want) = s.enable {
        enablement(s, want, ctx, &mut changes, &mut did)?;
    }
    if did.is_empty() {
        return Ok(Change::none("not running"));
    }
    Ok(Change::did(
        ctx.test,
        did.join(", "),
        String::new(),
        changes,
    ))
}
