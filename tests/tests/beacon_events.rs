//! docs/reference.md says what every beacon's events are, and it is true.
//!
//! One minion runs one beacon of every type; the test makes each fire for
//! real (a file written, a process started, a socket bound, a utmp record
//! appended, a command run, /proc read as it is). Then:
//!
//! - a rule written from the beacon's section (its tag with a kind the
//!   section lists, a condition on fields the section lists) fires on that
//!   beacon's real event: the issue-15 rule `when = 'event.data.kind ==
//!   "disappeared"'` was written from nothing and never fired;
//! - every event the beacons sent is tagged `minion/<id>/beacon/<name>/<kind>`
//!   with a kind its section lists, and carries no data field the section
//!   does not list (as reference.rs does for config keys).
//!
//! The beacon types come from the minion (an unknown type's refusal lists
//! them), so a new type without a case here fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tend_e2e::{Master, Minion, run_daemon, wait_until};

/// The text of the section whose heading is exactly `heading`, up to the
/// next heading of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/reference.md has no section {heading:?}"));
    let body = &doc[start + heading.len() + 2..];
    let end = body
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = body[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level
        })
        .map_or(body.len(), |(i, _)| i);
    &body[..end]
}

/// What a section documents about events: its data fields, and the kinds
/// its `event.data.kind` row names.
struct Documented<'a> {
    text: &'a str,
}

impl Documented<'_> {
    fn field(&self, field: &str) -> bool {
        self.text.contains(&format!("\n| `event.data.{field}` |"))
    }

    fn kind(&self, kind: &str) -> bool {
        self.text
            .lines()
            .find(|l| l.starts_with("| `event.data.kind` |"))
            .is_some_and(|row| row.contains(&format!("`{kind}`")))
    }
}

/// The beacon types the minion knows, from its refusal of an unknown one.
fn beacon_types(dir: &Path) -> Vec<String> {
    let config = dir.join("types.toml");
    std::fs::write(
        &config,
        "[[beacon]]\nname = \"b\"\ntype = \"no-such-type\"\n",
    )
    .unwrap();
    let (_, err) = run_daemon("tend-minion", &config, &["--check-config"]);
    let start = err
        .find("(known: ")
        .unwrap_or_else(|| panic!("no list of types in:\n{err}"));
    let rest = &err[start + "(known: ".len()..];
    rest[..rest.find(')').expect("end of the list")]
        .split(", ")
        .map(str::to_string)
        .collect()
}

/// One beacon of a type, the kind the test makes it send, and a condition
/// over its documented fields.
struct Case {
    config: String,
    kind: &'static str,
    when: String,
}

