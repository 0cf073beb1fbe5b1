//! tend-bench: tend measured on this machine, with real daemons on
//! loopback; and the demo, which is the same setup shown to a person.
//!
//! Every benchmark prints min / median / p99 / max; `--json` prints the
//! same as one JSON object. No benchmark asserts a time.

mod cluster;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use tend_proto::v1::StoredEvent;

use crate::cluster::{Cluster, hand_write, wait};

#[derive(Parser)]
#[command(version, about = "tend's benchmarks, and the demo")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a master and a minion on 127.0.0.1 and show a hand edit being
    /// put back.
    Demo {
        /// Stop once shown, even on a terminal.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drift -> restore: edit a managed file by hand N times; time from
    /// the write to the restored content, and to the event stored.
    Drift {
        /// Edits to time (after 5 not counted, to warm up).
        #[arg(long, default_value_t = 200)]
        edits: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Cmd::Demo { no_wait } => demo(no_wait),
        Cmd::Drift { edits, json } => drift(edits, json),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tend-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Summary of a set of samples, in milliseconds.
struct Summary {
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    n: usize,
}

impl Summary {
    fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        Self {
            min: ms[0],
            median: at(0.5),
            p99: at(0.99),
            max: ms[ms.len() - 1],
            n: ms.len(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"n": self.n, "min_ms": self.min, "median_ms": self.median, "p99_ms": self.p99, "max_ms": self.max})
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.n, self.min, self.median, self.p99, self.max
        )
    }
}

/// After a hand edit at `written_us`: the edit's beacon event, the job it
/// triggered, and the job's own (caused) write, once all are stored.
struct Story {
    edit: StoredEvent,
    job: u64,
}

fn story(events: &[StoredEvent]) -> Option<Story> {
    let ev = |e: &StoredEvent| e.event.clone().unwrap_or_default();
    let edit = events
        .iter()
        .find(|e| ev(e).tag.contains("/beacon/motd/") && ev(e).cause == 0)?;
    let edit_seq = ev(edit).seq;
    let job = events.iter().find_map(|e| {
        let e = ev(e);
        if !e.tag.contains("/job/") {
            return None;
        }
        let data: serde_json::Value = serde_json::from_slice(&e.data).ok()?;
        (data["trigger_seq"] == edit_seq).then(|| data["job"].as_u64())?
    })?;
    events.iter().any(|e| ev(e).cause == job).then(|| Story {
        edit: edit.clone(),
        job,
    })
}

fn last_id(c: &Cluster) -> anyhow::Result<u64> {
    Ok(c.events_after(0)?.last().map_or(0, |e| e.id))
}

/// Makes one hand edit and waits for it to be undone. Returns (write ->
/// restored, write -> event stored, the story).
fn one_edit(
    c: &Cluster,
    edit: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration, Story)> {
    let after = last_id(c)?;
    let written_us = tend_proto::now_us();
    let t0 = Instant::now();
    edit()?;
    // Spin on the file itself: what a user would see.
    let deadline = t0 + Duration::from_secs(10);
    let restored = loop {
        if c.is_managed() {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the file was not restored within 10 s");
        }
        std::thread::sleep(Duration::from_micros(20));
    };
    let mut found = None;
    wait(
        Duration::from_secs(10),
        "the edit, the job and the restore to be stored",
        || {
            found = story(&c.events_after(after)?);
            Ok(found.is_some())
        },
    )?;
    let story = found.context("story")?;
    let stored = Duration::from_micros((story.edit.stored_us - written_us).max(0) as u64);
    if std::env::var_os("TEND_BENCH_DEBUG").is_some() {
        let emitted = story.edit.event.as_ref().map_or(0, |e| e.time_us);
        eprintln!(
            "emit {} stored {}",
            emitted - written_us,
            story.edit.stored_us - emitted
        );
    }
    Ok((restored, stored, story))
}

fn start(dir: &std::path::Path) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(dir, true)?;
    c.start_master()?;
    c.start_minion()?;
    let out = c.tend(&["apply", "demo-minion", "motd"])?;
    if !out.status.success() {
        bail!(
            "the first apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(c)
}

fn drift(edits: usize, as_json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    let mut restored = Vec::new();
    let mut stored = Vec::new();
    for i in 0..edits + 5 {
        let text = format!("drift {i}\n");
        let (r, s, _) = one_edit(&c, || Ok(hand_write(&c.managed, &text)?))?;
        if i >= 5 {
            restored.push(r);
            stored.push(s);
        }
    }
    let (r, s) = (Summary::of(&restored), Summary::of(&stored));
    if as_json {
        println!(
            "{}",
            json!({"benchmark": "drift", "write_to_restored": r.json(), "write_to_event_stored": s.json()})
        );
    } else {
        println!("drift: a managed file edited by hand, {edits} times (ms)");
        println!(
            "{:<28} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "", "n", "min", "median", "p99", "max"
        );
        println!("{}", r.row("write -> restored"));
        println!("{}", s.row("write -> event stored"));
    }
    Ok(())
}

fn demo(no_wait: bool) -> anyhow::Result<()> {
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
