//! A full outbox's drop reports tell the truth: a minion whose small
//! outbox overflows during a cut reports as dropped exactly the events the
//! master never got (the master's `lost`), not the ones it had stored
//! before their acknowledgements could come back, and a restart reports
//! nothing more.

use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, Proxy, wait_until};

fn sum(master: &Master, tag: &str, key: &str) -> u64 {
    master
        .events(&["--tag", tag])
        .iter()
        .map(|e: &Value| e["data"][key].as_u64().unwrap_or(0))
        .sum()
}

fn acked(master: &Master, id: &str) -> u64 {
    master
        .tend_json(&["minions"])
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["acked_seq"].as_u64())
        .unwrap_or(0)
}

#[test]
fn drops_during_a_cut_are_reported_as_the_master_counts_them_and_not_again_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let events = Proxy::start(master.event_endpoint.trim_start_matches("tcp://"));
    let commands = Proxy::start(master.command_endpoint.trim_start_matches("tcp://"));
    let mut minion = Minion::with_endpoints(
        &tmp.path().join("m1"),
        "m1",
        &events.endpoint(),
        &commands.endpoint(),
        "[outbox]\nmax_bytes = 65536\n",
    );
    minion.start();
    master.wait_connected("m1");
    let stored = |master: &Master| {
        master
            .events(&["--tag", "minion/m1/event/burst", "--limit", "1000000"])
            .len() as u64
    };

    let total = 20_000;
    let sender = minion.send_in_background("burst", total);
    wait_until(
        Duration::from_secs(60),
        "2,000 events stored before the cut",
        || (stored(&master) >= 2_000).then_some(()),
    );
    // A partition: what is in flight stays in flight; acknowledgements
    // stop coming back while the outbox overflows.
    events.stall();
    commands.stall();
    let out = sender.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    events.heal();
    commands.heal();
    wait_until(
        Duration::from_secs(90),
        "everything acknowledged after the heal",
        || (acked(&master, "m1") >= total).then_some(()),
    );
    let lost = |m: &Master| sum(m, "minion/m1/lost", "count");
    let dropped = |m: &Master| sum(m, "minion/m1/outbox/dropped", "dropped");
    // Reports are events too: wait until both sides have said their piece.
    wait_until(
        Duration::from_secs(30),
        "the minion's report to match the master's count",
        || (dropped(&master) == lost(&master)).then_some(()),
    );
    // The outbox did overflow: what it dropped had been published before
    // the cut and reached the master after it, so nothing is lost and
    // nothing may be reported.
    assert!(
        minion
            .daemon()
            .log_text()
            .contains("dropped its oldest segment"),
        "the outbox never overflowed: the test tested nothing"
    );
    assert_eq!(
        stored(&master) + lost(&master),
        total,
        "stored + lost is every event sent"
    );

    // A restart reports no drop of events that were all settled.
    let before = dropped(&master);
    let ups = master.events(&["--tag", "minion/m1/up"]).len();
    minion.daemon().stop();
    minion.start();
    wait_until(Duration::from_secs(30), "the minion back", || {
        (master.events(&["--tag", "minion/m1/up"]).len() > ups).then_some(())
    });
    assert!(minion.send("after", 10).status.success());
    wait_until(Duration::from_secs(30), "the later events stored", || {
        (master.events(&["--tag", "minion/m1/event/after"]).len() == 10).then_some(())
    });
    assert_eq!(dropped(&master), before, "a restart reported drops again");
}
