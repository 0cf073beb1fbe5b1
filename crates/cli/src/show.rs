//! Tables and summaries for people (the default output).

use tend_proto::v1::{Job, KeyList, MinionInfo, MinionResult, Outcome, Status, StoredEvent};

use crate::json;

fn time(us: i64) -> String {
    match json::time(us) {
        serde_json::Value::String(s) => {
            // Seconds are enough in a table.
            s.get(..19).map(|t| format!("{t}Z")).unwrap_or(s)
        }
        _ => "-".into(),
    }
}

fn ago(us: i64) -> String {
    if us <= 0 {
        return "never".into();
    }
    let secs = (tend_proto::now_us() - us).max(0) / 1_000_000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Prints rows with each column as wide as its widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn events(events: &[StoredEvent]) {
    if events.is_empty() {
        println!("no events");
        return;
    }
    let rows = events
        .iter()
        .map(|e| {
            let ev = e.event.clone().unwrap_or_default();
            let mut data = String::from_utf8_lossy(&ev.data).into_owned();
            if data.chars().count() > 120 {
                data = data.chars().take(117).collect::<String>() + "...";
            }
            vec![
                time(e.stored_us),
                ev.minion,
                if ev.seq == 0 {
                    "-".into()
                } else {
                    ev.seq.to_string()
                },
                ev.tag,
                if ev.cause == 0 {
                    "-".into()
                } else {
                    format!("job {}", ev.cause)
                },
                data,
            ]
        })
        .collect();
    table(&["STORED", "MINION", "SEQ", "TAG", "CAUSE", "DATA"], rows);
}

fn mark(outcome: i32) -> &'static str {
    match Outcome::try_from(outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Ok => "  ok     ",
        Outcome::Changed => "  changed",
        Outcome::WouldChange => "  would  ",
        Outcome::Failed => "  FAILED ",
        Outcome::Skipped => "  skipped",
        Outcome::Unspecified => "  ?      ",
    }
}

pub fn minion_result(r: &MinionResult) {
    println!(
        "{}: {} ({:.1} ms)",
        r.minion,
        r.status,
        r.duration_us as f64 / 1000.0
    );
    if !r.error.is_empty() {
        println!("  {}", r.error);
    }
    for s in &r.results {
        println!(
            "{} {} {} {}: {}",
            mark(s.outcome),
            s.id,
            s.kind,
            s.name,
            s.comment
        );
        for line in s.diff.lines() {
            println!("      {line}");
        }
    }
}

pub fn job_summary(job: &Job) {
    let count = |status: &str| job.minions.iter().filter(|m| m.status == status).count();
    let mut parts = Vec::new();
    for status in [
        "ok",
        "changed",
        "would-change",
        "failed",
        "timeout",
        "unreachable",
    ] {
        let n = count(status);
        if n > 0 {
            parts.push(format!("{n} {status}"));
        }
    }
    println!(
        "job {}: {} ({} minion{}: {})",
        job.id,
        job.status,
        job.minions.len(),
        if job.minions.len() == 1 { "" } else { "s" },
        parts.join(", ")
    );
}

pub fn job(job: &Job) {
    println!("job {}  {}  {}", job.id, job.kind, job.status);
    println!("  target:  {}", job.target);
    println!("  states:  {}", job.states.join(", "));
    if job.test {
        println!("  dry run");
    }
    if !job.rule.is_empty() {
        println!("  rule:    {}", job.rule);
        println!(
            "  trigger: {} (minion {}, seq {})",
            job.trigger_tag, job.trigger_minion, job.trigger_seq
        );
    }
    println!("  created: {}", time(job.created_us));
    if job.finished_us > 0 {
        println!(
            "  took:    {:.1} ms",
            (job.finished_us - job.created_us) as f64 / 1000.0
        );
    }
    for m in &job.minions {
        minion_result(m);
    }
}

pub fn jobs(jobs: &[Job]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.status.clone(),
                j.target.clone(),
                j.states.join(","),
                if j.rule.is_empty() {
                    "-".into()
                } else {
                    j.rule.clone()
                },
                time(j.created_us),
                if j.finished_us > 0 {
                    format!("{:.1} ms", (j.finished_us - j.created_us) as f64 / 1000.0)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATUS", "TARGET", "STATES", "RULE", "CREATED", "TOOK",
        ],
        rows,
    );
}

pub fn minions(minions: &[MinionInfo]) {
    if minions.is_empty() {
        println!("no minions yet");
        return;
    }
    let rows = minions
        .iter()
        .map(|m| {
            let fact = |k: &str| m.facts.get(k).cloned().unwrap_or_default();
            vec![
                m.id.clone(),
                if m.key_state.is_empty() {
                    "-".into()
                } else {
                    m.key_state.clone()
                },
                if m.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                ago(m.last_seen_us),
                m.version.clone(),
                m.acked_seq.to_string(),
                format!("{} {} {}", fact("os"), fact("os_version"), fact("kernel"))
                    .trim()
                    .to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KEY",
            "CONNECTED",
            "LAST SEEN",
            "VERSION",
            "EVENTS",
            "SYSTEM",
        ],
        rows,
    );
}

pub fn status(s: &Status) {
    println!(
        "tend-master {} (up since {})",
        s.version,
        time(s.started_us)
    );
    let mut counters: Vec<_> = s.counters.iter().collect();
    counters.sort();
    table(
        &["COUNTER", "VALUE"],
        counters
            .into_iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect(),
    );
}

pub fn keys(k: &KeyList) {
    println!("master key: {}", k.master_fingerprint);
    if k.keys.is_empty() {
        println!("no minion or operator keys yet");
        return;
    }
    let rows = k
        .keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                k.kind.clone(),
                k.state.clone(),
                k.fingerprint.clone(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "STATE", "FINGERPRINT"], rows);
}

pub fn pong(p: &tend_proto::v1::PingResult) {
    if p.ok {
        println!(
            "{}: answered in {:.2} ms (tend {})",
            p.minion,
            p.rtt_us as f64 / 1000.0,
            p.version
        );
    } else {
        println!("{}: no answer: {}", p.minion, p.error);
    }
}

pub fn run_result(r: &MinionResult) {
    println!(
        "{}: {} ({:.1} ms)",
        r.minion,
        r.status,
        r.duration_us as f64 / 1000.0
    );
    if !r.error.is_empty() {
        println!("  {}", r.error);
    }
    for s in &r.results {
        let out: serde_json::Value = serde_json::from_slice(&s.changes_json).unwrap_or_default();
        for (stream, text) in [("", &out["stdout"]), ("stderr: ", &out["stderr"])] {
            for line in text.as_str().unwrap_or("").lines() {
                println!("  {stream}{line}");
            }
        }
        if out["status"] != 0 {
            println!("  {}", s.comment);
        }
    }
}
