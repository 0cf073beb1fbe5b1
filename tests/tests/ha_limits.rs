//! Issue 16's limits, lifted: `store migrate` carries the key decisions,
//! a master restarted within its lease finishes its own rule applies, and
//! a minion heard only by masters that died is stored `down` once.

use std::time::Duration;

use tend_e2e::pg;
use tend_e2e::{Master, Minion, wait_until};

fn store_section(url: &str) -> String {
    format!("[store]\npostgres = {url:?}\n")
}

/// A minion with a session to master a only (its config lists a alone):
/// a killed -9, master b finds a's lease over and stores `minion/m1/down`
/// once, within the lease and a little. Before the fix no master stored
/// it (the next to hear the minion stored another `up`).
#[test]
fn a_minion_heard_only_by_a_master_that_died_is_stored_down_once_by_another() {
    let db = pg::database();
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Master::new(&tmp.path().join("a"), &store_section(&db.url));
    a.start();
    let mut b = Master::new(&tmp.path().join("b"), &store_section(&db.url));
    b.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &a, "");
    minion.start();
    a.wait_connected("m1");
    let count = |m: &Master, tag: &str| m.events(&["--tag", tag]).len();
    wait_until(Duration::from_secs(10), "m1 up, seen on b", || {
        (count(&b, "minion/m1/up") == 1).then_some(())
    });
    assert_eq!(count(&b, "minion/m1/down"), 0);
    a.daemon().kill9();
    let killed = std::time::Instant::now();
    wait_until(Duration::from_secs(20), "m1 down, stored by b", || {
        (count(&b, "minion/m1/down") >= 1).then_some(())
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "within the 5 s lease and a little: {took:?}"
    );
    // Every master checks every second: still one.
    std::thread::sleep(Duration::from_secs(3));
    let downs = b.events(&["--tag", "minion/m1/down"]);
    assert_eq!(downs.len(), 1, "down once: {downs:?}");
    assert_eq!(downs[0]["minion"], "m1", "{:?}", downs[0]);
    assert_eq!(count(&b, "minion/m1/up"), 1, "no second up");
}
