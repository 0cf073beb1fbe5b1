//! What the reactor did survives the master's crashes and restarts: every
//! stored event is reacted to exactly once however often the master is
//! killed, jobs a killed master left running are marked `interrupted`, and
//! windows and `for` holds go on across a restart as if none happened.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tend_e2e::{Master, Minion, wait_until};

/// Waits up to `timeout` for `check`, then returns its last answer: the
/// caller asserts on it with a message that says what was found.
fn settle<T>(timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, v) = check();
        if done || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sent_last(out: &std::process::Output) -> u64 {
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .rsplit("..=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .expect("the send prints the seqs it was given")
}

#[test]
fn every_stored_event_is_reacted_to_exactly_once_across_master_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.rule_file(
        "react.toml",
        r#"
        [[rule]]
        name = "echo"
        on = "minion/*/event/tick"
        [[rule.action]]
        fire = "reacted"
        data = { seq = "{{ event.seq }}" }
        "#,
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");

    // Ticks keep coming (a few hundred a second) while the master is
    // killed every 2 to 3.5 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (stop, config) = (stop.clone(), minion.dir.join("minion.toml"));
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = std::process::Command::new(tend_e2e::bin("tend-minion"))
                    .arg("--config")
                    .arg(&config)
                    .args(["send", "tick", "{}", "--count", "50"])
                    .output()
                    .expect("run tend-minion send");
                last = sent_last(&out);
                std::thread::sleep(Duration::from_millis(150));
            }
            last
        })
    };
    for kill in 0..5u64 {
        std::thread::sleep(Duration::from_millis(2000 + kill * 350));
        master.daemon().kill9();
        master.start();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let last = ticker.join().unwrap();
    assert!(last > 500, "only {last} ticks were sent");

    let ticks = |m: &Master| {
        m.events(&["--tag", "minion/m1/event/tick", "--limit", "1000000"])
            .len() as u64
    };
    wait_until(Duration::from_secs(120), "every tick stored", || {
        (ticks(&master) == last).then_some(())
    });
    let reacted = |m: &Master| -> HashMap<u64, u64> {
        let mut seen = HashMap::new();
        for e in m.events(&["--tag", "reacted", "--limit", "1000000"]) {
            let seq: u64 = e["data"]["seq"].as_str().unwrap().parse().unwrap();
            *seen.entry(seq).or_default() += 1;
        }
        seen
    };
    let seen = settle(Duration::from_secs(60), || {
        let seen = reacted(&master);
        (seen.len() as u64 >= last, seen)
    });
    let missing: Vec<u64> = (1..=last).filter(|s| !seen.contains_key(s)).collect();
    let twice: Vec<(&u64, &u64)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "of {last} ticks, {} were never reacted to ({:?}...) and {} more than once ({:?}...)",
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    // Every `fire` job that says ok has its event stored, and only one.
    let fired: HashMap<u64, u64> = master
        .events(&["--tag", "reacted", "--limit", "1000000"])
        .iter()
        .map(|e| (e["cause"].as_u64().unwrap_or(0), 1))
        .collect();
    let jobs = master.tend_json(&["jobs", "--limit", "1000000"]);
    let ok_without_event: Vec<u64> = jobs
        .iter()
        .filter(|j| j["kind"] == "fire" && j["status"] == "ok")
        .map(|j| j["id"].as_u64().unwrap())
        .filter(|id| !fired.contains_key(id))
        .collect();
    assert!(
        ok_without_event.is_empty(),
        "{} fire jobs are ok but their event was never stored: {:?}",
        ok_without_event.len(),
        &ok_without_event[..ok_without_event.len().min(10)]
    );
}

