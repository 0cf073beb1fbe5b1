//! Review 8 of issue 17 (standing orders): who acts on an event the
//! minion marked while cut off, after the review 7 fixes (the master
//! judges a marked event by the orders version it names; the minion keeps
//! a mark of how far it finished). Real master and minion processes.

use std::time::Duration;

use serde_json::Value;
use tend_e2e::autonomy::{
    ENFORCING, Two, file_beacon, is_managed, managed_state, restored_within, rule, wait_for_orders,
    wait_log,
};
use tend_e2e::{Master, Minion, wait_until};

fn jobs(master: &Master) -> Vec<Value> {
    master.tend_json(&["jobs", "--limit", "200"])
}

/// web1 watching two managed files, with the rules in `rules` (file name,
/// text) and `standing` standing rules in its orders.
fn two_files(rules: &[(&str, String)], standing: usize) -> Two {
    tend_e2e::autonomy::two_files(rules, standing, 300)
}

/// The master leaves alone, for an event marked under orders version V,
/// the rules *named* in V. A rule changed while the minion was cut off
/// (here its trigger: the operator fixes which file it watches) keeps its
/// name, so the master skips the new rule for an edit the minion's old
/// rule never matched: nobody restores the file.
#[test]
fn review8_a_rule_redefined_under_its_name_while_cut_off_acts_on_the_edits_the_minion_marked() {
    let mut t = two_files(&[("restore.toml", rule("restore", "motd", "motd", ""))], 1);
    t.master.daemon().stop();
    wait_log(&mut t.minion, ENFORCING, 1, "the minion to start enforcing");
    // While cut off: `issue` is edited; the minion's `restore` watches
    // motd, so it marks the event and does nothing.
    std::fs::write(&t.issue, "hand edit while cut off\n").unwrap();
    // Give the beacon time to see it and the outbox to keep it.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!is_managed(&t.issue));
    // The operator changes `restore` to watch issue (the same name), then
    // starts the master: the marked event reaches it with that rule.
    t.master
        .rule_file("restore.toml", &rule("restore", "issue", "issue", ""));
    t.master.start();
    t.master.wait_connected("web1");
    wait_for_orders(&t.master, 1);
    assert!(
        restored_within(&t.issue, Duration::from_secs(15)),
        "the edit made while cut off was acted on by neither the minion (its `restore` \
         watched motd) nor the master (it skipped `restore` by name for the marked event); \
         jobs: {:#?}",
        jobs(&t.master)
    );
}

/// Cut off, the minion holds an edit in a local debounce. A master comes
/// back before the debounce ends with orders of a new version (a rule was
/// added meanwhile): the enforcer starts a fresh reactor for them and the
/// held edit is dropped, while the master skips the minion's rule for the
/// event it marked. Nobody restores the file.
#[test]
fn review8_an_edit_held_in_a_local_debounce_is_restored_when_new_orders_arrive() {
    held_across_a_reconnect(true);
}

/// The baseline: the master comes back with the same orders during the
/// debounce; the minion finishes its debounce and restores the edit.
#[test]
fn review8_an_edit_held_in_a_local_debounce_is_restored_when_the_same_orders_arrive() {
    held_across_a_reconnect(false);
}

fn held_across_a_reconnect(new_rule: bool) {
    let mut t = two_files(
        &[(
            "motd.toml",
            rule("restore-motd", "motd", "motd", "debounce = \"12s\""),
        )],
        1,
    );
    t.master.daemon().stop();
    wait_log(&mut t.minion, ENFORCING, 1, "the minion to start enforcing");
    std::fs::write(&t.motd, "hand edit while cut off\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    if new_rule {
        t.master
            .rule_file("issue.toml", &rule("restore-issue", "issue", "issue", ""));
    }
    t.master.start();
    t.master.wait_connected("web1");
    wait_for_orders(&t.master, if new_rule { 2 } else { 1 });
    assert!(
        !is_managed(&t.motd),
        "inconclusive: the debounce ended before the orders came"
    );
    assert!(
        restored_within(&t.motd, Duration::from_secs(25)),
        "an edit held in the minion's debounce was acted on by nobody once the master \
         was back (new orders: {new_rule}); jobs: {:#?}",
        jobs(&t.master)
    );
}

/// Cut off, one edit fires two of the minion's rules: one at once (a
/// command that is not idempotent: it appends a line) and one with a long
/// debounce. The debounce keeps the mark below the edit, so after a
/// restart the enforcer evaluates the edit again and the first rule's
/// local job, done and recorded before the restart, runs a second time.
#[test]
fn review8_a_local_job_done_before_a_restart_is_not_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let (motd, counter) = (dir.join("motd"), dir.join("counter"));
    let mut master = Master::new(&tmp.path().join("master"), "");
    managed_state(&master, "motd", &motd);
    master.state_file(
        "count.toml",
        &format!(
            "[count]\ntype = \"cmd.run\"\ncommand = \"echo run >> {}\"\n",
            counter.display()
        ),
    );
    master.rule_file("count.toml", &rule("count-edits", "motd", "count", ""));
    master.rule_file(
        "motd.toml",
        &rule("restore-motd", "motd", "motd", "debounce = \"120s\""),
    );
    master.start();
    let mut minion = Minion::new(
        &tmp.path().join("minion"),
        "web1",
        &master,
        &format!("autonomy_after_ms = 300\n{}", file_beacon("motd", &motd)),
    );
    minion.start();
    master.wait_connected("web1");
    wait_for_orders(&master, 2);
    master.daemon().stop();
    wait_log(&mut minion, ENFORCING, 1, "the minion to start enforcing");
    std::fs::write(&motd, "hand edit while cut off\n").unwrap();
    let runs = || {
        std::fs::read_to_string(&counter)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(20),
        "the local job counting the edit",
        || (runs() >= 1).then_some(()),
    );
    // The job is done and recorded; the debounce still holds the edit.
    minion.daemon().stop();
    minion.start();
    wait_log(&mut minion, ENFORCING, 2, "the restarted minion to enforce");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end && runs() < 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        runs(),
        1,
        "the local job of `count-edits` for the one edit ran again after the restart:\n{}",
        minion.daemon().log_text()
    );
}
