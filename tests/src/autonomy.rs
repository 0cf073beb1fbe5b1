//! What the standing-orders tests (issue 17) share: a master and minion
//! web1 watching managed files, and waiting on the minion's orders and
//! its log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Master, Minion, wait_until};

/// The content every managed file here is put back to.
pub const MANAGED: &str = "This file is managed by tend.\n";
/// What the minion logs when it starts enforcing its orders.
pub const ENFORCING: &str = "enforcing the standing orders here";

pub fn is_managed(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|c| c == MANAGED)
}

/// A state `name` managing `file` (content [`MANAGED`]).
pub fn managed_state(master: &Master, name: &str, file: &Path) {
    master.state_file(&format!("files/{name}"), MANAGED);
    master.state_file(
        &format!("{name}.toml"),
        &format!(
            "[{name}]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/{name}\"\nmode = \"0644\"\n",
            file.display()
        ),
    );
}

/// A rule called `rule` applying state `state` when beacon `beacon` sees a
/// change; `extra` is more of the rule's keys.
pub fn rule(rule: &str, beacon: &str, state: &str, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{rule}\"\non = \"minion/*/beacon/{beacon}/*\"\n{extra}\n[[rule.action]]\napply = [\"{state}\"]\n"
    )
}

/// `restore-<name>`: state `name` applied when beacon `name` sees a change.
pub fn restore_rule(name: &str, extra: &str) -> String {
    rule(&format!("restore-{name}"), name, name, extra)
}

pub fn file_beacon(name: &str, file: &Path) -> String {
    format!(
        "[[beacon]]\nname = \"{name}\"\ntype = \"file\"\npaths = [{:?}]\n",
        file.display()
    )
}

/// The orders version web1 took, once it took the orders the master
/// compiles now and they hold `rules` standing rules.
pub fn wait_for_orders(master: &Master, rules: usize) -> u64 {
    wait_until(
        Duration::from_secs(20),
        "the minion to take its standing orders",
        || {
            let v = master.tend_json(&["minion", "show", "web1"]);
            let m = v.first()?.clone();
            let taken = m["orders"]["version"].as_u64()?;
            let now = m["orders"]["now"]["version"].as_u64()?;
            (taken != 0 && taken == now && m["orders"]["now"]["rules"].as_array()?.len() == rules)
                .then_some(taken)
        },
    )
}

/// Waits until the minion's log has said `text` `n` times.
pub fn wait_log(minion: &mut Minion, text: &str, n: usize, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        (minion.daemon().log_text().matches(text).count() >= n).then_some(())
    });
}

/// Waits up to `within` for `file` to be managed again; whether it was.
pub fn restored_within(file: &Path, within: Duration) -> bool {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if is_managed(file) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    is_managed(file)
}

/// A master, and web1 watching two managed files (`motd`, `issue`).
pub struct Two {
    pub _tmp: tempfile::TempDir,
    pub master: Master,
    pub minion: Minion,
    pub motd: PathBuf,
    pub issue: PathBuf,
}

/// [`Two`] with the rules in `rules` (file name, text), web1 enforcing
/// after `after_ms` cut off, once it took orders with `standing` rules;
/// both files applied once.
pub fn two_files(rules: &[(&str, String)], standing: usize, after_ms: u64) -> Two {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let (motd, issue) = (dir.join("motd"), dir.join("issue"));
    let mut master = Master::new(&tmp.path().join("master"), "");
    managed_state(&master, "motd", &motd);
    managed_state(&master, "issue", &issue);
    for (file, text) in rules {
        master.rule_file(file, text);
    }
    master.start();
    let mut minion = Minion::new(
        &tmp.path().join("minion"),
        "web1",
        &master,
        &format!(
            "autonomy_after_ms = {after_ms}\n{}{}",
            file_beacon("motd", &motd),
            file_beacon("issue", &issue)
        ),
    );
    minion.start();
    master.wait_connected("web1");
    wait_for_orders(&master, standing);
    for s in ["motd", "issue"] {
        let out = master.tend(&["apply", "web1", s]);
        assert!(out.status.success(), "apply {s}: {out:?}");
    }
    assert!(is_managed(&motd) && is_managed(&issue));
    Two {
        _tmp: tmp,
        master,
        minion,
        motd,
        issue,
    }
}