#[test]
fn jobs_a_killed_master_left_running_are_marked_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "slow.toml",
        "[wait]\ntype = \"cmd.run\"\ncommand = \"sleep 30\"\n",
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");

    let mut apply = std::process::Command::new(tend_e2e::bin("tend"))
        .args(["--master", &master.control, "apply", "m1", "slow"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = wait_until(Duration::from_secs(20), "the apply job running", || {
        master
            .tend_json(&["jobs"])
            .iter()
            .find(|j| j["kind"] == "apply" && j["status"] == "running")
            .and_then(|j| j["id"].as_u64())
    });
    master.daemon().kill9();
    let _ = apply.kill();
    let _ = apply.wait();
    master.start();

    let job = settle(Duration::from_secs(30), || {
        let job = master
            .tend_json(&["jobs"])
            .into_iter()
            .find(|j| j["id"] == id)
            .unwrap_or(Value::Null);
        (job["status"] == "interrupted", job)
    });
    assert_eq!(
        job["status"], "interrupted",
        "the job the killed master left running: {job}"
    );
    assert!(job["finished"].is_string(), "it has an end time: {job}");
    assert_eq!(job["minions"][0]["status"], "interrupted", "{job}");
    // And it says so in events: one for the master, one per minion.
    let said = wait_until(Duration::from_secs(20), "the interrupted events", || {
        let all = master.events(&["--tag", "master/jobs/interrupted"]);
        let mine = master.events(&["--tag", &format!("minion/m1/job/{id}/interrupted")]);
        (!all.is_empty() && !mine.is_empty()).then_some(all)
    });
    assert!(
        said[0]["data"]["jobs"]
            .as_array()
            .is_some_and(|ids| ids.contains(&Value::from(id))),
        "{}",
        said[0]
    );
}

#[test]
fn windows_and_holds_go_on_across_a_master_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.rule_file(
        "windows.toml",
        r#"
        [[rule]]
        name = "three-knocks"
        on = "minion/*/event/knock"
        count = 3
        window = "5m"
        [[rule.action]]
        fire = "knocked"

        [[rule]]
        name = "hot-for-5s"
        on = "minion/*/event/temp"
        when = "event.data.hot == true"
        for = "5s"
        [[rule.action]]
        fire = "held"
        "#,
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");
    let send = |tag: &str, data: &str| {
        let out = std::process::Command::new(tend_e2e::bin("tend-minion"))
            .arg("--config")
            .arg(minion.dir.join("minion.toml"))
            .args(["send", tag, data])
            .output()
            .unwrap();
        sent_last(&out)
    };

    // Two knocks and the start of a hold, evaluated before the kill.
    send("knock", "{}");
    send("knock", "{}");
    send("temp", r#"{"hot": true}"#);
    wait_until(Duration::from_secs(20), "the 3 events evaluated", || {
        let stored = master.events(&["--tag", "minion/m1/event/*"]).len();
        (stored == 3 && master.counters()["reactor_queue"] == 0).then_some(())
    });
    assert!(master.events(&["--tag", "knocked"]).is_empty());
    master.daemon().kill9();
    master.start();
    master.wait_connected("m1");

    // The third knock completes the window the first two opened.
    send("knock", "{}");
    wait_until(
        Duration::from_secs(30),
        "the window of three knocks to fire across the restart",
        || (!master.events(&["--tag", "knocked"]).is_empty()).then_some(()),
    );
    // The hold started before the restart completes 5 s after it began.
    wait_until(
        Duration::from_secs(30),
        "the `for = 5s` hold to fire across the restart",
        || (!master.events(&["--tag", "held"]).is_empty()).then_some(()),
    );
    assert_eq!(master.events(&["--tag", "knocked"]).len(), 1);
    assert_eq!(master.events(&["--tag", "held"]).len(), 1);
}

#[test]
fn reactions_waiting_their_turn_at_a_crash_are_recorded_and_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "max_actions = 1\n");
    master.rule_file(
        "slow.toml",
        r#"
        [[rule]]
        name = "slow"
        on = "minion/*/event/go"
        [[rule.action]]
        run = ["sleep", "30"]
        "#,
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");
    assert!(minion.send("go", 3).status.success());
    let rule_jobs = |m: &Master| -> Vec<Value> {
        m.tend_json(&["jobs"])
            .into_iter()
            .filter(|j| j["rule"] == "slow")
            .collect()
    };
    // One runs, two wait: all three are recorded before any runs.
    wait_until(Duration::from_secs(20), "1 running and 2 queued", || {
        let j = rule_jobs(&master);
        let count = |s: &str| j.iter().filter(|j| j["status"] == s).count();
        (count("running") == 1 && count("queued") == 2).then_some(())
    });
    master.daemon().kill9();
    master.start();
    let jobs = settle(Duration::from_secs(20), || {
        let j = rule_jobs(&master);
        (
            j.len() == 3 && j.iter().all(|j| j["status"] == "interrupted"),
            j,
        )
    });
    assert!(
        jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "interrupted"),
        "every reaction the killed master had taken on ends interrupted: {jobs:?}"
    );
}
