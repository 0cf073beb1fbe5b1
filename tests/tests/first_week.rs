//! An operator's first week, against a real master and minions: what
//! surprised a Salt user, each as the test that would have caught it.
//! Targets follow one rule for every command; every job says who ran it
//! and can be found by it; a failed command shows what it printed; Salt's
//! arguments get tend's words instead of a failed job; a socket the user
//! may not open says so and who may; key listings take a pattern; and the
//! wording of dry runs, top-file results, help and the licence.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use serde_json::Value;
use tend_e2e::{Master, Minion, bin, stderr, stdout};

struct Setup {
    tmp: tempfile::TempDir,
    master: Master,
    _minions: Vec<Minion>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"managed by tend\\n\"\n",
            tmp.path().join("motd").display()
        ),
    );
    master.state_file(
        "noisy.toml",
        "[noisy]\ntype = \"cmd.run\"\ncommand = \"echo out-line; echo err-line >&2; exit 4\"\n",
    );
    master.state_file(
        "top.toml",
        "[[target]]\nmatch = \"web1\"\nstates = [\"motd\"]\n",
    );
    master.start();
    let mut minions = Vec::new();
    for id in ["web1", "web2"] {
        let mut m = Minion::new(&tmp.path().join(id), id, &master, "");
        m.start();
        master.wait_connected(id);
        minions.push(m);
    }
    Setup {
        tmp,
        master,
        _minions: minions,
    }
}

/// Runs `tend ARGS`, which must be refused (exit 2) before any job exists;
/// its stderr.
fn refused_without_a_job(m: &Master, args: &[&str]) -> String {
    let before = m.expect_json(&["jobs"], 0).len();
    let o = m.tend(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "tend {args:?} is refused\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        m.expect_json(&["jobs"], 0).len(),
        before,
        "tend {args:?} made a job: {:?}",
        m.expect_json(&["jobs", "last"], 0)
    );
    stderr(&o)
}

