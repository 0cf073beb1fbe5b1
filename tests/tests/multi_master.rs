//! A minion with several masters (issue 16, the minion's side): a session
//! with each, every event published to every master it is connected to,
//! an acknowledgement from any of them retiring events from the outbox, a
//! master that is down holding back no other, and a job sent twice run
//! once.
//!
//! Each master here has its own embedded store (sharing one PostgreSQL
//! database, and storing each event once across masters, is the store's
//! part): so the masters' acknowledgements differ, and any one retires.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tend_e2e::{Master, Minion, Proxy, free_port, metric, pg, run_daemon, wait_until};

/// The seqs of `minion`'s events tagged `event/<tag>` stored on `master`,
/// each checked to be stored once.
fn stored(master: &Master, minion: &str, tag: &str) -> HashSet<u64> {
    let tag = format!("minion/{minion}/event/{tag}");
    let events = master.events(&["--minion", minion, "--tag", &tag]);
    let seqs: HashSet<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), events.len(), "an event stored twice: {tag}");
    seqs
}

fn send(minion: &Minion, tag: &str, count: u64) {
    let out = minion.send(tag, count);
    assert!(
        out.status.success(),
        "tend-minion send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `master` has stored `count` events tagged `tag`.
fn wait_stored(master: &Master, minion: &str, tag: &str, count: usize, what: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{count} `{tag}` events stored on {what}"),
        || (stored(master, minion, tag).len() == count).then_some(()),
    );
}

/// Waits until events flow to `master` again after its session came back:
/// a probe event at a time until one is stored there. (Until the master's
/// event socket has subscribed on the new connection, what is published to
/// it is dropped, and the other master may acknowledge it first: the
/// outbox then no longer holds it for this one. With one shared database
/// that costs nothing; with a store each, as here, this master lacks it.)
fn wait_flowing(minion: &Minion, master: &Master, what: &str) {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let tag = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    wait_until(
        Duration::from_secs(20),
        &format!("events to flow to {what} again"),
        || {
            send(minion, &tag, 1);
            (!stored(master, &minion.id, &tag).is_empty()).then_some(())
        },
    );
}

/// Events in the minion's outbox no master acknowledged yet.
fn outbox(metrics: &str) -> Option<f64> {
    metric(metrics, "tend_minion_outbox_events")
}

fn two_masters(tmp: &std::path::Path) -> (Master, Master) {
    two_masters_with(tmp, "")
}

/// Masters a and b with `extra` in their master.toml, started.
fn two_masters_with(tmp: &std::path::Path, extra: &str) -> (Master, Master) {
    let mut a = Master::new(&tmp.join("a"), extra);
    let mut b = Master::new(&tmp.join("b"), extra);
    a.start();
    b.start();
    (a, b)
}

/// Minion web1 with a session to both masters (its metrics on their own
/// port, also returned), once it says so.
fn web1_with_both(tmp: &std::path::Path, a: &Master, b: &Master) -> (Minion, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut minion = Minion::with_masters(
        &tmp.join("web1"),
        "web1",
        &[a, b],
        &format!("metrics_listen = {metrics:?}"),
    );
    minion.start();
    a.wait_connected("web1");
    b.wait_connected("web1");
    wait_until(
        Duration::from_secs(10),
        "sessions with both masters",
        || (metric(&metrics, "tend_minion_masters_connected") == Some(2.0)).then_some(()),
    );
    (minion, metrics)
}

#[test]
fn a_minion_with_two_masters_publishes_every_event_to_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_masters(tmp.path());
    let (minion, metrics) = web1_with_both(tmp.path(), &a, &b);

    // (Events published before a master's event socket subscribed are
    // dropped for it: see wait_flowing.)
    wait_flowing(&minion, &a, "master a");
    wait_flowing(&minion, &b, "master b");
    send(&minion, "both", 500);
    wait_stored(&a, "web1", "both", 500, "master a");
    wait_stored(&b, "web1", "both", 500, "master b");
    assert_eq!(stored(&a, "web1", "both"), stored(&b, "web1", "both"));
    // `tend events` on each shows them, as an operator reads it.
    for m in [&a, &b] {
        let shown = m.expect(&["events", "--minion", "web1", "--limit", "5"], 0);
        assert!(shown.contains("minion/web1/event/both"), "{shown}");
    }
    wait_until(Duration::from_secs(10), "an empty outbox", || {
        (outbox(&metrics) == Some(0.0)).then_some(())
    });
    // Each master keeps its own pin, trusted on first use.
    let pins = std::fs::read_dir(tmp.path().join("web1/data/masters"))
        .expect("the masters' pins")
        .count();
    assert_eq!(pins, 2, "a recorded key per master");
}

