//! A minion whose disk fills: its data dir on a real 2 MiB tmpfs.
//!
//! The outbox must hold its bound against the space actually there
//! (dropping its oldest events with a report, never stalling), must not
//! publish what it could not keep, and must never number two events
//! alike, whatever a crash left on the full disk.

use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, tmpfs_or_skip, wait_until};

/// Stored events tagged `minion/<id>/event/<tag>`.
fn stored(master: &Master, id: &str, tag: &str) -> Vec<Value> {
    master.events(&[
        "--tag",
        &format!("minion/{id}/event/{tag}"),
        "--limit",
        "1000000",
    ])
}

fn acked(master: &Master, id: &str) -> u64 {
    master
        .tend_json(&["minions"])
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["acked_seq"].as_u64())
        .unwrap_or(0)
}

fn ok(out: &std::process::Output) -> bool {
    out.status.success()
}

#[test]
fn a_minion_whose_outbox_fills_its_disk_drops_the_oldest_with_a_report_and_never_stalls() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    // The default max_bytes (64 MiB) on a 2 MiB disk, the master down.
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    let Some(_disk) = tmpfs_or_skip(&minion.dir.join("data"), "2m") else {
        return;
    };
    minion.start();
    // About 5 MB of events: more than twice the disk.
    let (rounds, per) = (10u64, 5_000u64);
    for round in 0..rounds {
        let out = minion.send("fill", per);
        assert!(
            ok(&out),
            "send {round} failed on a full disk instead of dropping the oldest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sent = rounds * per;

    master.start();
    master.wait_connected("m1");
    wait_until(
        Duration::from_secs(60),
        "the minion's outbox/dropped report",
        || master.events(&["--tag", "minion/m1/outbox/dropped"]).pop(),
    );
    wait_until(
        Duration::from_secs(60),
        "every event still held acknowledged",
        || (acked(&master, "m1") >= sent).then_some(()),
    );
    let dropped: u64 = master
        .events(&["--tag", "minion/m1/outbox/dropped"])
        .iter()
        .map(|e| e["data"]["dropped"].as_u64().unwrap())
        .sum();
    let kept = stored(&master, "m1", "fill").len() as u64;
    assert!(dropped > 0 && kept > 0, "dropped {dropped}, kept {kept}");
    assert_eq!(kept + dropped, sent, "stored + dropped is every event sent");
    let lost: u64 = master
        .events(&["--tag", "minion/m1/lost"])
        .iter()
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        lost, dropped,
        "the minion and the master count the same loss"
    );

    // Not stalled: more sends work now, and after a restart.
    for _ in 0..2 {
        for _ in 0..10 {
            let out = minion.send("after", 100);
            assert!(
                ok(&out),
                "send after the master returned failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        minion.daemon().stop();
        minion.start();
    }
    wait_until(
        Duration::from_secs(60),
        "the 2,000 later events stored",
        || (stored(&master, "m1", "after").len() == 2_000).then_some(()),
    );
}

#[test]
fn sends_that_fail_on_a_full_disk_are_not_delivered_and_a_crash_reuses_no_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m2"), "m2", &master, "");
    let Some(disk) = tmpfs_or_skip(&minion.dir.join("data"), "2m") else {
        return;
    };
    minion.start();
    master.wait_connected("m2");
    assert!(ok(&minion.send("before", 500)));
    wait_until(Duration::from_secs(30), "500 events stored", || {
        (stored(&master, "m2", "before").len() == 500).then_some(())
    });

    // The disk fills up under the minion.
    let filler = disk.fill(&disk.dir.join("filler"));
    let mut succeeded = 0;
    for _ in 0..20 {
        if ok(&minion.send("during", 50)) {
            succeeded += 1;
        }
    }
    minion.daemon().kill9();
    std::fs::remove_file(filler).unwrap();
    minion.start();
    master.wait_connected("m2");
    for i in 0..20 {
        let out = minion.send("after", 50);
        assert!(
            ok(&out),
            "send {i} after the restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(
        Duration::from_secs(60),
        "all 1,000 events sent after the restart stored",
        || (stored(&master, "m2", "after").len() == 1_000).then_some(()),
    );
    // What `send` said about the full disk was true: exactly the events
    // of the sends that succeeded reached the master.
    assert_eq!(
        stored(&master, "m2", "during").len(),
        succeeded * 50,
        "{succeeded} sends succeeded while the disk was full"
    );
    let mut seqs: Vec<u64> = ["before", "during", "after"]
        .iter()
        .flat_map(|tag| stored(&master, "m2", tag))
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a seq was stored for two events");
}
