//! Issue 17: a minion cut off from every master keeps its standing orders
//! itself. Real master and minion processes; the cut is the master
//! stopped, or (check 1) the minion's network namespace cut off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tend_e2e::autonomy::ENFORCING;
use tend_e2e::netns::Netns;
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
    setup_in(None, "", rule_extra, minion_extra)
}

/// As [`setup`]; with `net`, the master is bound on the namespace's
/// master address and the minion runs inside it. `master_extra` goes into
/// master.toml (with `auto_accept = false` the key is accepted by hand).
fn setup_in(
    net: Option<&Netns>,
    master_extra: &str,
    rule_extra: &str,
    minion_extra: &str,
) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("motd");
    let mut master = Master::new(&tmp.path().join("master"), master_extra);
    if let Some(net) = net {
        let config = std::fs::read_to_string(master.config())
            .unwrap()
            .replace("tcp://127.0.0.1:", &format!("tcp://{}:", net.master_ip()));
        std::fs::write(master.config(), config).unwrap();
        master.event_endpoint = master.event_endpoint.replace("127.0.0.1", net.master_ip());
        master.command_endpoint = master
            .command_endpoint
            .replace("127.0.0.1", net.master_ip());
    }
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
    match net {
        Some(net) => minion.daemon = Some(net.start_minion(&minion.dir)),
        None => minion.start(),
    }
    if master_extra.contains("auto_accept = false") {
        wait_until(Duration::from_secs(20), "web1's key pending", || {
            let out = master.tend(&["keys", "accept", "web1"]);
            out.status.success().then_some(())
        });
    }
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
    has(p, MANAGED)
}

fn has(p: &Path, text: &str) -> bool {
    std::fs::read_to_string(p).is_ok_and(|c| c == text)
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
    tend_e2e::autonomy::wait_log(&mut s.minion, text, n, what);
}

/// Edits the managed file by hand and waits until it is managed again.
fn edit_and_wait_restored(s: &Setup, text: &str, what: &str) {
    edit_and_wait_for(s, text, MANAGED, what);
}

fn edit_and_wait_for(s: &Setup, text: &str, managed: &str, what: &str) {
    std::fs::write(&s.file, text).unwrap();
    wait_until(Duration::from_secs(10), what, || {
        has(&s.file, managed).then_some(())
    });
}

fn last_event_id(s: &Setup) -> u64 {
    s.master
        .events(&["--limit", "1"])
        .first()
        .and_then(|e| e["id"].as_u64())
        .unwrap_or(0)
}

