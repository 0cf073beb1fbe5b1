//! Jobs for people: one minion's answer as it arrives (state results, or
//! what a command printed), the one-line summary of a job, a job in
//! detail, and the table of jobs.

use tend_proto::v1::{Job, MinionResult, Outcome};

use super::colour::{Paint, paint, word};
use super::table;

/// A state result's mark: its outcome, padded to one width.
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

/// One minion's answer to an apply: its status, then every state result
/// with its diff.
pub fn minion_result(r: &MinionResult) {
    println!(
        "{}: {} ({:.1} ms)",
        paint(&r.minion, Paint::Bold),
        word(&r.status),
        r.duration_us as f64 / 1000.0
    );
    for said in [&r.error, &r.comment] {
        if !said.is_empty() {
            println!("  {said}");
        }
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
        if s.outcome == Outcome::Failed as i32 {
            printed(&s.changes_json);
        }
    }
}

/// What a failed command printed, from its state's changes: all of its
/// stdout and stderr (the minion bounds them), each line marked.
fn printed(changes_json: &[u8]) {
    let changes: serde_json::Value = serde_json::from_slice(changes_json).unwrap_or_default();
    for stream in ["stdout", "stderr"] {
        for line in changes[stream].as_str().unwrap_or("").lines() {
            println!("      {stream}: {line}");
        }
    }
}

/// One minion's answer to `tend run`: what the command printed, and why
/// it failed when it did.
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

/// A job in one line: its status and how many minions ended how.
pub fn summary(job: &Job) {
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

/// `tend jobs show`: one job with every state result.
pub fn show(job: &Job) {
    println!("job {}  {}  {}", job.id, job.kind, job.status);
    println!("  target:  {}", job.target);
    println!("  states:  {}", job.states.join(", "));
    if job.test {
        println!("  dry run");
    }
    if !job.operator.is_empty() {
        println!("  by:      {}", job.operator);
    }
    if job.local_id != 0 {
        println!(
            "  local:   run by the minion itself while cut off (its job {})",
            job.local_id & !(1 << 62)
        );
    }
    if !job.rule.is_empty() {
        println!("  rule:    {}", job.rule);
        println!(
            "  trigger: {} (minion {}, seq {})",
            job.trigger_tag, job.trigger_minion, job.trigger_seq
        );
    }
    println!("  created: {}", table::time(job.created_us));
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

/// Who started a job: the operator, or `rule NAME`.
fn by(j: &Job) -> String {
    match (j.operator.as_str(), j.rule.as_str()) {
        ("", rule) if j.local_id != 0 => format!("rule {rule} (local)"),
        ("", "") => "-".into(),
        ("", rule) => format!("rule {rule}"),
        (operator, _) => operator.to_string(),
    }
}

/// Jobs as a table.
pub fn list(jobs: &[Job]) {
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
                by(j),
                table::time(j.created_us),
                if j.finished_us > 0 {
                    format!("{:.1} ms", (j.finished_us - j.created_us) as f64 / 1000.0)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table::print(
        &["ID", "STATUS", "TARGET", "STATES", "BY", "CREATED", "TOOK"],
        rows,
    );
}