/// The `event.data.<field>` names a condition uses.
fn fields_in(when: &str) -> Vec<String> {
    when.match_indices("event.data.")
        .map(|(i, m)| {
            when[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// A utmp record as login(1) writes it (384 bytes, native byte order).
fn utmp_login(user: &str, time: i32) -> Vec<u8> {
    let mut b = vec![0u8; 384];
    b[0..2].copy_from_slice(&7i16.to_ne_bytes()); // USER_PROCESS
    b[4..8].copy_from_slice(&4242i32.to_ne_bytes());
    b[8..13].copy_from_slice(b"pts/9");
    b[44..44 + user.len()].copy_from_slice(user.as_bytes());
    b[76..87].copy_from_slice(b"192.0.2.10\0");
    b[340..344].copy_from_slice(&time.to_ne_bytes());
    b[348..352].copy_from_slice(&[192, 0, 2, 10]);
    b
}

#[test]
fn every_beacon_sends_what_the_reference_says_and_a_rule_from_it_fires() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md"))
            .expect("docs/reference.md");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let watched = dir.join("watched.conf");
    std::fs::write(&watched, "one\n").unwrap();
    let (wtmp, btmp) = (dir.join("wtmp"), dir.join("btmp"));
    std::fs::write(&wtmp, "").unwrap();
    std::fs::write(&btmp, "").unwrap();
    // A copy of sleep under a name no other process has.
    let proc_name = format!("tendev{}", std::process::id() % 1_000_000);
    let exe = dir.join(&proc_name);
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let port = tend_e2e::free_port();
    let systemd = Path::new("/run/systemd/system").is_dir();

    let mut cases: BTreeMap<&str, Case> = BTreeMap::new();
    let mut case = |t: &'static str, config: String, kind: &'static str, when: String| {
        cases.insert(t, Case { config, kind, when });
    };
    case(
        "file",
        format!("paths = [{watched:?}]\n"),
        "modified",
        format!("event.data.path == {:?}", watched.display().to_string()),
    );
    case(
        "cpu",
        "above = 0\ninterval = \"100ms\"\n".into(),
        "high",
        "event.data.percent >= 0.0 && event.data.above == 0.0".into(),
    );
    case(
        "load",
        "1m = [0.0, 100000.0]\ninterval = \"100ms\"\n".into(),
        "normal",
        "event.data.averages[\"1m\"] == \"normal\" && event.data.state == \"normal\"".into(),
    );
    case(
        "memory",
        "above = 0.1\nbelow = 0\ninterval = \"100ms\"\n".into(),
        "high",
        "event.data.total_kib > 0 && event.data.percent > 0.0".into(),
    );
    case(
        "swap",
        "above = 100\ninterval = \"100ms\"\n".into(),
        "normal",
        "event.data.percent < 100.0".into(),
    );
    case(
        "disk",
        "mounts = [\"/\"]\nabove = 100\ninterval = \"100ms\"\n".into(),
        "normal",
        "event.data.mount == \"/\" && event.data.total_bytes > 0".into(),
    );
    case(
        "network",
        "interfaces = [\"lo\"]\nemit_at_startup = true\ninterval = \"100ms\"\n".into(),
        "up",
        "event.data.interface == \"lo\" && event.data.up".into(),
    );
    case(
        "process",
        format!("names = [{proc_name:?}]\ninterval = \"100ms\"\n"),
        "running",
        format!("event.data.name == {proc_name:?} && size(event.data.pids) == 1"),
    );
    case(
        "service",
        "units = [\"tend-e2e-none.service\"]\nemit_at_startup = true\ninterval = \"100ms\"\n"
            .into(),
        "inactive",
        "event.data.unit == \"tend-e2e-none.service\"".into(),
    );
    case(
        "connection",
        "interval = \"100ms\"\n".into(),
        "listening",
        format!("event.data.local_port == {port} && event.data.local_address == \"127.0.0.1\""),
    );
    case(
        "login",
        format!("wtmp = {wtmp:?}\nbtmp = {btmp:?}\ninterval = \"100ms\"\n"),
        "login",
        "event.data.user == \"docreader\" && event.data.address == \"192.0.2.10\"".into(),
    );
    case(
        "command",
        "command = \"echo docs\"\ninterval = \"1s\"\ntimeout = \"1s\"\n".into(),
        "ok",
        "event.data.status == 0 && event.data.output == \"docs\"".into(),
    );
    case(
        "heartbeat",
        "interval = \"100ms\"\n".into(),
        "beat",
        "event.data.count >= 1".into(),
    );

    // Every type has a case, and each case is written from its section.
    let types = beacon_types(dir);
    let no_case: Vec<_> = types
        .iter()
        .filter(|t| !cases.contains_key(t.as_str()))
        .collect();
    assert!(
        no_case.is_empty(),
        "beacon types with no case in this test: {no_case:?}"
    );
    let every = Documented {
        text: section(&doc, "### Every beacon"),
    };
    let mut undocumented = Vec::new();
    for (t, c) in &cases {
        let d = Documented {
            text: section(&doc, &format!("### beacon: {t}")),
        };
        if !d.kind(c.kind) {
            undocumented.push(format!("beacon {t}: the kind `{}`", c.kind));
        }
        for f in fields_in(&c.when) {
            if !d.field(&f) {
                undocumented.push(format!("beacon {t}: the field `{f}` (in the rule)"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "the rules below are not written from docs/reference.md:\n{}",
        undocumented.join("\n")
    );

    // The rules, as an operator would write them from the reference.
    let mut master = Master::new(&dir.join("master"), "");
    let mut rules = String::new();
    let mut beacons = String::new();
    for (t, c) in &cases {
        rules.push_str(&format!(
            "[[rule]]\nname = \"doc-{t}\"\non = \"minion/*/beacon/{t}/{}\"\nwhen = '{}'\n\
             [[rule.action]]\nfire = \"fired/{t}\"\n\n",
            c.kind, c.when
        ));
        beacons.push_str(&format!(
            "[[beacon]]\nname = \"{t}\"\ntype = \"{t}\"\n{}\n",
            c.config
        ));
    }
    master.rule_file("doc.toml", &rules);
    master.start();
    let mut minion = Minion::new(&dir.join("minion"), "web1", &master, &beacons);
    minion.start();
    master.wait_connected("web1");

    // Make them happen, again until seen: a beacon may still be taking
    // its baseline when the first write or socket comes.
    let mut child = std::process::Command::new(&exe).arg("120").spawn().unwrap();
    let mut listener: Option<std::net::TcpListener> = None;
    let mut round = 0u32;
    let expected: BTreeSet<&str> = cases
        .keys()
        .copied()
        .filter(|t| *t != "service" || systemd)
        .collect();
    let fired = wait_until(
        Duration::from_secs(60),
        "a rule from the reference to fire for every beacon",
        || {
            round += 1;
            std::fs::write(&watched, format!("edit {round}\n")).unwrap();
            std::fs::OpenOptions::new()
                .append(true)
                .open(&wtmp)
                .unwrap()
                .write_all(&utmp_login("docreader", 1_750_000_000))
                .unwrap();
            // A listener closed and bound again is a new one.
            if round.is_multiple_of(20) {
                listener = None;
            } else if listener.is_none() {
                listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
            }
            let fired: BTreeSet<String> = master
                .events(&["--tag", "fired/*"])
                .iter()
                .filter_map(|e| e["tag"].as_str()?.strip_prefix("fired/").map(String::from))
                .collect();
            expected.iter().all(|t| fired.contains(*t)).then_some(fired)
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    println!("rules from the reference fired for: {fired:?}");
    if !systemd {
        println!(
            "skipped: service: systemd is not running here (no /run/systemd/system), \
             so there is no unit state to report"
        );
    }

    // Every event the beacons sent: the tag's shape, a documented kind,
    // documented fields only.
    let events = master.events(&["--tag", "minion/web1/beacon/*"]);
    let mut wrong = BTreeSet::new();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in &events {
        let tag = e["tag"].as_str().unwrap_or("");
        let parts: Vec<&str> = tag.split('/').collect();
        let [_, _, _, name, kind] = parts[..] else {
            wrong.insert(format!("{tag}: not minion/<id>/beacon/<name>/<kind>"));
            continue;
        };
        let data = e["data"].as_object().cloned().unwrap_or_default();
        if data.get("kind") != Some(&Value::from(kind)) {
            wrong.insert(format!("{tag}: data.kind is not the tag's kind: {e}"));
        }
        let d = if matches!(kind, "error" | "dropped") {
            Documented { text: every.text }
        } else {
            Documented {
                text: section(&doc, &format!("### beacon: {name}")),
            }
        };
        if !d.kind(kind) {
            wrong.insert(format!("beacon {name}: kind `{kind}` is not documented"));
        }
        for field in data.keys() {
            if !d.field(field) {
                wrong.insert(format!(
                    "beacon {name}, kind {kind}: field `{field}` is not documented"
                ));
            }
        }
        if seen
            .entry(name.to_string())
            .or_default()
            .insert(kind.to_string())
        {
            println!("{tag}: {}", e["data"]);
        }
    }
    assert!(
        wrong.is_empty(),
        "beacon events docs/reference.md does not describe:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}