/// The minion's events stored after `after`, oldest first.
fn events_after(s: &Setup, after: u64) -> Vec<Value> {
    let mut events: Vec<Value> = s
        .master
        .events(&["--minion", "web1", "--limit", "1000"])
        .into_iter()
        .filter(|e| e["id"].as_u64().unwrap_or(0) > after)
        .collect();
    events.sort_by_key(|e| e["id"].as_u64());
    events
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
    wait_log(
        &mut s,
        "standing orders read from disk",
        1,
        "the orders read from disk",
    );
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
    let mut seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .filter(|s| *s > 0)
        .collect();
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

const MANAGED2: &str = "Welcome to web1, second edition.\n";

/// Checks 1 and 3: the minion in its own network namespace, its link to
/// the master cut (the master keeps running): a hand edit is restored by
/// the minion; after the link is back, `tend jobs` shows the local job
/// with its diff and `tend events` the edit and the restore, in order,
/// once each. A rule changed while the minion was cut off reaches it
/// within a second of reconnecting, and the next cut enforces it.
#[test]
fn cut_off_by_the_network_a_minion_heals_itself_and_takes_changed_rules_on_reconnect() {
    let Some(net) = Netns::create_or_skip() else {
        return;
    };
    let mut s = setup_in(Some(&net), "", "", "");
    let before = last_event_id(&s);
    net.cut().unwrap();
    wait_log(&mut s, ENFORCING, 1, "the minion to start enforcing");
    edit_and_wait_restored(&s, "hand edit while cut off\n", "a local restore");

    // Meanwhile the rule changes: it now applies another state.
    s.master.state_file("files/motd2", MANAGED2);
    s.master.state_file(
        "motd2.toml",
        &format!(
            "[motd2]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/motd2\"\nmode = \"0644\"\n",
            s.file.display()
        ),
    );
    s.master.rule_file(
        "restore.toml",
        "[[rule]]\nname = \"restore-motd\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\napply = [\"motd2\"]\n",
    );
    s.master.expect(&["reactor", "reload"], 0);
    let old_version = wait_for_orders_version(&s, |_| true);
    net.heal().unwrap();
    s.master.wait_connected("web1");
    let reconnected = std::time::Instant::now();
    let new_version = wait_until(
        Duration::from_secs(1),
        "the changed rule in the minion's orders within a second of reconnecting",
        || {
            let v = wait_for_orders_version(&s, |_| true);
            (v != old_version).then_some(v)
        },
    );
    println!(
        "new orders {new_version:016x} taken {} ms after the master saw the minion again",
        reconnected.elapsed().as_millis()
    );

    // The link back, the master has the local job and the events.
    let jobs = wait_until(Duration::from_secs(20), "the local job recorded", || {
        let jobs = local_jobs(&s);
        (!jobs.is_empty()).then_some(jobs)
    });
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let diff = jobs[0]["minions"][0]["states"][0]["diff"]
        .as_str()
        .unwrap_or("");
    assert!(diff.contains("-hand edit while cut off"), "{}", jobs[0]);
    assert!(diff.contains("+Welcome to web1."), "{}", jobs[0]);
    let events = events_after(&s, before);
    let edit = events
        .iter()
        .position(|e| {
            e["tag"].as_str().unwrap_or("").contains("/beacon/motd/") && e["cause"].is_null()
        })
        .expect("the edit is stored");
    let job_event = events
        .iter()
        .position(|e| e["tag"].as_str().unwrap_or("").contains("/job/local/"))
        .expect("the local job's event is stored");
    let restore = events
        .iter()
        .position(|e| {
            e["tag"].as_str().unwrap_or("").contains("/beacon/motd/")
                && !e["cause"].is_null()
                && e["cause"] == events[job_event]["data"]["job"]
        })
        .expect("the restore's own write is stored, caused by the local job");
    assert!(
        edit < restore && edit < job_event,
        "in order (the restore's write and the job's record may come either way round): {events:#?}"
    );
    assert!(
        !events[edit]["local"].is_null(),
        "the edit was marked as handled locally"
    );
    let edits = events
        .iter()
        .filter(|e| {
            e["tag"].as_str().unwrap_or("").contains("/beacon/motd/") && e["cause"].is_null()
        })
        .count();
    assert_eq!(edits, 1, "the edit once: {events:#?}");
    let minions_own: Vec<u64> = events
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .filter(|s| *s > 0)
        .collect();
    let seqs: std::collections::HashSet<&u64> = minions_own.iter().collect();
    assert_eq!(seqs.len(), minions_own.len(), "each event once");

    // Cut again: the changed rule is what the minion enforces now.
    net.cut().unwrap();
    wait_log(&mut s, ENFORCING, 2, "the minion to enforce again");
    edit_and_wait_for(
        &s,
        "another edit\n",
        MANAGED2,
        "a restore under the changed rule",
    );
    net.heal().unwrap();
}

/// The version of the orders web1 took, once `ok` holds for the detail.
fn wait_for_orders_version(s: &Setup, ok: impl Fn(&Value) -> bool) -> u64 {
    wait_until(Duration::from_secs(20), "web1's orders version", || {
        let v = s
            .master
            .tend_json(&["minion", "show", "web1", "--events", "0"]);
        let m = v.first()?.clone();
        let taken = m["orders"]["version"].as_u64()?;
        (taken != 0 && ok(&m)).then_some(taken)
    })
}

/// Check 5, second half: a minion whose key was deleted while it was cut
/// off drops its orders on its next contact.
#[test]
fn a_minion_whose_key_was_deleted_while_cut_off_drops_its_orders_on_contact() {
    let Some(net) = Netns::create_or_skip() else {
        return;
    };
    let mut s = setup_in(Some(&net), "auto_accept = false\n", "", "");
    let orders = s.minion.dir.join("data/orders");
    assert!(orders.exists(), "the orders are on the minion's disk");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&orders).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the orders file is private");
    net.cut().unwrap();
    wait_log(&mut s, ENFORCING, 1, "the minion to start enforcing");
    s.master.expect(&["keys", "delete", "web1"], 0);
    net.heal().unwrap();
    wait_until(Duration::from_secs(30), "the orders dropped", || {
        (!orders.exists()).then_some(())
    });
    assert!(minion_log_has(&mut s, "its standing orders are dropped"));
}

