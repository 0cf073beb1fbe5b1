//! Work started by input is bounded: rule actions run at most
//! `max_actions` at once with at most `action_queue` waiting, and the
//! rest are refused, counted and recorded; the reactor's backlog gauge
//! counts stored events it has not evaluated, and nothing else.

use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, wait_until};

fn setup(extra: &str, rules: &str) -> (tempfile::TempDir, Master, Minion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), extra);
    master.rule_file("rules.toml", rules);
    master.start();
    let mut minion = Minion::new(&tmp.path().join("m1"), "m1", &master, "");
    minion.start();
    master.wait_connected("m1");
    (tmp, master, minion)
}

#[test]
fn rule_actions_past_max_actions_and_the_queue_are_refused_and_counted() {
    let (_tmp, master, minion) = setup(
        "max_actions = 2\naction_queue = 2\n",
        r#"
        [[rule]]
        name = "slow"
        on = "minion/*/event/slow"
        [[rule.action]]
        run = ["sleep", "3"]
        "#,
    );
    let out = minion.send("slow", 10);
    assert!(out.status.success());
    let jobs = |m: &Master| -> Vec<Value> {
        m.tend_json(&["jobs", "--limit", "1000"])
            .into_iter()
            .filter(|j| j["rule"] == "slow")
            .collect()
    };
    let mut most_running = 0;
    let done = wait_until(
        Duration::from_secs(60),
        "all ten reactions to end (run or refused)",
        || {
            let c = master.counters();
            most_running = most_running.max(c["actions_running"].as_u64().unwrap_or(0));
            let j = jobs(&master);
            (j.len() == 10 && j.iter().all(|j| j["finished"].is_string())).then_some(j)
        },
    );
    let refused: Vec<&Value> = done
        .iter()
        .filter(|j| {
            j["status"] == "failed"
                && j["minions"][0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("action queue is full"))
        })
        .collect();
    assert_eq!(
        refused.len(),
        6,
        "2 running + 2 waiting, 6 refused: {done:?}"
    );
    assert_eq!(
        done.iter().filter(|j| j["status"] == "ok").count(),
        4,
        "the admitted ones ran: {done:?}"
    );
    assert_eq!(master.counters()["actions_refused"], 6);
    assert!(most_running <= 2, "{most_running} actions ran at once");
}

#[test]
fn the_reactor_backlog_counts_stored_events_not_yet_evaluated() {
    let (_tmp, master, minion) = setup(
        "",
        r#"
        [[rule]]
        name = "echo"
        on = "minion/*/event/e"
        [[rule.action]]
        fire = "echoed"
        "#,
    );
    let sender = minion.send_in_background("e", 3000);
    // While they flow, the backlog is never more than what was sent (the
    // old gauge could go below zero and wrap to ~1.8e19).
    let mut samples = 0;
    wait_until(Duration::from_secs(120), "every event evaluated", || {
        let c = master.counters();
        let backlog = c["reactor_queue"]
            .as_u64()
            .expect("reactor_queue in status");
        assert!(backlog <= 10_000, "reactor_queue {backlog}");
        samples += 1;
        (master
            .events(&["--tag", "echoed", "--limit", "10000"])
            .len()
            == 3000)
            .then_some(())
    });
    let _ = sender.wait_with_output();
    assert!(samples > 0);
    wait_until(Duration::from_secs(20), "the backlog at 0", || {
        (master.counters()["reactor_queue"] == 0).then_some(())
    });
}
