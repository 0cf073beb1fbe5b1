//! The benchmark tool runs (tiny sizes; no figure is judged here, the
//! figures live in BENCHMARKS.md).

use std::process::Command;

use tend_e2e::bin;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("tend-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run tend-bench");
    assert!(
        out.status.success(),
        "tend-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tend-bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn every_benchmark_runs_at_a_tiny_size() {
    let drift = bench(&["drift", "--edits", "3"]);
    assert_eq!(drift["write_->_restored"]["n"], 3);
    let ingest = bench(&[
        "ingest",
        "--minions",
        "2",
        "--events",
        "300",
        "--rules",
        "5",
    ]);
    assert_eq!(ingest["lost"]["value"], 0);
    assert_eq!(ingest["events"]["value"], 600);
    bench(&["fanout", "--minions", "3", "--runs", "2"]);
    let scale = bench(&["scale", "--minions", "10"]);
    assert_eq!(scale["connected_(master's_count)"]["value"], 10);
    bench(&["restart", "--minions", "5"]);
    bench(&["startup", "--runs", "1"]);
    bench(&["apply", "--runs", "2"]);
    bench(&["footprint", "--seconds", "1"]);
    bench(&["outbox", "--events", "200"]);
    bench(&["seal", "--events", "2000"]);
    bench(&["states", "--count", "20", "--runs", "2"]);
    bench(&["rules", "--events", "1000"]);
    bench(&["processes", "--extra", "20", "--looks", "5"]);
    bench(&["follow", "--events", "3"]);
}

#[test]
fn the_demo_runs_to_the_end() {
    let out = Command::new(bin("tend-bench"))
        .args(["demo", "--no-wait"])
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("keys accept demo-minion")
            && text.contains("no loop")
            && text.contains("Where to look next"),
        "{text}"
    );
    // Not on a terminal the daemons stop at the end: the commands it
    // points at ran while they were up, and show what happened (issue
    // 15, item 19).
    let next = &text[text.find("Where to look next").unwrap_or(0)..];
    let jobs = next
        .split("$ tend jobs")
        .nth(1)
        .unwrap_or_else(|| panic!("`tend jobs` was not shown:\n{text}"));
    assert!(
        jobs.contains("motd"),
        "`tend jobs` showed no restore:\n{text}"
    );
    assert!(
        !text.contains("--master"),
        "TEND_MASTER, not --master on every line:\n{text}"
    );
    // Its temporary directory is gone.
    let dir = text
        .lines()
        .next()
        .and_then(|l| l.split(" in ").nth(1))
        .unwrap_or_else(|| panic!("the first line names no directory:\n{text}"));
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo left {dir} behind"
    );
    assert!(text.contains(&format!("Removed {dir}.")), "{text}");
}