/// The seq `tend-minion send` reports for one event ("seq N..=N").
fn poke(s: &Setup) -> u64 {
    let out = s.minion.send("poke", 1);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("seq ")
        .nth(1)
        .and_then(|r| r.split("..").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no seq in {text:?}"))
}

/// Check 4, end to end: a `count = 3 within 60s` rule, enforced by the
/// minion itself while the master is down, fires at the third event and
/// not before, as it would on the master.
#[test]
fn a_count_within_window_rule_fires_locally_at_the_third_event() {
    let mut s = setup("", "");
    s.master.rule_file(
        "restore.toml",
        "[[rule]]\nname = \"three-pokes\"\non = \"minion/*/event/poke\"\ncount = 3\nwindow = \"60s\"\n[[rule.action]]\napply = [\"motd\"]\n",
    );
    s.master.expect(&["reactor", "reload"], 0);
    wait_for_orders_version(&s, |m| {
        m["orders"]["now"]["rules"][0] == "three-pokes"
            && m["orders"]["version"] == m["orders"]["now"]["version"]
    });
    s.master.daemon().stop();
    wait_log(&mut s, ENFORCING, 1, "the minion to start enforcing");
    std::fs::write(&s.file, "edited, and three pokes will put it back\n").unwrap();
    let first = poke(&s);
    let _second = poke(&s);
    let third = poke(&s);
    wait_until(
        Duration::from_secs(10),
        "the restore after three pokes",
        || is_managed(&s.file).then_some(()),
    );
    s.master.start();
    s.master.wait_connected("web1");
    let jobs = wait_until(Duration::from_secs(20), "the local job recorded", || {
        let jobs = local_jobs(&s);
        (!jobs.is_empty()).then_some(jobs)
    });
    assert_eq!(jobs.len(), 1, "one fire for three events: {jobs:#?}");
    assert_eq!(
        jobs[0]["trigger"]["seq"].as_u64(),
        Some(third),
        "fired at the third poke (the first was {first}): {}",
        jobs[0]
    );
}

/// Check 5, first half: orders past `max_autonomy` are not enforced, and
/// an event says so; the master, back, acts on what the minion did not.
#[test]
fn orders_past_max_autonomy_are_not_enforced_and_an_event_says_so() {
    let mut s = setup_in(None, "max_autonomy = \"2s\"\n", "", "");
    let before = last_event_id(&s);
    s.master.daemon().stop();
    wait_log(
        &mut s,
        "the standing orders are past their expiry",
        1,
        "the minion to say its orders expired",
    );
    std::fs::write(&s.file, "edited after the orders expired\n").unwrap();
    let seq = poke(&s);
    s.master.start();
    s.master.wait_connected("web1");
    // The master, not the minion, puts it back.
    wait_until(Duration::from_secs(20), "the master's restore", || {
        is_managed(&s.file).then_some(())
    });
    let events = events_after(&s, before);
    let expired = s
        .master
        .events(&["--minion", "web1"])
        .iter()
        .filter(|e| e["tag"] == "minion/web1/autonomy/expired")
        .count();
    assert_eq!(expired, 1, "an event says the orders expired");
    let p = events
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .expect("the poke is stored");
    assert!(p["local"].is_null(), "not handled locally: {p}");
    assert!(local_jobs(&s).is_empty(), "no local job after expiry");
}

/// Check 6: edits racing a reconnect, over and over. Each edit is acted
/// on by one side only: an edit the minion marked as its own has exactly
/// one local job and no job of the master's; every job of the master's
/// was triggered by an edit the minion did not mark; the file ends
/// managed every time.
#[test]
fn an_event_at_the_moment_of_reconnect_is_acted_on_exactly_once() {
    let Some(net) = Netns::create_or_skip() else {
        return;
    };
    let mut s = setup_in(Some(&net), "", "", "");
    let before = last_event_id(&s);
    const ROUNDS: usize = 8;
    for round in 1..=ROUNDS {
        net.cut().unwrap();
        wait_log(&mut s, ENFORCING, round, "the minion to enforce");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let editor = {
            let (file, stop) = (s.file.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::write(&file, format!("edit {round}.{n}\n"));
                    n += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        };
        net.heal().unwrap();
        wait_log(
            &mut s,
            "a master is back: it enforces again",
            round,
            "the minion to stand by again",
        );
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        editor.join().unwrap();
        wait_until(Duration::from_secs(20), "the file managed again", || {
            is_managed(&s.file).then_some(())
        });
    }
    // Every job of the rule, local or the master's, by the edit it acted on.
    let jobs = wait_until(Duration::from_secs(30), "every local job recorded", || {
        let events = events_after(&s, before);
        let local_events = events
            .iter()
            .filter(|e| e["tag"].as_str().unwrap_or("").contains("/job/local/"))
            .count();
        let jobs: Vec<Value> =
            s.master
                .tend_json(&["jobs", "--limit", "10000", "--rule", "restore-motd"]);
        (jobs.iter().filter(|j| j["local"] == true).count() == local_events).then_some(jobs)
    });
    let events = events_after(&s, before);
    let edits: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["tag"].as_str().unwrap_or("").contains("/beacon/motd/") && e["cause"].is_null()
        })
        .collect();
    let marked: std::collections::HashSet<u64> = edits
        .iter()
        .filter(|e| !e["local"].is_null())
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let unmarked: std::collections::HashSet<u64> = edits
        .iter()
        .filter(|e| e["local"].is_null())
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(!marked.is_empty(), "some edits were the minion's");
    let mut local_by_trigger: std::collections::HashMap<u64, usize> = Default::default();
    for j in jobs.iter().filter(|j| j["local"] == true) {
        *local_by_trigger
            .entry(j["trigger"]["seq"].as_u64().unwrap())
            .or_default() += 1;
    }
    for seq in &marked {
        assert_eq!(
            local_by_trigger.get(seq),
            Some(&1),
            "the minion's edit {seq} has one local job"
        );
    }
    for seq in local_by_trigger.keys() {
        assert!(
            marked.contains(seq),
            "a local job for edit {seq}, which was not the minion's"
        );
    }
    for j in jobs.iter().filter(|j| j["local"] != true) {
        let seq = j["trigger"]["seq"].as_u64().unwrap_or(0);
        assert!(
            unmarked.contains(&seq),
            "the master acted on edit {seq}, which was {}",
            if marked.contains(&seq) {
                "the minion's"
            } else {
                "no edit"
            }
        );
    }
    println!(
        "{ROUNDS} rounds: {} edits the minion's, {} the master's, {} jobs of the master's",
        marked.len(),
        unmarked.len(),
        jobs.iter().filter(|j| j["local"] != true).count()
    );
}

