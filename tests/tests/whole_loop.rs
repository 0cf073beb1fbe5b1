//! The whole loop: a managed file edited by hand on a minion is put back by
//! the master, however it was edited, and `tend events` shows the edit and
//! the job that restored it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, data_str, wait_until};

const MANAGED: &str = "Welcome to web1.\nThis file is managed by tend.\n";

struct Setup {
    _tmp: tempfile::TempDir,
    master: Master,
    minion: Minion,
    file: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let managed_dir = tmp.path().join("etc");
    std::fs::create_dir_all(&managed_dir).unwrap();
    let file = managed_dir.join("motd");

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
        "[[rule]]\nname = \"restore-motd\"\non = \"minion/*/beacon/motd/*\"\n[[rule.action]]\napply = [\"motd\"]\n",
    );
    master.start();

    let mut minion = Minion::new(
        &tmp.path().join("minion"),
        "web1",
        &master,
        &format!(
            "[[beacon]]\nname = \"motd\"\ntype = \"file\"\npaths = [{:?}]\n",
            file.display()
        ),
    );
    minion.start();
    master.wait_connected("web1");
    Setup {
        _tmp: tmp,
        master,
        minion,
        file,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

fn is_managed(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|c| c == MANAGED) && mode(p) == 0o644
}

/// Applies once by hand so the file starts out managed, and checks that a
/// second apply changes nothing.
fn first_apply(s: &Setup) {
    let out = s.master.tend(&["apply", "web1", "motd"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "first apply failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("changed") && text.contains("+Welcome to web1."),
        "{text}"
    );
    assert!(is_managed(&s.file));

    let again = s.master.tend_json(&["apply", "web1", "motd"]);
    assert_eq!(
        again[0]["status"], "ok",
        "a second apply must change nothing: {}",
        again[0]
    );
    assert_eq!(again[0]["minions"][0]["states"][0]["result"], "ok");
    assert_eq!(again[0]["minions"][0]["states"][0]["diff"], "");
}

/// After an edit: waits for the file to be managed again, then checks the
/// events tell the story: the beacon saw the edit (no cause), a job was
/// triggered by that event, and the job's own write came back marked with
/// the job as its cause.
fn assert_restored(s: &Setup, how: &str, after_id: u64) {
    wait_until(
        Duration::from_secs(10),
        &format!("{how}: the file to be restored"),
        || is_managed(&s.file).then_some(()),
    );
    let path = s.file.display().to_string();
    wait_until(
        Duration::from_secs(10),
        &format!("{how}: events showing the edit and the restore"),
        || {
            let events: Vec<Value> = s
                .master
                .events(&["--minion", "web1"])
                .into_iter()
                .filter(|e| e["id"].as_u64().unwrap_or(0) > after_id)
                .collect();
            let beacon = |e: &&Value| {
                e["tag"].as_str().unwrap_or("").contains("/beacon/motd/")
                    && data_str(e, "path") == path
            };
            let edits: Vec<&Value> = events
                .iter()
                .filter(beacon)
                .filter(|e| e["cause"].is_null())
                .collect();
            let jobs: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    e["tag"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("minion/web1/job/")
                })
                .filter(|e| e["data"]["rule"] == "restore-motd" && e["data"]["status"] == "changed")
                .filter(|j| edits.iter().any(|e| e["seq"] == j["data"]["trigger_seq"]))
                .collect();
            let restored = jobs.iter().any(|j| {
                events
                    .iter()
                    .filter(beacon)
                    .any(|e| e["cause"] == j["data"]["job"])
            });
            (!edits.is_empty() && !jobs.is_empty() && restored).then_some(())
        },
    );
}

fn last_event_id(s: &Setup) -> u64 {
    s.master
        .events(&["--limit", "1"])
        .first()
        .and_then(|e| e["id"].as_u64())
        .unwrap_or(0)
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "{cmd} failed");
}

