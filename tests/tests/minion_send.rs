//! `tend-minion send` when the minion dies under it: it ends promptly and
//! says the minion went away, instead of waiting out its timeout and
//! blaming the master.

use std::time::{Duration, Instant};

use tend_e2e::{Master, Minion, wait_until};

#[test]
fn a_send_in_flight_at_a_minion_kill_ends_at_once_and_names_the_minion() {
    let tmp = tempfile::tempdir().unwrap();
    // No master needed: `send` ends at the minion's outbox.
    let master = Master::new(&tmp.path().join("master"), "");
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    let sender = minion.send_in_background("burst", 2_000_000);
    let outbox = minion.dir.join("data/outbox");
    wait_until(Duration::from_secs(60), "the send to be under way", || {
        std::fs::read_dir(&outbox)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .then_some(())
    });
    minion.daemon().kill9();
    let killed = Instant::now();
    let out = sender.wait_with_output().unwrap();
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the send cannot have succeeded");
    assert!(
        took < Duration::from_secs(5),
        "the send took {took:?} to notice the minion was gone: {stderr}"
    );
    assert!(
        stderr.contains("minion") && !stderr.contains("master"),
        "the error must name the minion, not the master: {stderr}"
    );
}