#[test]
fn a_target_that_names_an_unknown_minion_is_an_error_for_every_command() {
    let s = setup();
    let m = &s.master;
    // An id named outright that no minion has: refused, and named.
    for args in [
        &["apply", "nohost", "motd"][..],
        &["run", "nohost", "--", "true"],
        &["ping", "nohost"],
        &["apply", "web1,nohost", "motd"],
        &["ping", "web1 or db1"],
        &["run", "web* and not db9", "--", "true"],
    ] {
        let e = refused_without_a_job(m, args);
        assert!(
            e.contains("knows no minion") && (e.contains("nohost") || e.contains("db")),
            "tend {args:?} names the unknown id: {e}"
        );
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
    // A target that matches none of the known minions: the same rule.
    for args in [
        &["apply", "db*", "motd"][..],
        &["run", "os:plan9", "--", "true"],
        &["ping", "not web*"],
    ] {
        let e = refused_without_a_job(m, args);
        assert!(e.contains("no minion matches"), "tend {args:?}: {e}");
    }
    // No "unreachable" job or event was made for any of them.
    let events = m.events(&["--tag", "minion/nohost/**"]);
    assert!(events.is_empty(), "{events:?}");
    // What matches known minions still goes out.
    assert!(
        m.expect(&["ping", "not web1"], 0)
            .contains("1 of 1 answered")
    );
}

/// `tend ARGS` over TCP as operator `name`, with its own key.
fn as_operator(s: &Setup, name: &str, args: &[&str]) -> Output {
    Command::new(bin("tend"))
        .arg("--master")
        .arg(&s.master.command_endpoint)
        .args(["--name", name])
        .args(args)
        .env("XDG_CONFIG_HOME", s.tmp.path().join(name))
        .env_remove("TEND_MASTER")
        .output()
        .unwrap()
}

/// This process's user name, as `id` says it.
fn me() -> String {
    let o = Command::new("id").arg("-un").output().unwrap();
    stdout(&o).trim().to_string()
}

#[test]
fn every_job_records_who_ran_it_and_jobs_filter_by_it() {
    let s = setup();
    let m = &s.master;
    // Local: the user the socket's peer credentials name.
    let local = &m.expect_json(&["apply", "web1", "motd"], 0)[0];
    assert_eq!(local["operator"], me(), "{local}");
    // Over TCP: the operator key's name.
    assert_eq!(as_operator(&s, "alice", &["status"]).status.code(), Some(2));
    m.expect(&["keys", "accept", "--operator", "alice"], 0);
    let o = as_operator(&s, "alice", &["--json", "run", "web2", "--", "exit 3"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let remote: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(remote["operator"], "alice", "{remote}");

    // The table says who; `jobs show` too.
    let table = m.expect(&["jobs"], 0);
    assert!(table.lines().next().unwrap().contains("BY"), "{table}");
    assert!(table.contains("alice") && table.contains(&me()), "{table}");
    let shown = m.expect(&["jobs", "show", &remote["id"].to_string()], 0);
    assert!(shown.contains("by:      alice"), "{shown}");
    // The events announcing a job's end say who ran it.
    let ended = tend_e2e::wait_until(
        std::time::Duration::from_secs(10),
        "the run's job event",
        || {
            m.events(&["--tag", &format!("minion/web2/job/{}/*", remote["id"])])
                .into_iter()
                .next()
        },
    );
    assert_eq!(ended["data"]["operator"], "alice", "{ended}");

    // Filters: operator, minion, status, time, and the last one.
    let ids = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["jobs"];
        all.extend_from_slice(args);
        m.expect_json(&all, 0)
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect()
    };
    let (l, r) = (
        local["id"].as_u64().unwrap(),
        remote["id"].as_u64().unwrap(),
    );
    assert_eq!(ids(&["--operator", "alice"]), vec![r]);
    assert_eq!(ids(&["--operator", &me()]), vec![l]);
    assert_eq!(ids(&["--minion", "web1"]), vec![l]);
    assert_eq!(ids(&["--status", "failed"]), vec![r]);
    assert_eq!(ids(&["--since", "10m"]), vec![r, l]);
    assert!(ids(&["--since", "2000-01-01T00:00:00Z", "--operator", "bob"]).is_empty());
    assert_eq!(ids(&["--rule", "restore"]), Vec::<u64>::new());
    let last = &m.expect_json(&["jobs", "last"], 0)[0];
    assert_eq!(last["id"], remote["id"], "{last}");
    let last_local = &m.expect_json(&["jobs", "last", "--operator", &me()], 0)[0];
    assert_eq!(last_local["id"], local["id"], "{last_local}");
    assert!(
        m.expect(&["jobs", "last"], 0)
            .starts_with(&format!("job {r}"))
    );
}

#[test]
fn a_failed_command_shows_its_stdout_and_stderr_in_the_table() {
    let s = setup();
    let m = &s.master;
    let table = m.expect(&["apply", "web1", "noisy"], 1);
    assert!(
        table.contains("exit status 4")
            && table.contains("stdout: out-line")
            && table.contains("stderr: err-line"),
        "{table}"
    );
    let id = m.expect_json(&["jobs", "last"], 0)[0]["id"].to_string();
    let shown = m.expect(&["jobs", "show", &id], 0);
    assert!(
        shown.contains("stdout: out-line") && shown.contains("stderr: err-line"),
        "{shown}"
    );
}

#[test]
fn salt_arguments_get_tends_words_before_any_job() {
    let s = setup();
    let m = &s.master;
    for (arg, says) in [
        ("test=True", "--test"),
        ("saltenv=base", "one state tree"),
        ("pillar={\"a\": 1}", "no pillar"),
        ("state.apply", "tend apply TARGET STATE"),
    ] {
        let e = refused_without_a_job(m, &["apply", "web1", "motd", arg]);
        assert!(
            e.contains(says) && e.contains("Salt") && e.contains("Nothing was sent"),
            "{arg}: {e}"
        );
    }
}

#[test]
fn a_socket_the_user_may_not_open_says_permission_denied_and_who_may() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if stdout(&uid).trim() != "0" {
        eprintln!("skipped: running tend as another user takes root");
        return;
    }
    let s = setup();
    // A copy of tend that user `nobody` may run, in directories it may
    // enter down to the master's own.
    let dir = s.tmp.path();
    let tend = dir.join("tend");
    std::fs::copy(bin("tend"), &tend).unwrap();
    for d in [dir, &dir.join("master")] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // The copy may still be open for writing in a child another test
    // thread forked meanwhile (ETXTBSY): try again, for a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let o = loop {
        match Command::new(&tend)
            .args(["--master", &s.master.control, "minions"])
            .uid(65534)
            .gid(65534)
            .output()
        {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            r => break r.unwrap(),
        }
    };
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("permission denied") && e.contains("lets in user root"),
        "says it is refused, and to whom it is not: {e}"
    );
    assert!(!e.contains("Is tend-master running"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn keys_list_takes_a_pattern_and_accept_explains_its_own() {
    let s = setup();
    let m = &s.master;
    let listed = m.expect_json(&["keys", "list", "web1"], 0);
    let names: Vec<&str> = listed[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1"], "{listed:?}");
    let table = m.expect(&["keys", "list", "web*"], 0);
    assert!(table.contains("web1") && table.contains("web2"), "{table}");
    let help = m.expect(&["keys", "accept", "--help"], 0);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("<PATTERN>") && l.contains("operator name")),
        "the pattern has its own help: {help}"
    );
    // A glob asks first, for reject and delete as for accept: without a
    // terminal and without --yes, nothing changes.
    for verb in ["reject", "delete"] {
        let o = Command::new(bin("tend"))
            .args(["--master", &m.control, "keys", verb, "web*"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("web1") && stderr(&o).contains("--yes"),
            "shows what it would {verb}: {}",
            stderr(&o)
        );
    }
    let keys = &m.expect_json(&["keys", "list", "web*"], 0)[0]["keys"];
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["state"] == "accepted"),
        "{keys}"
    );
    // With --yes, exactly what the glob matched.
    m.expect(&["keys", "reject", "web2*", "--yes"], 0);
    let keys = &m.expect_json(&["keys", "list"], 0)[0]["keys"];
    let state = |name: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["state"].clone())
    };
    assert_eq!(state("web1"), Some("accepted".into()), "{keys}");
    assert_eq!(state("web2"), Some("rejected".into()), "{keys}");
}

