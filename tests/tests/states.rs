//! States through the whole system: the top file and targets by facts,
//! templates with facts and the triggering event, and bad state files
//! refused on the master before anything is sent.

use std::time::Duration;

use tend_e2e::{Master, Minion, wait_until};

struct Fleet {
    _tmp: tempfile::TempDir,
    master: Master,
    _minions: Vec<Minion>,
    root: std::path::PathBuf,
}

/// A master and two minions: web1 (label role=web) and db1 (role=db).
fn fleet(states: &[(&str, &str)]) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("files");
    std::fs::create_dir_all(&root).unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    for (name, text) in states {
        master.state_file(name, &text.replace("ROOT", &root.display().to_string()));
    }
    master.start();
    let mut minions = Vec::new();
    for (id, role) in [("web1", "web"), ("db1", "db")] {
        let mut m = Minion::new(
            &tmp.path().join(id),
            id,
            &master,
            &format!("[labels]\nrole = {role:?}\n"),
        );
        m.start();
        master.wait_connected(id);
        minions.push(m);
    }
    Fleet {
        _tmp: tmp,
        master,
        _minions: minions,
        root,
    }
}

fn read(p: std::path::PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_top_file_gives_each_minion_its_states_by_facts() {
    let f = fleet(&[
        (
            "top.toml",
            "[[target]]\nmatch = \"*\"\nstates = [\"base\"]\n\n\
             [[target]]\nmatch = \"label.role:web\"\nstates = [\"web\"]\n",
        ),
        (
            "base.toml",
            "[motd]\ntype = \"file.managed\"\npath = \"ROOT/{{ minion }}.motd\"\ncontents = \"managed\\n\"\n",
        ),
        (
            "web.toml",
            "[site]\ntype = \"file.managed\"\npath = \"ROOT/site.conf\"\ntemplate = true\n\
             contents = \"server {{ facts.hostname }} role={{ facts['label.role'] }} id={{ minion }}\\n\"\n",
        ),
    ]);
    // The state file's path is not a template: one file per fleet here.
    let fix = f.root.join("{{ minion }}.motd");
    let job = &f.master.tend_json(&["apply", "*"])[0];
    assert_eq!(job["status"], "changed", "{job}");
    let by_minion = |id: &str| {
        job["minions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["minion"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_minion("web1")["states"].as_array().unwrap().len(), 2);
    assert_eq!(
        by_minion("db1")["states"].as_array().unwrap().len(),
        1,
        "db1 gets base only"
    );
    assert_eq!(read(fix), "managed\n");
    let site = read(f.root.join("site.conf"));
    assert!(
        site.starts_with("server ") && site.contains("role=web id=web1"),
        "{site}"
    );

    // Targets by fact, combined.
    let job = &f
        .master
        .tend_json(&["apply", "label.role:db or web7*", "base", "--test"])[0];
    let targeted: Vec<&str> = job["minions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["minion"].as_str().unwrap())
        .collect();
    assert_eq!(targeted, vec!["db1"]);
    let out = f.master.tend(&["apply", "label.role:nobody", "base"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no minion matches"));
    // An id named outright that no minion has is refused, not dropped.
    let out = f.master.tend(&["apply", "label.role:db or web9", "base"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("knows no minion web9"));
}

#[test]
fn templates_see_the_event_that_triggered_the_run() {
    let f = fleet(&[(
        "deployed.toml",
        "[version]\ntype = \"file.managed\"\npath = \"ROOT/VERSION\"\ntemplate = true\n\
         contents = \"{{ event.data.version }} on {{ minion }} ({{ event.tag }})\\n\"\n",
    )]);
    f.master.rule_file(
        "deploy.toml",
        "[[rule]]\nname = \"record-deploys\"\non = \"minion/*/event/deploy\"\n[[rule.action]]\napply = [\"deployed\"]\n",
    );
    // Rules are read at start: restart the master to pick this one up.
    let mut master = f.master;
    master.daemon().stop();
    master.start();
    master.wait_connected("web1");
    let minion = Minion::new(&f._tmp.path().join("web1"), "web1", &master, "");
    let out = std::process::Command::new(tend_e2e::bin("tend-minion"))
        .arg("--config")
        .arg(minion.dir.join("minion.toml"))
        .args(["send", "deploy", r#"{"version": "1.4.2"}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = f.root.join("VERSION");
    let text = wait_until(Duration::from_secs(10), "the templated file", || {
        std::fs::read_to_string(&path).ok()
    });
    assert_eq!(text, "1.4.2 on web1 (minion/web1/event/deploy)\n");
}

#[test]
fn bad_state_files_are_refused_on_the_master_before_anything_is_sent() {
    let f = fleet(&[
        (
            "typo.toml",
            "[x]\ntype = \"file.managed\"\npath = \"ROOT/x\"\ncontnts = \"y\"\n",
        ),
        (
            "kind.toml",
            "[x]\ntype = \"file.magic\"\npath = \"ROOT/x\"\n",
        ),
        (
            "mode.toml",
            "[x]\ntype = \"file.managed\"\npath = \"ROOT/x\"\ncontents = \"y\"\nmode = \"0999\"\n",
        ),
        ("missing.toml", "[x]\ntype = \"cmd.run\"\n"),
        (
            "req.toml",
            "[x]\ntype = \"cmd.run\"\ncommand = \"touch ROOT/x\"\nrequire = \"nowhere\"\n",
        ),
        (
            "cycle.toml",
            "[a]\ntype = \"cmd.run\"\ncommand = \"touch ROOT/x\"\nrequire = \"b\"\n[b]\ntype = \"cmd.run\"\ncommand = \"true\"\nrequire = \"a\"\n",
        ),
        // Attack 9: a template may not read files or run anything.
        (
            "include.toml",
            "[x]\ntype = \"file.managed\"\npath = \"ROOT/x\"\ntemplate = true\ncontents = \"{% include '/etc/passwd' %}\"\n",
        ),
    ]);
    for (name, expect) in [
        ("typo", "contnts"),
        ("kind", "file.magic"),
        ("mode", "mode"),
        ("missing", "command"),
        ("req", "`require`: no state \"nowhere\""),
        // Not just "cycle": the file's name has that word.
        ("cycle", "requisites form a cycle: a -> b -> a"),
        ("include", "template"),
    ] {
        let out = f.master.tend(&["apply", "web1", name, "--json"]);
        assert!(!out.status.success(), "{name} must fail");
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let error = job["minions"][0]["error"].as_str().unwrap();
        assert!(
            error.contains("nothing sent") && error.contains(&format!("{name}.toml")),
            "{name}: {error}"
        );
        assert!(
            error.contains(expect),
            "{name}: expected {expect:?} in {error}"
        );
        if name != "kind" && name != "missing" && name != "cycle" {
            assert!(
                error.contains("\"x\""),
                "{name}: the state id is named: {error}"
            );
        }
    }
    assert!(!f.root.join("x").exists(), "nothing ran on the minion");
}
