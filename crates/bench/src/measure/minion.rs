//! The minion's own costs: the process beacon's look, the outbox end to
//! end, and states already correct.

use super::prelude::*;

/// What one look of the process beacon costs on a busy box: `extra`
/// sleeping processes are started, then the beacon's incremental look
/// (list /proc, read only new pids' names) is timed against a full scan
/// (read every process's name), side by side.
pub fn processes(extra: usize, looks: usize) -> anyhow::Result<Report> {
    use tend_beacons::Processes;
    let mut children = Vec::new();
    for _ in 0..extra {
        children.push(
            std::process::Command::new("sleep")
                .arg("600")
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let total = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    let mut r = Report::new(
        "processes",
        format!("process beacon: one look with {total} processes running, {looks} looks"),
    );
    let mut incremental = Processes::new(&["sshd", "cron"]);
    incremental.scan().map_err(anyhow::Error::msg)?;
    let reads_before = incremental.reads;
    let mut inc = Vec::new();
    for _ in 0..looks {
        let t = Instant::now();
        incremental.scan().map_err(anyhow::Error::msg)?;
        inc.push(t.elapsed());
    }
    let mut full = Vec::new();
    for _ in 0..looks {
        let t = Instant::now();
        Processes::new(&["sshd", "cron"])
            .scan()
            .map_err(anyhow::Error::msg)?;
        full.push(t.elapsed());
    }
    r.timing("incremental look (the beacon)", &inc);
    r.timing("full process-table scan", &full);
    r.figure(
        "names read per incremental look",
        (incremental.reads - reads_before) as f64 / looks as f64,
        "comm files",
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(r)
}

/// The minion's outbox end to end: `tend-minion send` bursts, until the
/// master acknowledged them all; with fsync on and off, side by side.
pub fn outbox(events: u64) -> anyhow::Result<Report> {
    let mut r = Report::new(
        "outbox",
        format!("outbox: {events} events from one minion, through its outbox to the store"),
    );
    for fsync in [true, false] {
        let tmp = tempfile::tempdir()?;
        let mut c = Cluster::with(
            tmp.path(),
            true,
            &format!("[outbox]\nfsync = {fsync}\nmax_bytes = 1073741824\n"),
        )?;
        c.start_master()?;
        c.start_minion()?;
        let start = Instant::now();
        let out = c.send("bench", events)?;
        if !out.status.success() {
            bail!("send failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let last: u64 = String::from_utf8_lossy(&out.stdout)
            .rsplit("..=")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .context("send output")?;
        let written = start.elapsed();
        wait(Duration::from_secs(600), "every event acknowledged", || {
            Ok(c.minions()?.iter().any(|m| m.acked_seq >= last))
        })?;
        let took = start.elapsed();
        let label = if fsync { "fsync on" } else { "fsync off" };
        r.figure(
            &format!("written to the outbox, {label}"),
            events as f64 / written.as_secs_f64(),
            "events/s",
        );
        r.figure(
            &format!("stored and acknowledged, {label}"),
            events as f64 / took.as_secs_f64(),
            "events/s",
        );
    }
    Ok(r)
}

/// The minion's side of an apply: `count` `file.managed` states, run once
/// to create the files, then timed while they are already correct (the
/// engine compares contents, mode and owner; it does not rewrite).
pub fn states(count: usize, runs: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&format!(
            "[f{i}]\ntype = \"file.managed\"\npath = \"{}/f{i}.conf\"\ncontents = \"setting_{i} = {}\\n\"\nmode = \"0644\"\n\n",
            dir.path().display(),
            "x".repeat(200)
        ));
    }
    let set = tend_state::parse_state_file("bench.toml", "bench", &text)?;
    let ledger = tend_state::Ledger::default();
    let opts = tend_state::ApplyOptions {
        test: false,
        job: 1,
        ledger: Some(&ledger),
        backup_dir: None,
    };
    let first = Instant::now();
    tend_state::apply(&set, &opts);
    let created = first.elapsed();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let results = tend_state::apply(&set, &opts);
        samples.push(start.elapsed());
        if results
            .iter()
            .any(|r| r.outcome != tend_proto::v1::Outcome::Ok as i32)
        {
            bail!("a state that was correct reported a change");
        }
    }
    let mut r = Report::new(
        "states",
        format!("states: {count} file.managed states, already correct, {runs} runs"),
    );
    r.timing(&format!("apply {count} correct states"), &samples);
    r.figure(
        "first apply (creating them)",
        created.as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(r)
}
