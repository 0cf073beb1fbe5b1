//! What the daemons' logs look like where they end up: plain text (no
//! colour escapes) in a file, priority-prefixed lines without a timestamp
//! under journald, and a fatal error said once (issue 15, item 9).

use std::process::{Command, Stdio};
use std::time::Duration;

use tend_e2e::{Master, Minion, bin, run_daemon, wait_until};

const ESC: char = '\u{1b}';

#[test]
fn logs_written_to_a_file_carry_no_colour_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::new(&dir.path().join("m"), "");
    master.start();
    let mut minion = Minion::new(&dir.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    minion.daemon().stop();
    master.daemon().stop();
    for (who, log) in [
        ("master", master.daemon().log_text()),
        ("minion", minion.daemon().log_text()),
    ] {
        assert!(log.contains("INFO"), "the {who} logged nothing:\n{log}");
        assert!(
            !log.contains(ESC),
            "the {who}'s log in a file has escape codes:\n{log:?}"
        );
    }
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let master = Master::new(&dir.path().join("m"), "");
    let log_path = dir.path().join("journal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut child = Command::new(bin("tend-master"))
        .arg("--config")
        .arg(master.config())
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(20), "the master's ready line", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("tend-master ready"))
            .map(str::to_string)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready.starts_with("<6> INFO") || ready.starts_with("<6>INFO"),
        "a journald line starts with its priority and level, no time: {ready:?}"
    );
    assert!(!ready.contains(ESC), "{ready:?}");
}

/// Counts the lines of `text` that contain `what`.
fn lines_with(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_fatal_config_error_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    // The master: a rule file it cannot load stops it (not --check-config:
    // the start itself).
    let master = Master::new(&dir.path().join("m"), "");
    master.rule_file(
        "broken.toml",
        "[[rule]]\nname = \"oops\"\non = \"x\"\nwhen = \"event.data.kind ==\"\n[[rule.action]]\napply = [\"s\"]\n",
    );
    let (code, err) = run_daemon("tend-master", &master.config(), &[]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(lines_with(&err, "broken.toml"), 1, "said once:\n{err}");
    assert!(!err.contains(ESC), "{err:?}");

    // The minion: a beacon it cannot build stops it.
    let m = Minion::new(
        &dir.path().join("web1"),
        "web1",
        &master,
        "[[beacon]]\nname = \"disk\"\ntype = \"disk\"\nbogus_key = 1\n",
    );
    let (code, err) = run_daemon("tend-minion", &m.dir.join("minion.toml"), &[]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(lines_with(&err, "bogus_key"), 1, "said once:\n{err}");
    assert!(!err.contains(ESC), "{err:?}");
}
