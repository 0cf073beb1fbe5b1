//! Rules that cannot work say so: a condition failing on every event is
//! counted and shown (`tend rules`, `tend status`, the metrics, the log,
//! at a bounded rate); `--check-config` reports every problem of every
//! rule and state file with its file and line; `tend reactor test` takes
//! the whole rules directory and says when an event is skipped because a
//! job caused it.

use std::process::Command;
use std::time::Duration;

use tend_e2e::{Master, Minion, bin, free_port, run_daemon, wait_until};

/// The master's metrics page.
fn metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tend\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn a_condition_that_fails_on_every_event_is_counted_shown_and_logged_once() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut master = Master::new(
        &tmp.path().join("master"),
        &format!("metrics_listen = {addr:?}"),
    );
    // The events carry {}: `event.data.state` is no such key, every time.
    master.rule_file(
        "probe.toml",
        "[[rule]]\nname = \"gone\"\non = \"minion/*/event/probe\"\n\
         when = 'event.data.state == \"absent\"'\n[[rule.action]]\nfire = \"x\"\n",
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    let sent = minion.send("probe", 3);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let rule = wait_until(
        Duration::from_secs(30),
        "`tend rules` to count 3 condition errors",
        || {
            master
                .tend_json(&["rules"])
                .into_iter()
                .find(|r| r["name"] == "gone" && r["condition_errors"] == 3)
        },
    );
    assert_eq!(rule["fires"], 0, "{rule}");
    assert_eq!(rule["action_errors"], 0, "{rule}");
    assert!(
        rule["file"].as_str().unwrap().ends_with("probe.toml"),
        "{rule}"
    );
    let last = rule["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("state"), "{rule}");
    assert!(rule["last_error_time"].is_string(), "{rule}");
    assert!(rule["last_fired_time"].is_null(), "{rule}");

    let table = master.tend(&["rules"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("gone") && text.contains("3 condition, 0 action") && text.contains("state"),
        "{text}"
    );

    assert_eq!(master.counters()["rule_condition_errors"], 3);
    let page = metrics(&addr);
    assert!(
        page.contains("tend_master_rule_condition_errors_total{rule=\"gone\"} 3"),
        "{page}"
    );
    assert!(
        page.contains("tend_master_rule_fires_total{rule=\"gone\"} 0"),
        "{page}"
    );

    // Logged, but once: the next two came within the minute.
    let log = master.daemon().log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rule condition could not be evaluated"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("gone") && lines[0].contains("state"),
        "{}",
        lines[0]
    );
}

#[test]
fn check_config_reports_every_bad_rule_and_state_file_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let master = Master::new(tmp.path(), "");
    // Two bad rule files: `[rule]` for `[[rule]]`, and a rule with a
    // misspelt variable, a condition that is not boolean and a broken
    // template (three rules, three problems).
    master.rule_file("a.toml", "[rule]\nname = \"x\"\non = \"y\"\n");
    master.rule_file(
        "b.toml",
        "[[rule]]\nname = \"typo\"\non = \"y\"\nwhen = 'evnt.data.kind == \"x\"'\n\
         [[rule.action]]\nfire = \"z\"\n\n\
         [[rule]]\nname = \"bare\"\non = \"y\"\nwhen = 'event.data.kind'\n\
         [[rule.action]]\nfire = \"z\"\n\n\
         [[rule]]\nname = \"template\"\non = \"y\"\n[[rule.action]]\n\
         run = [\"echo\", \"{{ event.data.path \"]\n\n\
         [[rule]]\nname = \"restore\"\non = \"y\"\n[[rule.action]]\napply = [\"hostz\"]\n",
    );
    // Two bad state files.
    master.state_file("one.toml", "[a]\ntype = \"cmd.run\"\ncommand = \"true\n");
    master.state_file(
        "two.toml",
        "[b]\ntype = \"pkg.installed\"\nname = \"x\"\nversoin = \"1\"\n",
    );
    let (code, err) = run_daemon("tend-master", &master.config(), &["--check-config"]);
    assert_ne!(code, 0, "{err}");
    for want in [
        "a.toml:1:1:",
        "write [[rule]]",
        "b.toml:4:1: rule \"typo\"",
        "unknown name `evnt`",
        "b.toml:11:1: rule \"bare\"",
        "not true or false",
        "rule \"template\"",
        "does not compile",
        "one.toml",
        "two.toml",
        "versoin",
        "b.toml: rule \"restore\": state \"hostz\" not found",
        "4 problem(s) in the rules",
        "problem(s) in the state tree",
    ] {
        assert!(
            err.contains(want),
            "--check-config reports {want:?}:\n{err}"
        );
    }
}

#[test]
fn reactor_test_takes_the_rules_directory_and_names_a_caused_event() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("reactor.d");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("restore.toml"),
        "[[rule]]\nname = \"restore\"\non = \"minion/*/beacon/motd/**\"\n[[rule.action]]\napply = [\"motd\"]\n",
    )
    .unwrap();
    std::fs::write(
        rules.join("other.toml"),
        "[[rule]]\nname = \"other\"\non = \"minion/*/beacon/cpu\"\n[[rule.action]]\nfire = \"x\"\n",
    )
    .unwrap();
    let event = dir.path().join("e.json");
    std::fs::write(
        &event,
        r#"{"minion": "web1", "tag": "minion/web1/beacon/motd/etc/motd", "cause": 42, "data": {}}"#,
    )
    .unwrap();
    let out = Command::new(bin("tend"))
        .args(["reactor", "test"])
        .arg(&rules)
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"restore\"")
            && text.contains("the tag matches")
            && text.contains("caused by job 42")
            && !text.contains("no rule's `on` matches"),
        "{text}"
    );
}

/// Issue 15, item 6 at run time: a state that is not there is traced to
/// who asked for it: the rule whose apply names it, or the top-file target
/// that gives it to the minion.
#[test]
fn a_missing_state_at_run_time_names_the_rule_or_top_target_that_asked_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "top.toml",
        "[[target]]\nmatch = \"db*\"\nstates = [\"motd\"]\n\n[[target]]\nmatch = \"web*\"\nstates = [\"hostz\"]\n",
    );
    master.rule_file(
        "r.toml",
        "[[rule]]\nname = \"fix-hosts\"\non = \"minion/*/event/hosts\"\n[[rule.action]]\napply = [\"hostz\"]\n",
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");

    // The top file's target #2 gives web1 the missing state.
    let jobs = master.expect_json(&["apply", "web1"], 1);
    let error = jobs[0]["minions"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("state \"hostz\" not found")
            && error.contains("named by top.toml: target #2 (\"web*\")"),
        "{error}"
    );

    // A rule's apply names it.
    assert!(minion.send("hosts", 1).status.success());
    let job = wait_until(Duration::from_secs(20), "the rule's job", || {
        master
            .tend_json(&["jobs", "--rule", "fix-hosts"])
            .into_iter()
            .find(|j| j["status"] == "failed")
    });
    let error = job["minions"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("state \"hostz\" not found")
            && error.contains("named by rule \"fix-hosts\""),
        "{job}"
    );
}
