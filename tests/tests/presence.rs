//! Presence as an operator sees it (issue 15, item 11): a minion whose key
//! is accepted is connected at once, not at its next try; a minion
//! stopped with SIGTERM is down within a second, not at the presence
//! timeout; "last seen" is the last thing heard (heartbeats too).

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tend_e2e::{Master, Minion, wait_until};

fn minion_row(master: &Master, id: &str) -> Value {
    find_minion(master, id).unwrap_or_else(|| panic!("{id} is not in `tend minions`"))
}

/// The minion's row, if `tend minions` lists it yet.
fn find_minion(master: &Master, id: &str) -> Option<Value> {
    master
        .tend_json(&["minions"])
        .into_iter()
        .find(|m| m["id"] == id)
}

#[test]
fn an_accepted_minion_is_connected_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::new(&dir.path().join("m"), "auto_accept = false");
    master.start();
    let mut minion = Minion::new(&dir.path().join("web1"), "web1", &master, "");
    minion.start();
    // (Not listed at all until its first hello is heard.)
    wait_until(Duration::from_secs(20), "web1's key to be pending", || {
        (find_minion(&master, "web1")?["key"] == "pending").then_some(())
    });
    // Its first try was refused: from here it waits on its next one (2 to
    // 3 s) unless the master welcomes it when the key is accepted.
    let out = master.tend(&["keys", "accept", "web1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = Instant::now();
    assert_eq!(
        minion_row(&master, "web1")["connected"],
        true,
        "connected as soon as `tend keys accept` returned"
    );
    wait_until(Duration::from_secs(5), "`tend ping web1` to answer", || {
        master
            .tend(&["ping", "web1", "--timeout", "1"])
            .status
            .success()
            .then_some(())
    });
    assert!(
        accepted.elapsed() < Duration::from_millis(1500),
        "ping answered {:?} after the accept",
        accepted.elapsed()
    );
}

#[test]
fn a_stopped_minion_is_down_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    // A presence timeout far longer than the second the test allows.
    let mut master = Master::new(
        &dir.path().join("m"),
        "heartbeat_ms = 1000\npresence_timeout_ms = 30000",
    );
    master.start();
    let mut minion = Minion::new(&dir.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    let status = minion.daemon().stop();
    assert!(status.success(), "{status:?}");
    let stopped = Instant::now();
    assert_eq!(
        minion_row(&master, "web1")["connected"],
        false,
        "disconnected once the minion has exited"
    );
    let down = wait_until(Duration::from_secs(5), "web1's down event", || {
        master
            .events(&["--tag", "minion/web1/down"])
            .into_iter()
            .next()
    });
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "the down event took {:?}",
        stopped.elapsed()
    );
    let reason = down["data"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("goodbye"), "{down}");
    assert_eq!(master.counters()["bus_sessions_closed"], 1);
}

#[test]
fn last_seen_is_the_last_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 200 ms; no beacons, so no events after `up`.
    let mut master = Master::new(&dir.path().join("m"), "");
    master.start();
    let mut minion = Minion::new(&dir.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    let up = Instant::now();
    wait_until(Duration::from_secs(5), "two seconds to pass", || {
        (up.elapsed() > Duration::from_secs(2)).then_some(())
    });
    let row = minion_row(&master, "web1");
    let seen =
        humantime::parse_rfc3339(row["last_seen"].as_str().expect("last_seen")).expect("RFC 3339");
    let ago = SystemTime::now()
        .duration_since(seen)
        .unwrap_or(Duration::ZERO);
    assert!(
        ago < Duration::from_secs(1),
        "last seen {ago:?} ago, with a heartbeat every 200 ms: {row}"
    );
}