/// Safety: an operator turns autonomy off for a minion from the master.
/// Its orders say so at once; cut off, it heals nothing itself, and the
/// master acts on its events when back.
#[test]
fn autonomy_turned_off_from_the_master_stops_local_enforcement() {
    let mut s = setup("", "");
    let before = last_event_id(&s);
    s.master.expect(&["minion", "autonomy", "web1", "off"], 0);
    wait_for_orders_version(&s, |m| {
        m["orders"]["now"]["enabled"] == false
            && m["orders"]["version"] == m["orders"]["now"]["version"]
    });
    let shown = s.master.expect(&["minion", "show", "web1"], 0);
    assert!(shown.contains("autonomy=off"), "{shown}");
    s.master.daemon().stop();
    wait_log(
        &mut s,
        "autonomy is off",
        1,
        "the minion to say it enforces nothing",
    );
    assert!(!minion_log_has(&mut s, ENFORCING));
    std::fs::write(&s.file, "edited with autonomy off\n").unwrap();
    let seq = poke(&s);
    s.master.start();
    s.master.wait_connected("web1");
    wait_until(Duration::from_secs(20), "the master's restore", || {
        is_managed(&s.file).then_some(())
    });
    let events = events_after(&s, before);
    let p = events
        .iter()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .expect("the poke is stored");
    assert!(p["local"].is_null(), "not handled locally: {p}");
    assert!(local_jobs(&s).is_empty(), "no local job with autonomy off");
    // And on again.
    s.master.expect(&["minion", "autonomy", "web1", "on"], 0);
    wait_for_orders_version(&s, |m| {
        m["orders"]["now"]["enabled"] == true
            && m["orders"]["version"] == m["orders"]["now"]["version"]
    });
}

