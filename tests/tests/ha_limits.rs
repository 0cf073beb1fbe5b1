//! Issue 16's limits, lifted: `store migrate` carries the key decisions,
//! a master restarted within its lease finishes its own rule applies, and
//! a minion heard only by masters that died is stored `down` once.

use std::time::Duration;

use tend_e2e::pg;
use tend_e2e::pg::stored_jobs;
use tend_e2e::{Master, Minion, wait_until};

/// The keys a master lists, one JSON object each.
fn keys(m: &Master) -> Vec<serde_json::Value> {
    m.tend_json(&["keys", "list"])
        .pop()
        .and_then(|l| l["keys"].as_array().cloned())
        .unwrap_or_default()
}

/// `store migrate` copies the embedded master's key decisions: a master
/// that never saw the minion, with an empty key dir, on the migrated
/// database accepts the minion's key at its first hello (a pre-approval
/// of its fingerprint) and knows the label the operator gave it. Before
/// the fix the keys stayed behind: the new master held the key pending.
#[test]
fn store_migrate_carries_accepted_keys_and_labels_to_every_master_on_the_database() {
    let db = pg::database();
    let tmp = tempfile::tempdir().unwrap();
    let mut old = Master::new(&tmp.path().join("old"), "auto_accept = false\n");
    old.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &old, "");
    minion.start();
    let pending = wait_until(Duration::from_secs(20), "m1's key pending", || {
        keys(&old)
            .into_iter()
            .find(|k| k["name"] == "m1" && k["state"] == "pending")
    });
    let fp = pending["fingerprint"].as_str().unwrap().to_string();
    old.expect(&["keys", "accept", "m1"], 0);
    old.wait_connected("m1");
    old.expect(&["keys", "label", "m1", "role=web"], 0);
    minion.daemon().stop();
    old.daemon().stop();

    let out = std::process::Command::new(tend_e2e::bin("tend-master"))
        .arg("--config")
        .arg(old.config())
        .args(["store", "migrate", "--to", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", tend_e2e::stderr(&out));
    let said = tend_e2e::stdout(&out);
    assert!(said.contains("key decisions"), "{said}");

    // Another master, its key dir empty, on the database.
    let mut fresh = Master::new(
        &tmp.path().join("fresh"),
        &format!("auto_accept = false\n{}", db.store_section()),
    );
    fresh.start();
    // (The minion pinned the old master's key; the new one has its own.)
    std::fs::remove_file(tmp.path().join("m1/data/master.fingerprint")).unwrap();
    let mut moved = Minion::new(&tmp.path().join("m1"), "m1", &fresh, "");
    moved.start();
    fresh.wait_connected("m1");
    let key = wait_until(
        Duration::from_secs(20),
        "m1's label on the new master",
        || {
            keys(&fresh)
                .into_iter()
                .find(|k| k["name"] == "m1" && k["labels"]["role"] == "web")
        },
    );
    assert_eq!(key["state"], "accepted", "{key}");
    assert_eq!(key["fingerprint"], fp.as_str(), "{key}");
}

/// A master killed -9 in the middle of a rule's apply and started again at
/// once (within its 5 s lease, so no other master takes the job over)
/// finishes that apply itself: sent again under its own id when the
/// minion's session is back, answered from the minion's job memory. The
/// job ends changed, the state ran once. Before the fix the restarted
/// master marked it interrupted.
#[test]
fn a_master_restarted_within_its_lease_finishes_its_own_rule_apply_and_it_runs_once() {
    let db = pg::database();
    let tmp = tempfile::tempdir().unwrap();
    let ran = tmp.path().join("ran.log");
    let setup = |name: &str| {
        let m = Master::new(&tmp.path().join(name), &db.store_section());
        m.state_file(
            "slow.toml",
            &format!(
                "[slow]\ntype = \"cmd.run\"\ncommand = [\"sh\", \"-c\", \"echo ran >> {}; sleep 3\"]\n",
                ran.display()
            ),
        );
        m.rule_file(
            "go.toml",
            "[[rule]]\nname = \"go\"\non = \"minion/*/event/go\"\n[[rule.action]]\napply = [\"slow\"]\n",
        );
        m
    };
    let mut a = setup("a");
    a.start();
    wait_until(Duration::from_secs(10), "a to run the reactor", || {
        (a.counters()["reactor_leader"].as_u64() == Some(1)).then_some(())
    });
    let mut b = setup("b");
    b.start();
    // Two masters, so the minion keeps its job memory.
    let mut minion = Minion::with_masters(&tmp.path().join("m1"), "m1", &[&a, &b], "");
    minion.start();
    a.wait_connected("m1");
    b.wait_connected("m1");
    assert!(minion.send("go", 1).status.success());
    let mut c = db.client();
    let job_of = |c: &mut postgres::Client| stored_jobs(c).into_iter().find(|j| j.rule == "go");
    wait_until(
        Duration::from_secs(10),
        "the apply running on the minion",
        || (std::fs::read_to_string(&ran).ok()?.lines().count() == 1).then_some(()),
    );
    a.daemon().kill9();
    a.start();
    let job = wait_until(Duration::from_secs(30), "the job finished", || {
        job_of(&mut c).filter(|j| j.finished_us > 0)
    });
    assert!(
        matches!(job.status.as_str(), "ok" | "changed"),
        "finished, not interrupted: {job:?}"
    );
    assert!(
        a.daemon().log_text().contains("is finished here"),
        "the restarted master finished it"
    );
    assert!(
        !b.daemon().log_text().contains("is finished here"),
        "not taken over by the other master"
    );
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap().lines().count(),
        1,
        "the state ran once on the minion"
    );
}

/// A minion with a session to master a only (its config lists a alone):
/// a killed -9, master b finds a's lease over and stores `minion/m1/down`
/// once, within the lease and a little. Before the fix no master stored
/// it (the next to hear the minion stored another `up`).
#[test]
fn a_minion_heard_only_by_a_master_that_died_is_stored_down_once_by_another() {
    let db = pg::database();
    let tmp = tempfile::tempdir().unwrap();
    let mut a = db.master(&tmp.path().join("a"));
    let b = db.master(&tmp.path().join("b"));
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
