//! The demo: a master and a minion on 127.0.0.1, and a managed file put
//! back however it is edited. Its directory is temporary: removed when
//! the demo ends (kept, and named, when it failed: the daemons' logs are
//! there).

use std::io::IsTerminal;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, Cluster, hand_write, wait};
use crate::edits::one_edit;

/// The commands the demo points at, and what each shows.
const NEXT: &[(&str, &str)] = &[
    ("events", "every event, newest first"),
    ("events --json", "the same, one JSON object per line"),
    ("events --follow", "live, as they are stored"),
    ("jobs", "the restores, and what they changed"),
    ("minions", "the minion, connected, last seen"),
    (
        "keys list",
        "minion keys: pending, accepted, rejected, denied",
    ),
];

/// The ones run for the reader when the daemons stop at the end.
const SHOWN: &[&str] = &["jobs", "events --limit 6"];

pub fn demo(no_wait: bool) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("tend-demo-")
        .tempdir()
        .context("cannot create the demo's temporary directory")?;
    match show(tmp.path(), no_wait) {
        Ok(()) => {
            let dir = tmp.path().display().to_string();
            tmp.close()
                .with_context(|| format!("cannot remove the demo's directory {dir}"))?;
            println!("Removed {dir}.");
            Ok(())
        }
        Err(e) => {
            let kept = tmp.keep();
            Err(e.context(format!(
                "the demo failed; its directory, with both daemons' logs, is kept: {}",
                kept.display()
            )))
        }
    }
}

fn show(dir: &Path, no_wait: bool) -> anyhow::Result<()> {
    println!(
        "tend demo: a master and a minion on 127.0.0.1, in {}\n",
        dir.display()
    );
    let mut c = Cluster::new(dir, false)?;
    let t = c.start_master()?;
    let keys = c.tend(&["keys", "list", "--json"])?;
    let master_fp = serde_json::from_slice::<serde_json::Value>(&keys.stdout)
        .ok()
        .and_then(|k| k["master_fingerprint"].as_str().map(String::from))
        .unwrap_or_default();
    println!(
        "  tend-master is up ({:.0} ms): events on port {}, commands on port {}\n    its key: {master_fp}",
        t.as_secs_f64() * 1000.0,
        c.event_port,
        c.command_port
    );
    let started = Instant::now();
    c.spawn_minion()?;
    wait(
        Duration::from_secs(20),
        "the minion's key to reach the master",
        || {
            let out = c.tend(&["keys", "list", "--json"])?;
            Ok(String::from_utf8_lossy(&out.stdout).contains("pending"))
        },
    )?;
    println!(
        "  tend-minion \"demo-minion\" started ({:.0} ms); its key is pending, as every new key is.",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let out = c.tend(&["keys", "accept", "demo-minion"])?;
    if !out.status.success() {
        bail!(
            "accepting the minion's key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let started = Instant::now();
    c.wait_minion()?;
    println!(
        "  `tend keys accept demo-minion`: connected {:.0} ms later. Its file beacon watches\n    {}",
        started.elapsed().as_secs_f64() * 1000.0,
        c.managed.display()
    );
    let out = c.tend(&["apply", "demo-minion", "motd"])?;
    if !out.status.success() {
        bail!(
            "the first apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("  `tend apply demo-minion motd` wrote the managed file:\n");
    for line in cluster::MANAGED.lines() {
        println!("      | {line}");
    }
    println!("\n  A rule (reactor.d/restore-motd.toml) puts the file back whenever it drifts.\n");

    let f = c.managed.display().to_string();
    let dir_of = c.managed.parent().context("dir")?.to_path_buf();
    let managed = c.managed.clone();
    type Edit = Box<dyn FnOnce() -> anyhow::Result<()>>;
    let edits: Vec<(String, Edit)> = vec![
        (
            format!("echo 'hacked' > {f}"),
            Box::new({
                let m = managed.clone();
                move || Ok(hand_write(&m, "hacked\n")?)
            }),
        ),
        (
            "an editor's save: write a temp file, rename it over the original".into(),
            Box::new({
                let (m, d) = (managed.clone(), dir_of.clone());
                move || {
                    let tmp = d.join(".motd.swp");
                    std::fs::write(&tmp, "edited in an editor\n")?;
                    Ok(std::fs::rename(tmp, &m)?)
                }
            }),
        ),
        (
            format!("chmod 600 {f}"),
            Box::new({
                let m = managed.clone();
                move || {
                    use std::os::unix::fs::PermissionsExt;
                    Ok(std::fs::set_permissions(
                        &m,
                        std::fs::Permissions::from_mode(0o600),
                    )?)
                }
            }),
        ),
        (
            format!("rm {f}"),
            Box::new({
                let m = managed.clone();
                move || Ok(std::fs::remove_file(&m)?)
            }),
        ),
    ];
    for (n, (what, edit)) in edits.into_iter().enumerate() {
        let (restored, stored, story) = one_edit(&c, edit)?;
        let tag = story
            .edit
            .event
            .as_ref()
            .map(|e| e.tag.clone())
            .unwrap_or_default();
        println!("  {}. {what}", n + 1);
        println!(
            "     -> the beacon saw it; event {} ({tag}) stored {:.1} ms after the edit",
            story.edit.id,
            stored.as_secs_f64() * 1000.0
        );
        println!(
            "     -> rule restore-motd started job {}; the file was back {:.1} ms after the edit",
            story.job,
            restored.as_secs_f64() * 1000.0
        );
        println!(
            "     -> the restore's own write came back marked as caused by job {}: no loop\n",
            story.job
        );
    }

    let keep = !no_wait && std::io::stdin().is_terminal();
    if keep {
        println!("Where to look next, in another terminal:");
        println!("  export TEND_MASTER={}", c.control);
        println!("  export PATH=\"{}:$PATH\"", c.bin.display());
        for (cmd, what) in NEXT {
            println!("  tend {cmd:<18} # {what}");
        }
        println!("  echo oops > {f}   # try it yourself");
        println!(
            "  logs: {}, {}",
            dir.join("master/master.log").display(),
            dir.join("minion/minion.log").display()
        );
        println!(
            "\nThe master and the minion keep running. Press Ctrl-C to stop them (their directory goes with them)."
        );
        // Ctrl-C reaches the daemons too (one process group): they stop
        // cleanly, and the demo outlives them to remove the directory.
        // SAFETY: setting a signal disposition; no handler runs.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        c.wait();
        return Ok(());
    }
    // The daemons stop when the demo ends: what the commands would show
    // is shown now, while they still run.
    println!(
        "Where to look next (run from a terminal, the demo keeps the daemons running for these):"
    );
    for cmd in SHOWN {
        println!("\n  $ tend {cmd}");
        let out = Command::new(c.bin.join("tend"))
            .args(cmd.split(' '))
            .env("TEND_MASTER", &c.control)
            .output()
            .with_context(|| format!("cannot run tend {cmd}"))?;
        if !out.status.success() {
            bail!(
                "tend {cmd} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("    {line}");
        }
    }
    println!("\n  and, with the daemons running:");
    for (cmd, what) in NEXT.iter().filter(|(cmd, _)| !SHOWN.contains(cmd)) {
        println!("  tend {cmd:<18} # {what}");
    }
    c.stop();
    println!("\nStopped the master and the minion.");
    Ok(())
}