#[test]
fn a_hand_edit_is_put_back_however_it_was_made() {
    let mut s = setup();
    first_apply(&s);
    let f = s.file.display().to_string();
    let dir = s.file.parent().unwrap().display().to_string();

    let edits: Vec<(&str, String)> = vec![
        ("a plain write", format!("echo 'hand edit' > {f}")),
        (
            "an editor-style save (temp file renamed over it)",
            format!("printf 'vim save\\n' > {dir}/.motd.swp && mv {dir}/.motd.swp {f}"),
        ),
        ("sed -i", format!("sed -i 's/Welcome/Go away/' {f}")),
        (
            "cp over it",
            format!("printf 'copied\\n' > {dir}/other && cp {dir}/other {f}"),
        ),
        ("truncate", format!("truncate -s 0 {f}")),
        ("chmod", format!("chmod 600 {f}")),
        ("delete", format!("rm {f}")),
        (
            "delete and recreate",
            format!("rm {f} && printf 'new file\\n' > {f}"),
        ),
    ];
    for (how, cmd) in &edits {
        let before = last_event_id(&s);
        sh(cmd);
        assert_restored(&s, how, before);
    }

    // A restore never triggers itself: every job a rule started was
    // triggered by an event nobody's job caused.
    let events = s.master.events(&[]);
    for job in events
        .iter()
        .filter(|e| e["tag"].as_str().unwrap_or("").contains("/job/"))
    {
        if job["data"]["rule"].is_null() || job["data"]["rule"] == "" {
            continue;
        }
        let seq = &job["data"]["trigger_seq"];
        let trigger = events
            .iter()
            .find(|e| &e["seq"] == seq && e["minion"] == "web1")
            .unwrap_or_else(|| panic!("job {} has no trigger event {seq}", job["data"]["job"]));
        assert!(
            trigger["cause"].is_null(),
            "job {} was triggered by its own kind: {trigger}",
            job["data"]["job"]
        );
    }

    // `tend jobs` lists them; the minion and master stop cleanly.
    let jobs = s.master.tend_json(&["jobs"]);
    assert!(
        jobs.len() > edits.len(),
        "expected a job per edit, got {}",
        jobs.len()
    );
    assert!(
        s.minion.daemon().stop().success(),
        "the minion did not exit cleanly"
    );
    assert!(
        s.master.daemon().stop().success(),
        "the master did not exit cleanly"
    );
}

#[test]
fn a_dry_run_shows_the_diff_and_changes_nothing() {
    let s = setup();
    first_apply(&s);
    // In the desired state, a dry run has nothing to do.
    let out = s.master.tend(&["apply", "web1", "motd", "--test"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok"), "{text}");

    // Change the desired contents on the master: a dry run shows the diff
    // and leaves the file alone.
    s.master.state_file("files/motd", "Welcome, new text.\n");
    let job = &s.master.tend_json(&["apply", "web1", "motd", "--test"])[0];
    assert_eq!(job["status"], "would-change", "{job}");
    let diff = job["minions"][0]["states"][0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("-Welcome to web1.") && diff.contains("+Welcome, new text."),
        "{diff}"
    );
    assert!(is_managed(&s.file), "a dry run must change nothing");
}

#[test]
fn the_cli_lists_minions_and_filters_events() {
    let s = setup();
    first_apply(&s);
    let minions = s.master.tend_json(&["minions"]);
    assert_eq!(minions[0]["id"], "web1");
    assert_eq!(minions[0]["connected"], true);
    assert!(minions[0]["facts"]["kernel"].is_string());

    std::fs::write(&s.file, "x\n").unwrap();
    wait_until(Duration::from_secs(10), "a beacon event", || {
        (!s.master
            .events(&["--tag", "minion/web1/beacon/*"])
            .is_empty())
        .then_some(())
    });
    let beacon = s.master.events(&["--tag", "minion/web1/beacon/*"]);
    assert!(beacon.iter().all(|e| {
        e["tag"]
            .as_str()
            .unwrap()
            .starts_with("minion/web1/beacon/")
    }));
    let one = s.master.events(&["--limit", "1"]);
    assert_eq!(one.len(), 1);
    let all = s.master.events(&[]);
    assert!(
        all.windows(2)
            .all(|w| w[0]["id"].as_u64() > w[1]["id"].as_u64()),
        "newest first"
    );
    assert!(s.master.events(&["--minion", "nobody"]).is_empty());
    assert!(s.master.events(&["--since", "1h"]).len() == all.len());
    let future = s.master.events(&["--since", "2999-01-01T00:00:00Z"]);
    assert!(future.is_empty());

    // Table output for people.
    let out = s.master.tend(&["events", "--limit", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("STORED") && text.contains("web1"),
        "{text}"
    );
    let out = s.master.tend(&["minions"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web1"));
}
