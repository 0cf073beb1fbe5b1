//! The master's memory stays bounded whatever is asked of it: a listing of
//! a million events is sent in pages the CLI asks for one after the other,
//! never built whole in the master.

use std::time::Duration;

use tend_e2e::{Master, Minion, wait_until};

/// A field of /proc/<pid>/status, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn listing_a_huge_limit_keeps_master_memory_bounded() {
    const EVENTS: u64 = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");
    // File-beacon-sized events.
    let data = format!(
        r#"{{"path": "/etc/{}", "kind": "modified"}}"#,
        "x".repeat(300)
    );
    // One send stays under the 1 MiB message limit.
    for _ in 0..EVENTS / 2_000 {
        let out = std::process::Command::new(tend_e2e::bin("tend-minion"))
            .arg("--config")
            .arg(minion.dir.join("minion.toml"))
            .args(["send", "bulk", &data, "--count", "2000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(Duration::from_secs(300), "every event stored", || {
        (master.counters()["events_stored"].as_u64() >= Some(EVENTS)).then_some(())
    });
    let pid = master.daemon().child.id();
    // The pages the store's cache holds are part of the baseline: one
    // listing of everything touches them all.
    let warm = master.tend(&["events", "--limit", "1"]);
    assert!(warm.status.success());
    let before = status_kb(pid, "VmHWM:");

    let out = master.tend(&["events", "--limit", "1000000", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = out.stdout.iter().filter(|b| **b == b'\n').count() as u64;
    // Every event, each once: the CLI went through every page.
    assert!(listed >= EVENTS, "listed {listed} of {EVENTS} events");
    let after = status_kb(pid, "VmHWM:");
    eprintln!("master VmHWM {before} kB before the listing, {after} kB after");
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "listing {listed} events took the master's peak memory from {before} kB to {after} kB"
    );
}
