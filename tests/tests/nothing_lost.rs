//! Nothing lost: events survive a master killed mid-burst, a minion killed
//! mid-burst, a cut network, and an outbox that overflows says exactly how
//! much it dropped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tend_e2e::{Master, Minion, Proxy, wait_until};

const BURST: &str = "burst";

/// The burst events stored for `minion`: (seq, n) pairs.
fn burst(master: &Master, minion: &str) -> Vec<(u64, u64)> {
    let tag = format!("minion/{minion}/event/{BURST}");
    master
        .events(&["--minion", minion, "--tag", &tag, "--limit", "1000000"])
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"]["n"].as_u64().unwrap()))
        .collect()
}

/// Every n in 0..count stored exactly once, every seq once.
fn assert_exactly_once(events: &[(u64, u64)], count: u64) {
    let seqs: HashSet<u64> = events.iter().map(|e| e.0).collect();
    let ns: HashSet<u64> = events.iter().map(|e| e.1).collect();
    assert_eq!(seqs.len(), events.len(), "a seq was stored twice");
    assert_eq!(ns.len(), events.len(), "an event was stored twice");
    assert_eq!(
        events.len() as u64,
        count,
        "expected {count} events stored, found {}",
        events.len()
    );
    assert!(ns.iter().all(|n| *n < count));
}

fn acked(master: &Master, minion: &str) -> u64 {
    master
        .tend_json(&["minions"])
        .iter()
        .find(|m| m["id"] == minion)
        .and_then(|m| m["acked_seq"].as_u64())
        .unwrap_or(0)
}

fn stored(master: &Master) -> u64 {
    master.counters()["events_stored"].as_u64().unwrap_or(0)
}

fn sent_range(out: &std::process::Output) -> (u64, u64) {
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let range = text.rsplit("seq ").next().unwrap().trim();
    let (a, b) = range.split_once("..=").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn a_master_killed_mid_burst_loses_nothing_and_stores_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");

    let sender = minion.send_in_background(BURST, 100_000);
    wait_until(
        Duration::from_secs(60),
        "10,000 events stored before the kill",
        || (stored(&master) >= 10_000).then_some(()),
    );
    master.daemon().kill9();
    let (_, last) = sent_range(&sender.wait_with_output().unwrap());
    master.start();
    wait_until(
        Duration::from_secs(120),
        "every event acknowledged after the restart",
        || (acked(&master, "m1") >= last).then_some(()),
    );
    assert_exactly_once(&burst(&master, "m1"), 100_000);
    // The kill really was mid-burst: the new master stored a good part.
    assert!(
        stored(&master) >= 1_000,
        "the restarted master stored only {}",
        stored(&master)
    );
}

#[test]
fn a_minion_killed_mid_burst_delivers_what_it_had_written_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m2"), "m2", &master, "");
    minion.start();
    master.wait_connected("m2");

    let sender = minion.send_in_background(BURST, 100_000);
    wait_until(
        Duration::from_secs(60),
        "10,000 events stored before the kill",
        || (stored(&master) >= 10_000).then_some(()),
    );
    minion.daemon().kill9();
    let mut sender = sender;
    let _ = sender.kill(); // it would wait for the dead minion's answer
    minion.start();
    // The restarted minion says in its hello how far its outbox goes.
    let next_seq = wait_until(
        Duration::from_secs(20),
        "the minion's hello after the restart",
        || {
            master
                .events(&["--tag", "minion/m2/up"])
                .iter()
                .filter_map(|e| e["data"]["next_seq"].as_u64())
                .max()
                .filter(|n| *n > 1)
        },
    );
    let written = next_seq - 1;
    wait_until(
        Duration::from_secs(60),
        "every written event acknowledged",
        || (acked(&master, "m2") >= written).then_some(()),
    );
    let events = burst(&master, "m2");
    let seqs: Vec<u64> = {
        let mut s: Vec<u64> = events.iter().map(|e| e.0).collect();
        s.sort_unstable();
        s
    };
    assert!(
        written >= 10_000,
        "only {written} events were written before the kill"
    );
    assert!(
        written < 100_000,
        "the kill came after the whole burst was written"
    );
    assert_eq!(
        seqs,
        (1..=written).collect::<Vec<_>>(),
        "every written event, once, in order"
    );
    let ns: HashSet<u64> = events.iter().map(|e| e.1).collect();
    assert_eq!(ns.len(), events.len(), "an event was stored twice");
}

