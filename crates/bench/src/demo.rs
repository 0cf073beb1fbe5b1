//! The demo: a master and a minion on 127.0.0.1, and a managed file put
//! back however it is edited.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{self, Cluster, hand_write, wait};
use crate::edits::one_edit;

pub fn demo(no_wait: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tend-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "tend demo: a master and a minion on 127.0.0.1, in {}\n",
        dir.display()
    );
    let mut c = Cluster::new(&dir, false)?;
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

    let tend = c.bin.join("tend");
    let master_flag = format!("--master {}", c.control);
    println!("Where to look next:");
    println!(
        "  {} {master_flag} events            # every event, newest first",
        tend.display()
    );
    println!(
        "  {} {master_flag} events --json     # the same, one JSON object per line",
        tend.display()
    );
    println!(
        "  {} {master_flag} events --follow   # live, as they are stored (in another terminal)",
        tend.display()
    );
    println!(
        "  {} {master_flag} jobs              # the restores, and what they changed",
        tend.display()
    );
    println!("  {} {master_flag} minions", tend.display());
    println!(
        "  {} {master_flag} keys list         # minion keys: pending, accepted, rejected, denied",
        tend.display()
    );
    println!("  echo oops > {f}             # try it yourself");
    println!(
        "  logs: {}/master/master.log, {}/minion/minion.log",
        dir.display(),
        dir.display()
    );
    if !no_wait && std::io::stdin().is_terminal() {
        println!("\nThe master and the minion keep running. Press Ctrl-C to stop them.");
        c.wait();
    } else {
        c.stop();
        println!("\nStopped the master and the minion (run from a terminal to keep them running).");
    }
    Ok(())
}
