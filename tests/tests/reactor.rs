//! The reactor with the real daemons: windows, `for`, no loops, coalescing,
//! every kind of action, reloads, and `tend reactor test`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, bin, wait_until};

struct Setup {
    tmp: tempfile::TempDir,
    master: Master,
    minion: Minion,
}

fn setup(rules: &str, extra_minion: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.rule_file("rules.toml", rules);
    master.start();
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, extra_minion);
    minion.start();
    master.wait_connected("web1");
    Setup {
        tmp,
        master,
        minion,
    }
}

fn send(s: &Setup, tag: &str, data: &str) -> u64 {
    let out = Command::new(bin("tend-minion"))
        .arg("--config")
        .arg(s.minion.dir.join("minion.toml"))
        .args(["send", tag, data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .rsplit("..=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A master counter.
fn counter(s: &Setup, name: &str) -> u64 {
    s.master.counters()[name].as_u64().unwrap_or(0)
}

/// Waits until the event with `seq` from web1 went through the reactor,
/// and so did every event stored before it. The master is fresh and never
/// restarted, and the reactor takes stored events in store order: the
/// event with store id N is evaluated once `events_evaluated` reaches N.
/// (Any count above 0, as before, was met by the minion's `up` alone.)
fn wait_stored(s: &Setup, seq: u64) {
    let id = wait_until(
        Duration::from_secs(30),
        &format!("event {seq} stored"),
        || {
            s.master
                .events(&["--minion", "web1"])
                .iter()
                .find(|e| {
                    e["seq"] == seq && e["tag"].as_str().is_some_and(|t| t.contains("/event/"))
                })
                .and_then(|e| e["id"].as_u64())
        },
    );
    wait_until(
        Duration::from_secs(30),
        &format!("event {seq} (store id {id}) evaluated"),
        || (counter(s, "events_evaluated") >= id).then_some(()),
    );
}

fn jobs(s: &Setup, rule: &str) -> Vec<Value> {
    s.master
        .tend_json(&["jobs", "--limit", "10000"])
        .into_iter()
        .filter(|j| j["rule"] == rule)
        .collect()
}

#[test]
fn five_failed_logins_within_the_window_act_once_and_four_do_not() {
    let s = setup(
        r#"
        [[rule]]
        name = "brute-force"
        on = "minion/*/event/login"
        when = 'event.data.result == "failed"'
        count = 5
        window = "60s"
        [[rule.action]]
        fire = "alert/brute-force/{{ event.minion }}"
        data = { user = "{{ event.data.user }}" }
        "#,
        "",
    );
    let failed = r#"{"result": "failed", "user": "root"}"#;
    let mut last = 0;
    for _ in 0..4 {
        last = send(&s, "login", failed);
    }
    send(&s, "login", r#"{"result": "ok", "user": "alice"}"#);
    // Everything sent so far was evaluated, and nothing acted.
    wait_stored(&s, last + 1);
    assert!(
        jobs(&s, "brute-force").is_empty(),
        "four failures must not act"
    );
    send(&s, "login", failed);
    let alert = wait_until(Duration::from_secs(10), "the alert event", || {
        s.master.events(&["--tag", "alert/brute-force/*"]).pop()
    });
    assert_eq!(alert["tag"], "alert/brute-force/web1");
    assert_eq!(alert["data"]["user"], "root");
    assert!(
        alert["cause"].is_u64(),
        "a fired event is caused by its job: rules cannot loop on it"
    );
    assert_eq!(jobs(&s, "brute-force").len(), 1);
}

#[test]
fn a_condition_that_must_hold_for_a_while_ignores_a_short_spike() {
    let s = setup(
        r#"
        [[rule]]
        name = "hot"
        on = "minion/*/event/cpu"
        when = "event.data.percent > 90"
        for = "2s"
        [[rule.action]]
        fire = "alert/hot/{{ event.minion }}"
        data = { seq = "{{ event.seq }}" }
        "#,
        "",
    );
    // A spike: above, then below at once.
    send(&s, "cpu", r#"{"percent": 99}"#);
    send(&s, "cpu", r#"{"percent": 12}"#);
    // Then sustained: above, and nothing breaks it.
    let sustained = send(&s, "cpu", r#"{"percent": 97}"#);
    let alert = wait_until(Duration::from_secs(10), "the sustained alert", || {
        s.master.events(&["--tag", "alert/hot/*"]).pop()
    });
    assert_eq!(
        alert["data"]["seq"],
        sustained.to_string(),
        "the sustained event acted, not the spike"
    );
    assert_eq!(jobs(&s, "hot").len(), 1);
}

#[test]
fn a_restore_never_triggers_itself_over_100_edits_and_bursts_coalesce() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("motd");
    let s = setup(
        r#"
        [[rule]]
        name = "restore"
        on = "minion/*/beacon/motd/*"
        [[rule.action]]
        apply = ["motd"]
        "#,
        &format!(
            "[[beacon]]\nname = \"motd\"\ntype = \"file\"\npaths = [{:?}]\n",
            file.display()
        ),
    );
    s.master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"managed\\n\"\n",
            file.display()
        ),
    );
    assert!(s.master.tend(&["apply", "web1", "motd"]).status.success());
    let managed = || std::fs::read_to_string(&file).is_ok_and(|c| c == "managed\n");
    for i in 0..100 {
        std::fs::write(&file, format!("edit {i}\n")).unwrap();
        wait_until(Duration::from_secs(30), "the restore", || {
            managed().then_some(())
        });
        // The restore's own write is stored (caused by its job) before the
        // next edit, so edits and restores do not interleave.
        wait_until(Duration::from_secs(30), "the restore's event", || {
            let restores = jobs(&s, "restore");
            let caused = s.master.events(&["--tag", "minion/web1/beacon/motd/*"]);
            (restores.len() == i + 1 && caused.iter().any(|e| e["cause"] == restores[0]["id"]))
                .then_some(())
        });
    }
    assert_eq!(
        jobs(&s, "restore").len(),
        100,
        "exactly one job per hand edit"
    );

    // A burst: edits that arrive while a restore runs. For one minion and
    // one set of states there is at most one apply running and one
    // waiting, so however many edits, two applies. The state now holds
    // its apply at a gate the test opens, so that every edit of the burst
    // is stored and evaluated while the first apply runs. The gate is an
    // `unless` check, not a command: what happens while a command runs is
    // put down to its job, and would not be drift. (Before, the
    // check was "fewer applies than edits": 49 applies for 50 edits
    // passed.)
    let gate = tmp.path().join("gate");
    s.master.state_file(
        "motd.toml",
        &format!(
            "[gate]\ntype = \"cmd.run\"\ncommand = \"true\"\nunless = \"while [ ! -e {} ]; do sleep 0.05; done\"\n\
             [motd]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"managed\\n\"\nrequire = \"gate\"\n",
            gate.display(),
            file.display()
        ),
    );
    const BURST: u64 = 8;
    let coalesced = counter(&s, "reactions_coalesced");
    let hand_edits = || {
        s.master
            .events(&["--tag", "minion/web1/beacon/motd/*"])
            .iter()
            .filter(|e| e["cause"].is_null())
            .count()
    };
    for i in 0..BURST {
        // One edit at a time, each its own event.
        let before = hand_edits();
        std::fs::write(&file, format!("burst {i}\n")).unwrap();
        wait_until(Duration::from_secs(30), "a burst edit's event", || {
            (hand_edits() > before).then_some(())
        });
    }
    // The first edit started the apply, the second waits, the rest were
    // folded into the waiting one.
    wait_until(
        Duration::from_secs(30),
        "every burst edit coalesced",
        || (counter(&s, "reactions_coalesced") - coalesced >= BURST - 2).then_some(()),
    );
    std::fs::write(&gate, "").unwrap();
    wait_until(
        Duration::from_secs(60),
        "the file restored after the burst",
        || {
            let restores = jobs(&s, "restore");
            let idle = restores.iter().all(|j| j["status"] != "running");
            (managed() && idle && restores.len() >= 102).then_some(())
        },
    );
    assert_eq!(
        counter(&s, "reactions_coalesced") - coalesced,
        BURST - 2,
        "edits folded into the waiting apply"
    );
    let burst_jobs = jobs(&s, "restore").len() - 100;
    assert_eq!(
        burst_jobs, 2,
        "a burst of {BURST} edits during a restore: one apply running, one waiting"
    );
    drop(tmp);
}

#[test]
fn run_and_webhook_actions_are_jobs_with_results() {
    // A tiny HTTP server the webhook posts to.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    len = line[15..].trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let mut conn = conn;
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    let s = setup(
        &format!(
            r#"
            [[rule]]
            name = "deployed"
            on = "minion/*/event/deploy"
            [[rule.action]]
            shell = "echo deployed {{{{ event.data.version }}}} on $(hostname) > {out}"
            [[rule.action]]
            webhook = "http://127.0.0.1:{port}/hook"
            timeout = "2s"
            "#,
            out = "/tmp/tend-e2e-run-{{ event.minion }}",
        ),
        "",
    );
    let _ = std::fs::remove_file("/tmp/tend-e2e-run-web1");
    send(&s, "deploy", r#"{"version": "2.0"}"#);
    let posted = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook POST");
    let posted: Value = serde_json::from_str(&posted).unwrap();
    assert_eq!(posted["rule"], "deployed");
    assert_eq!(posted["event"]["data"]["version"], "2.0");
    let ran = wait_until(Duration::from_secs(10), "the run action's output", || {
        std::fs::read_to_string("/tmp/tend-e2e-run-web1").ok()
    });
    assert!(ran.starts_with("deployed 2.0 on "), "{ran}");
    let kinds: Vec<String> = wait_until(Duration::from_secs(10), "both jobs recorded", || {
        let js = jobs(&s, "deployed");
        (js.len() == 2 && js.iter().all(|j| j["status"] == "ok")).then(|| {
            js.iter()
                .map(|j| j["kind"].as_str().unwrap().to_string())
                .collect()
        })
    });
    assert!(
        kinds.contains(&"run".to_string()) && kinds.contains(&"webhook".to_string()),
        "{kinds:?}"
    );
    let _ = std::fs::remove_file("/tmp/tend-e2e-run-web1");

    // `tend run` from the command line.
    let out = s
        .master
        .tend(&["run", "web1", "--", "echo", "hello from", "web1"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from web1"));
    let out = s.master.tend(&["run", "web1", "--", "exit 3"]);
    assert!(!out.status.success(), "a failed command is a failed run");
    drop(s.tmp);
}

#[test]
fn rules_reload_and_a_bad_file_keeps_the_old_ones() {
    let s = setup(
        "[[rule]]\nname = \"one\"\non = \"minion/*/event/x\"\n[[rule.action]]\nfire = \"fired/one\"\n",
        "",
    );
    assert_eq!(s.master.counters()["rules"], 1);
    // A bad file: refused with file, rule and key; the old rule stays.
    s.master.rule_file(
        "bad.toml",
        "[[rule]]\nname = \"broken\"\non = \"x\"\nwhen = \"1 +\"\n[[rule.action]]\nfire = \"y\"\n",
    );
    let out = s.master.tend(&["reactor", "reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("broken") && err.contains("when"),
        "{err}"
    );
    send(&s, "x", "{}");
    wait_until(Duration::from_secs(10), "the old rule still acting", || {
        (!s.master.events(&["--tag", "fired/one"]).is_empty()).then_some(())
    });
    // Fixed, and a second rule added: reloaded by SIGHUP.
    s.master.rule_file("bad.toml", "[[rule]]\nname = \"two\"\non = \"minion/*/event/x\"\n[[rule.action]]\nfire = \"fired/two\"\n");
    let mut master = s.master;
    let pid = master.daemon().child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(10), "two rules after SIGHUP", || {
        (master.counters()["rules"] == 2).then_some(())
    });
    let out = master.tend(&["reactor", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 rule(s)"));
}

#[test]
fn reactor_test_explains_a_rule_offline() {
    let dir = tempfile::tempdir().unwrap();
    let rule = dir.path().join("r.toml");
    std::fs::write(
        &rule,
        "[[rule]]\nname = \"brute\"\non = \"minion/*/beacon/login/*\"\nwhen = 'event.data.kind == \"failed\"'\ncount = 5\nwindow = \"1m\"\n[[rule.action]]\napply = [\"lockdown\"]\n",
    )
    .unwrap();
    let event = dir.path().join("e.json");
    std::fs::write(
        &event,
        r#"{"minion": "web1", "tag": "minion/web1/beacon/login/failed", "data": {"kind": "failed"}}"#,
    )
    .unwrap();
    let out = Command::new(bin("tend"))
        .args(["reactor", "test"])
        .arg(&rule)
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
        text.contains("\"brute\"")
            && text.contains("is true")
            && text.contains("5 such events")
            && text.contains("apply lockdown"),
        "{text}"
    );
    std::fs::write(&event, r#"{"tag": "minion/web1/beacon/cpu/high"}"#).unwrap();
    let out = Command::new(bin("tend"))
        .args(["reactor", "test"])
        .arg(&rule)
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no rule"));
}