#[test]
fn a_master_killed_holds_back_nothing_and_gets_what_it_missed_when_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, mut b) = two_masters(tmp.path());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut minion = Minion::with_masters(
        &tmp.path().join("web1"),
        "web1",
        &[&a, &b],
        &format!("metrics_listen = {metrics:?}"),
    );
    minion.start();
    a.wait_connected("web1");
    b.wait_connected("web1");
    wait_flowing(&minion, &a, "master a");
    wait_flowing(&minion, &b, "master b");
    send(&minion, "before", 100);
    wait_stored(&a, "web1", "before", 100, "master a");
    wait_stored(&b, "web1", "before", 100, "master b");

    // A dies: B acknowledges everything, the outbox does not grow.
    a.daemon().kill9();
    for _ in 0..4 {
        send(&minion, "a-down", 500);
    }
    wait_stored(&b, "web1", "a-down", 2000, "master b, with a dead");
    wait_until(
        Duration::from_secs(10),
        "an empty outbox with one of two masters dead",
        || (outbox(&metrics) == Some(0.0)).then_some(()),
    );
    wait_until(Duration::from_secs(10), "the session with a to end", || {
        (metric(&metrics, "tend_minion_masters_connected") == Some(1.0)).then_some(())
    });

    // B dies too: now the outbox keeps what no master has.
    b.daemon().kill9();
    send(&minion, "both-down", 300);
    wait_until(Duration::from_secs(10), "300 events held", || {
        (outbox(&metrics) == Some(300.0)).then_some(())
    });

    // A comes back: it gets what it missed that no master has, from the
    // outbox, and its acknowledgement empties it.
    a.start();
    wait_stored(&a, "web1", "both-down", 300, "master a, restarted");
    wait_until(Duration::from_secs(10), "the outbox emptied by a", || {
        (outbox(&metrics) == Some(0.0)).then_some(())
    });
    // B comes back, and both get what follows.
    b.start();
    b.wait_connected("web1");
    wait_until(
        Duration::from_secs(10),
        "sessions with both masters",
        || (metric(&metrics, "tend_minion_masters_connected") == Some(2.0)).then_some(()),
    );
    wait_flowing(&minion, &b, "master b");
    send(&minion, "after", 50);
    wait_stored(&a, "web1", "after", 50, "master a");
    wait_stored(&b, "web1", "after", 50, "master b");
    assert!(minion.daemon().is_running());
    // A master behind another is no store restored from a backup.
    let log = minion.daemon().log_text();
    assert!(!log.contains("was its store restored"), "{log}");
}

/// A master cut off (its connections stalled, not closed) holds back
/// nothing either, and gets what follows once the link heals.
#[test]
fn a_master_cut_off_holds_back_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b) = two_masters(tmp.path());
    let events = Proxy::start(a.event_endpoint.trim_start_matches("tcp://"));
    let commands = Proxy::start(a.command_endpoint.trim_start_matches("tcp://"));
    let direct = (a.event_endpoint.clone(), a.command_endpoint.clone());
    // The minion reaches a through the proxies.
    a.event_endpoint = events.endpoint();
    a.command_endpoint = commands.endpoint();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut minion = Minion::with_masters(
        &tmp.path().join("web1"),
        "web1",
        &[&a, &b],
        &format!("metrics_listen = {metrics:?}"),
    );
    (a.event_endpoint, a.command_endpoint) = direct;
    minion.start();
    a.wait_connected("web1");
    b.wait_connected("web1");
    wait_flowing(&minion, &a, "master a");
    wait_flowing(&minion, &b, "master b");
    send(&minion, "before", 100);
    wait_stored(&a, "web1", "before", 100, "master a");

    events.stall();
    commands.stall();
    send(&minion, "cut", 2000);
    wait_stored(&b, "web1", "cut", 2000, "master b, with a cut off");
    wait_until(
        Duration::from_secs(10),
        "an empty outbox with a cut off",
        || (outbox(&metrics) == Some(0.0)).then_some(()),
    );
    wait_until(Duration::from_secs(10), "the session with a to end", || {
        (metric(&metrics, "tend_minion_masters_connected") == Some(1.0)).then_some(())
    });
    send(&minion, "still-cut", 500);
    wait_stored(&b, "web1", "still-cut", 500, "master b, a's session over");
    events.heal();
    commands.heal();
    wait_until(Duration::from_secs(20), "a session with a again", || {
        (metric(&metrics, "tend_minion_masters_connected") == Some(2.0)).then_some(())
    });
    wait_flowing(&minion, &a, "master a");
    send(&minion, "healed", 50);
    wait_stored(&a, "web1", "healed", 50, "master a, healed");
    wait_stored(&b, "web1", "healed", 50, "master b");
    assert!(minion.daemon().is_running());
}

