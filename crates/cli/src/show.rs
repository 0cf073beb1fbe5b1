//! Tables and summaries for people (the default output).

use tend_proto::v1::{Job, KeyList, MinionInfo, MinionResult, Outcome, Status, StoredEvent};

use crate::json;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static COLOUR: AtomicBool = AtomicBool::new(false);

/// Colour only when stdout is a terminal and NO_COLOR is not set
/// (<https://no-color.org>: set and not empty), and never for a dumb one.
pub fn init_colour() {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    COLOUR.store(
        std::io::stdout().is_terminal() && !no_color && !dumb,
        Ordering::Relaxed,
    );
}

#[derive(Clone, Copy)]
pub enum Paint {
    Red,
    Green,
    Yellow,
    Cyan,
    Dim,
    Bold,
}

/// `text` in a colour, when colour is on.
pub fn paint(text: &str, p: Paint) -> String {
    if !COLOUR.load(Ordering::Relaxed) {
        return text.to_string();
    }
    let code = match p {
        Paint::Red => "31;1",
        Paint::Green => "32",
        Paint::Yellow => "33",
        Paint::Cyan => "36",
        Paint::Dim => "2",
        Paint::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A status word in the colour that says good, changed or bad.
fn word(word: &str) -> String {
    let p = match word {
        "ok" | "yes" | "accepted" | "done" => Paint::Green,
        "changed" | "would-change" | "pending" | "running" | "queued" => Paint::Yellow,
        "failed" | "FAILED" | "timeout" | "unreachable" | "interrupted" | "no" | "rejected"
        | "denied" => Paint::Red,
        _ => return word.to_string(),
    };
    paint(word, p)
}

/// How wide `s` shows on a terminal: its characters, less colour codes.
fn width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

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
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                let pad = w.saturating_sub(width(&cell)) + 2;
                out.push_str(&cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| paint(h, Paint::Bold)).collect());
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
                paint(&ev.tag, Paint::Cyan),
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

fn mark(outcome: i32) -> String {
    let (word, p) = match Outcome::try_from(outcome).unwrap_or(Outcome::Unspecified) {
        Outcome::Ok => ("ok     ", Some(Paint::Green)),
        Outcome::Changed => ("changed", Some(Paint::Yellow)),
        Outcome::WouldChange => ("would  ", Some(Paint::Yellow)),
        Outcome::Failed => ("FAILED ", Some(Paint::Red)),
        Outcome::Skipped => ("skipped", Some(Paint::Dim)),
        Outcome::Unspecified => ("?      ", None),
    };
    match p {
        Some(p) => format!("  {}", paint(word, p)),
        None => format!("  {word}"),
    }
}

pub fn minion_result(r: &MinionResult) {
    println!(
        "{}: {} ({:.1} ms)",
        paint(&r.minion, Paint::Bold),
        word(&r.status),
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
        "interrupted",
    ] {
        let n = count(status);
        if n > 0 {
            parts.push(format!("{n} {}", word(status)));
        }
    }
    println!(
        "job {}: {} ({} minion{}: {})",
        job.id,
        word(&job.status),
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
                word(&j.status),
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
                    word(&m.key_state)
                },
                word(if m.connected { "yes" } else { "no" }),
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
    if !s.store_error.is_empty() {
        println!(
            "STORE FAILING since {}: {} (events are not acknowledged; minions keep them)",
            time(s.store_failing_since_us),
            s.store_error
        );
    }
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
            let mut labels: Vec<String> =
                k.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                k.name.clone(),
                k.kind.clone(),
                word(&k.state),
                k.fingerprint.clone(),
                labels.join(","),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "STATE", "FINGERPRINT", "LABELS"], rows);
    // A name with more than one key is a conflict the operator settles.
    let mut names: Vec<(&str, &str)> = k
        .keys
        .iter()
        .map(|k| (k.kind.as_str(), k.name.as_str()))
        .collect();
    names.sort();
    let conflicts: Vec<&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].1)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in conflicts {
        println!(
            "conflict: {name} has more than one key; accept the right one with `tend keys accept {name} --fingerprint sha256:...` after comparing with the peer's own"
        );
    }
}

