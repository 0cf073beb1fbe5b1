//! The master's disk fills: the store refuses writes, the master says so
//! (`tend status`, metrics) and stops acknowledging, so the minions keep
//! their events; when space returns the store is reopened without a
//! restart and every accepted event is stored, once.
//!
//! The master's data dir is a real, small tmpfs (the tests run as root).

use std::collections::HashSet;
use std::time::Duration;

use tend_e2e::{Master, Minion, tmpfs_or_skip, wait_until};

fn send(minion: &Minion, tag: &str, count: u64) -> u64 {
    let out = minion.send(tag, count);
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    count
}

#[test]
fn a_full_disk_stops_acknowledgements_and_the_store_recovers_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("master");
    // Declared before the master: the master is stopped before the
    // unmount.
    let Some(disk) = tmpfs_or_skip(&dir.join("data"), "16m") else {
        return;
    };
    let mut master = Master::new(&dir, "");
    // A rule reacts to every event: the reactor, too, goes on once the
    // store works, each event reacted to once.
    master.rule_file(
        "echo.toml",
        r#"
        [[rule]]
        name = "echo"
        on = "minion/*/event/during"
        [[rule.action]]
        fire = "reacted"
        data = { seq = "{{ event.seq }}" }
        "#,
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");
    let stored = |m: &Master| {
        m.events(&["--tag", "minion/m1/event/during", "--limit", "1000000"])
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };

    disk.fill(&dir.join("data/filler"));
    // Events keep coming until the store refuses them.
    let mut sent = 0;
    let status = wait_until(
        Duration::from_secs(120),
        "the master's status to show the store failing",
        || {
            let status = master.tend_json(&["status"]).pop().unwrap();
            if status["store_error"].is_string() {
                return Some(status);
            }
            sent += send(&minion, "during", 200);
            None
        },
    );
    sent += send(&minion, "during", 200);
    let error = status["store_error"].as_str().unwrap();
    assert!(!error.is_empty(), "{status}");
    assert!(status["counters"]["store_failures"].as_u64() > Some(0));
    // Nothing more is acknowledged while it fails.
    let acked = |m: &Master| {
        m.tend_json(&["minions"])
            .iter()
            .find(|x| x["id"] == "m1")
            .and_then(|x| x["acked_seq"].as_u64())
            .unwrap_or(0)
    };
    let acked_while_failing = acked(&master);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        acked(&master),
        acked_while_failing,
        "acknowledged while failing"
    );

    // Space returns: the store works again, without a restart.
    std::fs::remove_file(dir.join("data/filler")).unwrap();
    wait_until(Duration::from_secs(60), "the store to work again", || {
        let status = master.tend_json(&["status"]).pop().unwrap();
        status["store_error"].is_null().then_some(())
    });
    let pid_before = master.daemon().child.id();
    wait_until(
        Duration::from_secs(120),
        "every event sent while the disk was full to be stored",
        || (stored(&master).len() as u64 >= sent).then_some(()),
    );
    let seqs = stored(&master);
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "an event was stored twice");
    assert_eq!(seqs.len() as u64, sent, "events lost or extra");
    assert!(
        !master
            .events(&["--tag", "master/store/recovered"])
            .is_empty(),
        "the recovery is announced"
    );
    let reacted = wait_until(
        Duration::from_secs(60),
        "every stored event reacted to",
        || {
            let r: Vec<String> = master
                .events(&["--tag", "reacted", "--limit", "1000000"])
                .iter()
                .map(|e| e["data"]["seq"].as_str().unwrap_or("").to_string())
                .collect();
            (r.len() as u64 >= sent).then_some(r)
        },
    );
    let unique: HashSet<&String> = reacted.iter().collect();
    assert_eq!(
        (unique.len(), reacted.len()),
        (sent as usize, sent as usize),
        "each event reacted to exactly once"
    );
    assert!(master.daemon().is_running());
    assert_eq!(master.daemon().child.id(), pid_before, "no restart");
}
