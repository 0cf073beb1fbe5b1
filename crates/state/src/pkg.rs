//! `pkg.installed` and `pkg.removed`, through dpkg and apt-get. The state
//! checks with dpkg-query before it changes anything.

use std::time::Duration;

use serde_json::{Map, json};

use crate::cmd::{Output, exec};
use crate::engine::{Change, Ctx};
use crate::{Command, Pkg};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run(argv: &[&str]) -> Result<Output, String> {
    let env_key = "DEBIAN_FRONTEND".to_string();
    let env_val = "noninteractive".to_string();
    exec(
        &Command::Argv(argv.iter().map(|s| s.to_string()).collect()),
        None,
        &[(&env_key, &env_val)],
        TIMEOUT,
    )
}

/// The installed version, if the package is installed.
fn installed_version(name: &str) -> Result<Option<String>, String> {
    let out = run(&["dpkg-query", "-W", "-f=${Status}\t${Version}", name])
        .map_err(|e| format!("{e} (package states need dpkg: a Debian-based system)"))?;
    if out.status != 0 {
        return Ok(None);
    }
    Ok(out
        .stdout
        .split_once('\t')
        .filter(|(status, _)| status.ends_with(" installed"))
        .map(|(_, v)| v.to_string()))
}

pub(crate) fn installed(p: &Pkg, ctx: &Ctx) -> Result<Change, String> {
    if let Some(v) = installed_version(&p.name)? {
        return Ok(Change::none(format!("installed ({v})")));
    }
    let mut changes = Map::new();
    if ctx.test {
        changes.insert("installed".into(), json!(p.name));
        return Ok(Change::would("installed", String::new(), changes));
    }
    let install = || {
        run(&[
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            &p.name,
        ])
    };
    let mut out = install()?;
    if out.status != 0 && out.stderr.contains("Unable to locate package") {
        // Package lists may never have been fetched on this host.
        let _ = run(&["apt-get", "update"]);
        out = install()?;
    }
    if out.status != 0 {
        return Err(format!(
            "apt-get install {} failed ({}): {}",
            p.name,
            out.status,
            out.stderr.trim()
        ));
    }
    let v = installed_version(&p.name)?.unwrap_or_default();
    changes.insert("installed".into(), json!({"name": p.name, "version": v}));
    Ok(Change::changed(
        format!("installed ({v})"),
        String::new(),
        changes,
    ))
}

pub(crate) fn removed(p: &Pkg, ctx: &Ctx) -> Result<Change, String> {
    let Some(v) = installed_version(&p.name)? else {
        return Ok(Change::none("not installed"));
    };
    let mut changes = Map::new();
    changes.insert("removed".into(), json!({"name": p.name, "version": v}));
    if ctx.test {
        return Ok(Change::would("removed", String::new(), changes));
    }
    let out = run(&["apt-get", "remove", "-y", &p.name])?;
    if out.status != 0 {
        return Err(format!(
            "apt-get remove {} failed ({}): {}",
            p.name,
            out.status,
            out.stderr.trim()
        ));
    }
    Ok(Change::changed("removed", String::new(), changes))
}
