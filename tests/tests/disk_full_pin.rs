//! A full disk at a minion's first contact with its master (issue 14,
//! item 10): the trust-on-first-use pin must not be left empty, so the
//! real master is accepted once space returns.
//!
//! Runs on a real, small tmpfs mounted over the minion's data dir (the
//! tests run as root); the mount is undone when the test ends, pass or fail.

use std::process::Command;
use std::time::Duration;

use tend_e2e::{Master, Minion, tmpfs_or_skip, wait_until};

#[test]
fn issue_14_item_10_a_full_disk_at_first_contact_does_not_poison_the_master_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    let dir = tmp.path().join("m");
    let Some(disk) = tmpfs_or_skip(&dir.join("data"), "2m") else {
        return;
    };
    // The minion starts with no master to talk to: it makes its key and
    // its outbox, but has pinned nothing yet.
    let mut minion = Minion::new(&dir, "web1", &master, "");
    minion.start();
    let filler = dir.join("data/filler");
    disk.fill(&filler);

    // First contact on a full disk: the pin cannot be written.
    master.start();
    wait_until(
        Duration::from_secs(30),
        "the minion to fail to record the master's key",
        || {
            minion
                .daemon()
                .log_text()
                .contains("cannot record the master's key")
                .then_some(())
        },
    );
    assert!(
        !master
            .tend_json(&["minions"])
            .iter()
            .any(|m| m["connected"] == true)
    );

    // Space returns: the real master is trusted and recorded, with no
    // restart and nothing to delete by hand.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !master
        .tend_json(&["minions"])
        .iter()
        .any(|m| m["id"] == "web1" && m["connected"] == true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "web1 did not connect once space returned:\n{}",
            minion.daemon().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pin = std::fs::read_to_string(dir.join("data/master.fingerprint")).unwrap();
    let real = String::from_utf8(
        Command::new(tend_e2e::bin("tend-master"))
            .arg("--config")
            .arg(master.config())
            .arg("--fingerprint")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(pin.trim(), real.trim());

    // And after a restart too.
    let opened = |m: &mut Minion| {
        m.daemon()
            .log_text()
            .matches("session with the master open")
            .count()
    };
    let before = opened(&mut minion);
    minion.daemon().stop();
    minion.start();
    wait_until(Duration::from_secs(30), "web1 to reconnect", || {
        (opened(&mut minion) > before).then_some(())
    });
    master.wait_connected("web1");
    assert!(!minion.daemon().log_text().contains("first seen had"));
}