/// Rules that need the fleet stay on the master, and `tend minion show`
/// lists each with why: a `run` action, a target other than the event's
/// minion, counting across minions, states templated on the event. The
/// minion's own restore rule is in its orders.
#[test]
fn rules_that_need_the_fleet_stay_on_the_master_and_minion_show_says_why() {
    let s = setup("", "");
    s.master.rule_file(
        "fleet.toml",
        "[[rule]]\nname = \"page-someone\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\nrun = [\"true\"]\n\n\
         [[rule]]\nname = \"fix-the-web-tier\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\napply = [\"motd\"]\ntarget = \"web*\"\n\n\
         [[rule]]\nname = \"many-minions\"\non = \"minion/*/beacon/motd/*\"\ngroup_by = [\"tag\"]\ncount = 5\nwindow = \"1m\"\n[[rule.action]]\napply = [\"motd\"]\n\n\
         [[rule]]\nname = \"not-mine\"\non = \"minion/db*/beacon/**\"\n[[rule.action]]\napply = [\"motd\"]\n",
    );
    s.master.expect(&["reactor", "reload"], 0);
    let m = wait_for_orders(&s, 1);
    let now = &m["orders"]["now"];
    assert_eq!(now["rules"], serde_json::json!(["restore-motd"]), "{now}");
    let held: Vec<(String, String)> = now["on_master"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["rule"].as_str().unwrap().to_string(),
                h["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let why = |rule: &str| {
        held.iter()
            .find(|(r, _)| r == rule)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| panic!("{rule} is not listed as kept on the master: {held:?}"))
    };
    assert!(why("page-someone").contains("`run`"), "{held:?}");
    assert!(why("fix-the-web-tier").contains("target"), "{held:?}");
    assert!(why("many-minions").contains("across minions"), "{held:?}");
    assert!(
        held.iter().all(|(r, _)| r != "not-mine"),
        "a rule that cannot match this minion's events is not listed: {held:?}"
    );
    let text = s.master.expect(&["minion", "show", "web1"], 0);
    assert!(text.contains("on master:   page-someone"), "{text}");
    assert!(text.contains("standing:    restore-motd"), "{text}");
}