/// The shape issue 16 is for: two masters on one PostgreSQL database. A
/// master killed -9 holds back nothing, and restarted it shows every event
/// (the other master stored them), each stored once though both masters
/// got most of them.
#[test]
fn two_masters_on_one_database_store_each_event_once_and_survive_a_kill() {
    let db = pg::database();
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("[store]\npostgres = {:?}\n", db.url);
    let (mut a, b) = two_masters_with(tmp.path(), &store);
    let (mut minion, metrics) = web1_with_both(tmp.path(), &a, &b);
    send(&minion, "before", 500);
    wait_stored(&a, "web1", "before", 500, "the database, read through a");
    wait_stored(&b, "web1", "before", 500, "the database, read through b");

    a.daemon().kill9();
    send(&minion, "a-down", 1000);
    wait_stored(&b, "web1", "a-down", 1000, "the database, through b");
    wait_until(
        Duration::from_secs(10),
        "an empty outbox with a dead",
        || (outbox(&metrics) == Some(0.0)).then_some(()),
    );
    a.start();
    a.wait_connected("web1");
    send(&minion, "after", 500);
    for (m, name) in [(&a, "a"), (&b, "b")] {
        for (tag, n) in [("before", 500), ("a-down", 1000), ("after", 500)] {
            wait_stored(m, "web1", tag, n, &format!("the database, through {name}"));
        }
    }
    assert!(minion.daemon().is_running());
    // A master behind another is no store restored from a backup.
    let log = minion.daemon().log_text();
    assert!(!log.contains("was its store restored"), "{log}");
}

#[test]
fn master_and_masters_together_are_refused_naming_both_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("minion.toml");
    for (lines, want) in [
        (
            "master = \"m1.example\"\nmasters = [\"m2.example\"]\n",
            "`masters` and `master` are both set",
        ),
        (
            "event_endpoint = \"tcp://127.0.0.1:4510\"\nmasters = [\"m2.example\"]\n",
            "`masters` and `event_endpoint` are both set",
        ),
        ("masters = []\n", "key `masters`: lists no master"),
        (
            "masters = [\"m1\", { host = \"m2\", fingerprnt = \"x\" }]\n",
            "key `masters[1]`: unknown key `fingerprnt`",
        ),
        (
            "masters = [\"m1:4610\", \"m1:4610\"]\n",
            "key `masters[1]`: names the same master as masters[0]",
        ),
        (
            "masters = [\"m1:99999\"]\n",
            "key `masters[0]`: \"m1:99999\": port \"99999\"",
        ),
    ] {
        std::fs::write(
            &config,
            format!("id = \"web1\"\ndata_dir = \"data\"\n{lines}"),
        )
        .unwrap();
        let (code, err) = run_daemon("tend-minion", &config, &["--check-config"]);
        assert_eq!(code, 2, "{lines}: {err}");
        assert!(
            err.contains(want) && err.contains(&config.display().to_string()),
            "{lines}: expected {want:?} and the file in: {err}"
        );
    }
    // Either alone is fine.
    for lines in [
        "master = \"m1.example\"\n",
        "masters = [\"m1.example\", \"m2.example:4610\", { event_endpoint = \"tcp://[::1]:4510\", command_endpoint = \"tcp://[::1]:4511\" }]\n",
    ] {
        std::fs::write(
            &config,
            format!("id = \"web1\"\ndata_dir = \"data\"\n{lines}"),
        )
        .unwrap();
        let (code, err) = run_daemon("tend-minion", &config, &["--check-config"]);
        assert_eq!(code, 0, "{lines}: {err}");
    }
}

#[test]
fn the_same_job_sent_by_two_masters_is_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_masters(tmp.path());
    let ran = tmp.path().join("ran");
    // Appends a line each time it runs: the line count is the run count.
    let state = format!(
        "[count]\ntype = \"cmd.run\"\ncommand = \"echo ran >> {}\"\n",
        ran.display()
    );
    a.state_file("count.toml", &state);
    b.state_file("count.toml", &state);
    let mut minion = Minion::with_masters(&tmp.path().join("web1"), "web1", &[&a, &b], "");
    minion.start();
    a.wait_connected("web1");
    b.wait_connected("web1");

    // Both stores are new, so both number this job 1: the same job id
    // with the same request, as when a master re-sends the job of one that
    // died.
    let first = &a.expect_json(&["apply", "web1", "count"], 0)[0];
    let again = &b.expect_json(&["apply", "web1", "count"], 0)[0];
    assert_eq!(first["id"], again["id"], "the same job id: {first} {again}");
    assert_eq!(first["status"], "changed", "{first}");
    // The repeat is answered (through master b's own session) with the
    // first run's result, and the state ran once.
    assert_eq!(again["status"], "changed", "{again}");
    assert_eq!(
        again["minions"][0]["states"], first["minions"][0]["states"],
        "the recorded result"
    );
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(lines.lines().count(), 1, "the state ran once: {lines:?}");
    assert!(
        minion
            .daemon()
            .log_text()
            .contains("answering with its first run's result"),
        "the minion says why"
    );

    // Another job (a new id) runs.
    let next = &a.expect_json(&["apply", "web1", "count"], 0)[0];
    assert_ne!(next["id"], first["id"]);
    wait_until(Duration::from_secs(5), "the second job's run", || {
        (std::fs::read_to_string(&ran).unwrap().lines().count() == 2).then_some(())
    });
}