pub fn pong(p: &tend_proto::v1::PingResult) {
    if p.ok {
        println!(
            "{}: {} in {:.2} ms (tend {})",
            p.minion,
            paint("answered", Paint::Green),
            p.rtt_us as f64 / 1000.0,
            p.version
        );
    } else {
        println!(
            "{}: {}: {}",
            p.minion,
            paint("no answer", Paint::Red),
            p.error
        );
    }
}

pub fn run_result(r: &MinionResult) {
    println!(
        "{}: {} ({:.1} ms)",
        paint(&r.minion, Paint::Bold),
        word(&r.status),
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

/// One event of a live tail: time, minion, tag, data.
pub fn event_line(e: &StoredEvent) {
    let ev = e.event.clone().unwrap_or_default();
    let stamp = match json::time(e.stored_us) {
        // The time of day to the millisecond is what a tail needs.
        serde_json::Value::String(s) => s.get(11..23).unwrap_or(&s).to_string(),
        _ => "-".into(),
    };
    let cause = if ev.cause == 0 {
        String::new()
    } else {
        format!(" (job {})", ev.cause)
    };
    println!(
        "{}  {}  {}{}  {}",
        paint(&stamp, Paint::Dim),
        paint(
            if ev.minion.is_empty() {
                "-"
            } else {
                &ev.minion
            },
            Paint::Bold
        ),
        paint(&ev.tag, Paint::Cyan),
        cause,
        String::from_utf8_lossy(&ev.data)
    );
}

/// `tend minion show`: the minion, its key, facts and recent events.
pub fn minion(m: &MinionInfo, fingerprint: &str, recent: &[StoredEvent], recent_jobs: &[Job]) {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    println!("{}", paint(&m.id, Paint::Bold));
    println!(
        "  key:         {} {}",
        word(&or_dash(&m.key_state)),
        fingerprint
    );
    println!(
        "  connected:   {}",
        word(if m.connected { "yes" } else { "no" })
    );
    println!(
        "  last seen:   {} ({})",
        ago(m.last_seen_us),
        time(m.last_seen_us)
    );
    println!("  version:     {}", or_dash(&m.version));
    println!(
        "  events:      {} stored (highest seq in order)",
        m.acked_seq
    );
    let mut facts: Vec<_> = m.facts.iter().collect();
    facts.sort();
    if facts.is_empty() {
        println!("  facts:       none yet (sent when the minion connects)");
    } else {
        println!("  facts:");
        let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in facts {
            println!("    {k:<w$}  {v}");
        }
    }
    println!();
    println!("recent jobs:");
    jobs(recent_jobs);
    println!();
    println!("recent events:");
    events(recent);
}

/// A progress line on stderr while minions answer ("7/10 answered, 1
/// failed"), only when stderr is a terminal and more than one minion was
/// asked; results print above it.
pub struct Progress {
    on: bool,
    total: usize,
    done: usize,
    failed: usize,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            total: 0,
            done: 0,
            failed: 0,
        }
    }

    pub fn targeted(&mut self, n: usize) {
        self.total = n;
        self.draw();
    }

    /// Before printing a result: the line goes, to be drawn again after.
    pub fn clear(&self) {
        if self.on && self.total > 1 {
            eprint!("\r\x1b[K");
        }
    }

    pub fn answered(&mut self, ok: bool) {
        self.done += 1;
        if !ok {
            self.failed += 1;
        }
        self.draw();
    }

    fn draw(&self) {
        if !self.on || self.total <= 1 {
            return;
        }
        let failed = if self.failed > 0 {
            format!(", {} failed", self.failed)
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[K{}/{} answered{failed}",
            self.done.min(self.total),
            self.total
        );
    }
}
