//! Review 7 of issue 17 (standing orders): who acts on an event the
//! minion marked while cut off. Real master and minion processes.

use std::time::Duration;

use serde_json::Value;
use tend_e2e::autonomy::{
    ENFORCING, Two, file_beacon, is_managed, managed_state, restore_rule, restored_within,
    wait_for_orders, wait_log,
};
use tend_e2e::{Master, Minion};

fn jobs_of_rule(master: &Master, rule: &str) -> Vec<Value> {
    master
        .tend_json(&["jobs", "--limit", "200"])
        .into_iter()
        .filter(|j| j["rule"] == rule)
        .collect()
}

/// web1 watching two managed files; only `motd` has a restore rule (a
/// standing order) at first.
fn two_files(motd_extra: &str) -> Two {
    two_files_after(motd_extra, 300)
}

fn two_files_after(motd_extra: &str, after_ms: u64) -> Two {
    tend_e2e::autonomy::two_files(
        &[("motd.toml", restore_rule("motd", motd_extra))],
        1,
        after_ms,
    )
}

/// The master leaves alone, for an event the minion marked, the rules in
/// the orders it compiles *now*, not those of the version the event names
/// (`local_orders`). A restore rule added while the master was down (an
/// operator's fix during the outage) was never among the minion's orders,
/// yet the master skips it for the edit the minion marked: nobody restores
/// the file.
#[test]
fn a_rule_added_while_cut_off_acts_on_the_edits_the_minion_marked() {
    let mut t = two_files("");
    t.master.daemon().stop();
    wait_log(&mut t.minion, ENFORCING, 1, "the minion to start enforcing");
    // While cut off: `issue` is edited; the minion's orders have no rule
    // for it, so it marks the event and does nothing.
    std::fs::write(&t.issue, "hand edit while cut off\n").unwrap();
    // Give the beacon time to see it and the outbox to keep it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!is_managed(&t.issue));
    // The operator adds a restore rule for `issue` while the master is
    // down, then starts it: the event reaches it with the rule in force.
    t.master.rule_file("issue.toml", &restore_rule("issue", ""));
    t.master.start();
    t.master.wait_connected("web1");
    wait_for_orders(&t.master, 2);
    assert!(
        restored_within(&t.issue, Duration::from_secs(15)),
        "the edit made while cut off was acted on by neither the minion (no such order) \
         nor the master (it skipped restore-issue for the marked event); jobs: {:#?}",
        jobs_of_rule(&t.master, "restore-issue")
    );
}

/// An event the minion marked and held in a debounce window is forgotten
/// when the minion restarts before the window closes: its reactor's
/// windows live in memory only, and the master skips the rule for the
/// marked event. Nobody restores the file.
#[test]
fn an_edit_held_in_a_local_debounce_is_restored_across_a_minion_restart() {
    let mut t = two_files("debounce = \"3s\"");
    t.master.daemon().stop();
    wait_log(&mut t.minion, ENFORCING, 1, "the minion to start enforcing");
    std::fs::write(&t.motd, "hand edit while cut off\n").unwrap();
    // The beacon sees it (well within the debounce), then the minion
    // restarts before the debounce ends.
    std::thread::sleep(Duration::from_millis(1000));
    t.minion.daemon().stop();
    t.minion.start();
    wait_log(
        &mut t.minion,
        ENFORCING,
        2,
        "the restarted minion to enforce again",
    );
    let mut restored = restored_within(&t.motd, Duration::from_secs(8));
    if !restored {
        // Nor does the master, once back.
        t.master.start();
        t.master.wait_connected("web1");
        restored = restored_within(&t.motd, Duration::from_secs(10));
    }
    assert!(
        restored,
        "an edit the minion marked and held in its debounce was never restored"
    );
}

/// The baseline of the restart test: with no restart, the debounced
/// local restore happens.
#[test]
fn a_local_debounce_restores_an_edit_while_cut_off() {
    let mut t = two_files("debounce = \"3s\"");
    t.master.daemon().stop();
    wait_log(&mut t.minion, ENFORCING, 1, "the minion to start enforcing");
    std::fs::write(&t.motd, "hand edit while cut off\n").unwrap();
    assert!(restored_within(&t.motd, Duration::from_secs(10)));
}

/// The baseline of the rule-added test: with autonomy off, the edit made
/// while the master was down reaches it unmarked and the rule added in the
/// meantime restores it.
#[test]
fn without_autonomy_a_rule_added_while_the_master_was_down_acts_on_the_backlog() {
    let mut t = two_files_after("", 0);
    t.master.daemon().stop();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&t.issue, "hand edit\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    t.master.rule_file("issue.toml", &restore_rule("issue", ""));
    t.master.start();
    t.master.wait_connected("web1");
    assert!(
        restored_within(&t.issue, Duration::from_secs(15)),
        "{:#?}",
        t.master.events(&["--minion", "web1", "--limit", "50"])
    );
}

/// A minion with two masters: A accepted its key and signed its orders;
/// B never accepted it (its key is pending there). B's sealed `pending`
/// refusal speaks for B only: the minion keeps the orders A signed. (It
/// dropped them, again at every retry, and A, believing they were taken,
/// did not send them again for max_autonomy/4: cut off, the minion
/// enforced nothing.)
#[test]
fn a_second_masters_pending_refusal_keeps_the_orders_the_first_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let motd = dir.join("motd");
    let mut a = Master::new(&tmp.path().join("a"), "");
    managed_state(&a, "motd", &motd);
    a.rule_file("motd.toml", &restore_rule("motd", ""));
    a.start();
    let mut b = Master::new(&tmp.path().join("b"), "auto_accept = false");
    b.start();
    let mut minion = Minion::with_masters(
        &tmp.path().join("web1"),
        "web1",
        &[&a, &b],
        &format!("autonomy_after_ms = 300\n{}", file_beacon("motd", &motd)),
    );
    minion.start();
    a.wait_connected("web1");
    wait_for_orders(&a, 1);
    let out = a.tend(&["apply", "web1", "motd"]);
    assert!(out.status.success(), "apply: {out:?}");
    // B refuses the minion's key (pending) again after the orders came.
    // (The link says so at each sealed refusal, every few seconds.)
    const REFUSED: &str = "is pending: an operator must accept it";
    let refusals = minion.daemon().log_text().matches(REFUSED).count();
    let end = std::time::Instant::now() + Duration::from_secs(45);
    while std::time::Instant::now() < end
        && minion.daemon().log_text().matches(REFUSED).count() <= refusals
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = minion.daemon().log_text();
    assert!(
        log.matches(REFUSED).count() > refusals,
        "B did not refuse the minion again (pending):\n{log}"
    );
    // Cut off from A (B never had a session): the minion should enforce
    // A's orders.
    a.daemon().stop();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end && !minion.daemon().log_text().contains(ENFORCING) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = minion.daemon().log_text();
    assert!(
        log.contains(ENFORCING),
        "cut off from A, the minion does not enforce A's orders (dropped on B's refusal: {}):\n{log}",
        log.contains("its standing orders are dropped")
    );
    std::fs::write(&motd, "hand edit while cut off\n").unwrap();
    assert!(restored_within(&motd, Duration::from_secs(10)));
}
