//! Issue 17: a minion cut off from every master keeps its standing orders
//! itself. Real master and minion processes; the cut is the master
//! stopped, or (check 1) the minion's network namespace cut off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, wait_until};

const MANAGED: &str = "Welcome to web1.\nThis file is managed by tend.\n";

struct Setup {
    _tmp: tempfile::TempDir,
    master: Master,
    minion: Minion,
    file: PathBuf,
}

/// A master with a restore rule for a file on minion web1, and web1
/// watching it; web1 has taken its standing orders, and the file is
/// managed.
fn setup(rule_extra: &str, minion_extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("motd");
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file("files/motd", MANAGED);
    master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/motd\"\nmode = \"0644\"\n",
            file.display()
        ),
    );
    master.rule_file(
        "restore.toml",
        &format!(
            "[[rule]]\nname = \"restore-motd\"\non = \"minion/*/beacon/motd/*\"\n{rule_extra}\n[[rule.action]]\napply = [\"motd\"]\n"
        ),
    );
    master.start();
    let mut minion = Minion::new(
        &tmp.path().join("minion"),
        "web1",
        &master,
        &format!(
            "autonomy_after_ms = 300\n{minion_extra}\n[[beacon]]\nname = \"motd\"\ntype = \"file\"\npaths = [{:?}]\n",
            file.display()
        ),
    );
    minion.start();
    master.wait_connected("web1");
    let s = Setup {
        _tmp: tmp,
        master,
        minion,
        file,
    };
    wait_for_orders(&s, 1);
    let out = s.master.tend(&["apply", "web1", "motd"]);
    assert!(out.status.success(), "first apply: {out:?}");
    assert!(is_managed(&s.file));
    s
}

fn is_managed(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|c| c == MANAGED)
}

/// The minion shows (to the master) that it took orders with `rules`
/// standing rules.
fn wait_for_orders(s: &Setup, rules: usize) -> Value {
    wait_until(
        Duration::from_secs(20),
        "the minion to take its standing orders",
        || {
            let v = s.master.tend_json(&["minion", "show", "web1"]);
            let m = v.first()?.clone();
            let taken = m["orders"]["version"].as_u64()?;
            let now = m["orders"]["now"]["version"].as_u64()?;
            (taken != 0 && taken == now && m["orders"]["now"]["rules"].as_array()?.len() == rules)
                .then_some(m)
        },
    )
}

fn minion_log_has(s: &mut Setup, text: &str) -> bool {
    s.minion.daemon().log_text().contains(text)
}

/// Waits until the minion's log has said `text` `n` times.
fn wait_log(s: &mut Setup, text: &str, n: usize, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        (s.minion.daemon().log_text().matches(text).count() >= n).then_some(())
    });
}

const ENFORCING: &str = "enforcing the standing orders here";

/// Edits the managed file by hand and waits until it is managed again.
fn edit_and_wait_restored(s: &Setup, text: &str, what: &str) {
    std::fs::write(&s.file, text).unwrap();
    wait_until(Duration::from_secs(10), what, || {
        is_managed(&s.file).then_some(())
    });
}

fn local_jobs(s: &Setup) -> Vec<Value> {
    s.master
        .tend_json(&["jobs", "--limit", "100"])
        .into_iter()
        .filter(|j| j["local"] == true)
        .collect()
}

/// Check 2: the master stopped, the minion restores an edit itself; then
/// restarted while the master is still down, its orders come from disk
/// and edits are still restored. When the master is back, `tend jobs`
/// shows both local jobs (with their diffs) and `tend events` the edits
/// and the restores, once each, and the master ran no job of its own for
/// them.
#[test]
fn with_the_master_down_edits_are_restored_locally_even_across_a_minion_restart() {
    let mut s = setup("", "");
    let before = s
        .master
        .events(&["--limit", "1"])
        .first()
        .and_then(|e| e["id"].as_u64())
        .unwrap_or(0);
    s.master.daemon().stop();
    wait_log(&mut s, ENFORCING, 1, "the minion to start enforcing");
    edit_and_wait_restored(&s, "hand edit while cut off\n", "a local restore");

    // Restarted while the master is down: orders from disk.
    s.minion.daemon().stop();
    s.minion.start();
    assert!(minion_log_has(&mut s, "standing orders read from disk"));
    wait_log(
        &mut s,
        ENFORCING,
        2,
        "the restarted minion to enforce again",
    );
    edit_and_wait_restored(&s, "second hand edit\n", "a local restore after a restart");

    s.master.start();
    s.master.wait_connected("web1");
    let jobs = wait_until(
        Duration::from_secs(20),
        "the master to record both local jobs",
        || {
            let jobs = local_jobs(&s);
            (jobs.len() >= 2).then_some(jobs)
        },
    );
    assert_eq!(jobs.len(), 2, "two local jobs, once each: {jobs:#?}");
    for j in &jobs {
        assert_eq!(j["status"], "changed", "{j}");
        assert_eq!(j["rule"], "restore-motd");
        assert_eq!(j["target"], "web1");
        let diff = j["minions"][0]["states"][0]["diff"].as_str().unwrap_or("");
        assert!(
            diff.contains("+Welcome to web1."),
            "the diff came along: {j}"
        );
    }
    // Every job the reactor recorded after the edits is local: the master
    // acted on neither edit itself (the job records are made in the same
    // step that evaluates the events before them).
    let all = s.master.tend_json(&["jobs", "--limit", "100"]);
    let masters_own: Vec<&Value> = all
        .iter()
        .filter(|j| j["rule"] == "restore-motd" && j["local"] != true)
        .collect();
    assert!(
        masters_own.is_empty(),
        "the master ran its own restore for an event the minion handled: {masters_own:#?}"
    );
    let events: Vec<Value> = s
        .master
        .events(&["--minion", "web1", "--limit", "1000"])
        .into_iter()
        .filter(|e| e["id"].as_u64().unwrap_or(0) > before)
        .collect();
    let job_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["tag"].as_str().unwrap_or("").contains("/job/local/"))
        .collect();
    assert_eq!(job_events.len(), 2, "{job_events:#?}");
    let mut seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "every minion event stored once");
    // Each local job's trigger is an edit the beacon saw (no cause), and
    // the restore's own write came back caused by that job.
    for j in &job_events {
        let trigger = j["data"]["trigger_seq"].as_u64().unwrap();
        let edit = events
            .iter()
            .find(|e| e["seq"].as_u64() == Some(trigger))
            .unwrap_or_else(|| panic!("the trigger {trigger} is stored: {events:#?}"));
        assert!(edit["cause"].is_null(), "{edit}");
        assert!(edit["tag"].as_str().unwrap().contains("/beacon/motd/"));
    }
}