/// Cuts the link between a minion and its master for 10 s during a burst;
/// `cut` does the cutting (stall or reset).
fn cut_during_burst(cut: impl Fn(&Proxy), name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let events = Proxy::start(master.event_endpoint.trim_start_matches("tcp://"));
    let commands = Proxy::start(master.command_endpoint.trim_start_matches("tcp://"));
    let mut minion = Minion::with_endpoints(
        &tmp.path().join(name),
        name,
        &events.endpoint(),
        &commands.endpoint(),
        "",
    );
    minion.start();
    master.wait_connected(name);

    let sender = minion.send_in_background(BURST, 50_000);
    wait_until(
        Duration::from_secs(60),
        "5,000 events stored before the cut",
        || (stored(&master) >= 5_000).then_some(()),
    );
    cut(&events);
    cut(&commands);
    let cut_at = Instant::now();
    // The master notices the minion is gone.
    wait_until(
        Duration::from_secs(5),
        "minion/<id>/down during the cut",
        || {
            (!master
                .events(&["--tag", &format!("minion/{name}/down")])
                .is_empty())
            .then_some(())
        },
    );
    // The burst goes on into the outbox while the link is down.
    let (_, last) = sent_range(&sender.wait_with_output().unwrap());
    if let Some(rest) = Duration::from_secs(10).checked_sub(cut_at.elapsed()) {
        std::thread::sleep(rest); // the scenario: a 10 s outage
    }
    events.heal();
    commands.heal();
    wait_until(
        Duration::from_secs(60),
        "every event acknowledged after the link came back",
        || (acked(&master, name) >= last).then_some(()),
    );
    assert_exactly_once(&burst(&master, name), 50_000);
    let ups = master.events(&["--tag", &format!("minion/{name}/up")]);
    assert!(ups.len() >= 2, "the minion came back up: {ups:?}");
}

#[test]
fn a_partitioned_link_loses_nothing() {
    cut_during_burst(Proxy::stall, "m3");
}

#[test]
fn a_reset_link_loses_nothing() {
    cut_during_burst(Proxy::reset, "m4");
}

#[test]
fn an_overflowing_outbox_says_exactly_how_many_events_it_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    // No master yet: the outbox (64 KiB) is all there is.
    let mut master = Master::new(&tmp.path().join("master"), "");
    let mut minion = Minion::new(
        &tmp.path().join("m5"),
        "m5",
        &master,
        "[outbox]\nmax_bytes = 65536\n",
    );
    minion.start();
    let (first, last) = sent_range(&minion.send(BURST, 5_000));
    assert_eq!((first, last), (1, 5_000));

    master.start();
    master.wait_connected("m5");
    let report = wait_until(
        Duration::from_secs(20),
        "the minion's outbox/dropped event",
        || master.events(&["--tag", "minion/m5/outbox/dropped"]).pop(),
    );
    let dropped = report["data"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0 && dropped < 5_000, "dropped {dropped}");
    wait_until(Duration::from_secs(20), "the rest acknowledged", || {
        (acked(&master, "m5") > last).then_some(())
    });
    let kept = burst(&master, "m5");
    assert_eq!(
        kept.len() as u64 + dropped,
        5_000,
        "stored + dropped must be every event sent"
    );
    // The master saw the same gap from its side.
    let lost: u64 = master
        .events(&["--tag", "minion/m5/lost"])
        .iter()
        .map(|e: &Value| e["data"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(lost, dropped);
}

#[test]
fn presence_follows_the_minion() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m6"), "m6", &master, "");
    minion.start();
    master.wait_connected("m6");
    minion.daemon().kill9();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "minion/m6/down after the kill",
        || (!master.events(&["--tag", "minion/m6/down"]).is_empty()).then_some(()),
    );
    // presence_timeout_ms is 1000 in the test config; the check runs every
    // heartbeat/2.
    assert!(
        killed.elapsed() < Duration::from_millis(2500),
        "down took {:?}",
        killed.elapsed()
    );
    let shown = master.tend_json(&["minions"]);
    assert_eq!(shown[0]["connected"], false);
    minion.start();
    master.wait_connected("m6");
    assert_eq!(master.events(&["--tag", "minion/m6/up"]).len(), 2);

    // The master restarting: the minion says hello again by itself.
    master.daemon().kill9();
    master.start();
    master.wait_connected("m6");
}