#[test]
fn wording_dry_runs_top_file_help_and_licence() {
    let s = setup();
    let m = &s.master;
    // A dry run says what would be done, in that order.
    let dry = m.expect(&["apply", "web1", "motd", "--test"], 0);
    assert!(dry.contains("file would be created"), "{dry}");
    m.expect(&["apply", "web1", "motd"], 0);
    std::fs::write(s.tmp.path().join("motd"), "drift\n").unwrap();
    let dry = m.expect(&["apply", "web1", "motd", "--test"], 0);
    assert!(dry.contains("contents would be updated"), "{dry}");

    // A minion the top file gives nothing: ok, said as a comment.
    let job = &m.expect_json(&["apply", "web2"], 0)[0];
    let web2 = &job["minions"][0];
    assert_eq!(web2["status"], "ok", "{job}");
    assert_eq!(web2["error"], "", "{job}");
    assert!(
        web2["comment"]
            .as_str()
            .is_some_and(|c| c.contains("no states")),
        "{job}"
    );

    // A command's help shows its own options before the global ones.
    let help = m.expect(&["apply", "--help"], 0);
    let (own, global) = (help.find("--test").unwrap(), help.find("--master").unwrap());
    assert!(own < global, "{help}");
    assert!(help.contains("Global options"), "{help}");
    // Examples name a beacon by its name, never by its type.
    let help = m.expect(&["events", "--help"], 0);
    assert!(!help.contains("beacon/file/"), "{help}");

    // The licence Cargo.toml names is in the repository.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let licence = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    assert!(
        licence.contains("Apache License") && licence.contains("Version 2.0, January 2004"),
        "LICENSE is the Apache-2.0 text"
    );
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
}
