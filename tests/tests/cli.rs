//! The operator's CLI against a real master and minions: every command's
//! table and JSON output, exit statuses, the error when no master runs,
//! the live tail, colour, completions and man pages.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tend_e2e::{
    Master, Minion, bin, free_port, next_event, stderr, stdout, stored_at, tail, tail_of, tend_at,
};

struct Setup {
    tmp: tempfile::TempDir,
    master: Master,
    minions: Vec<Minion>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("motd");
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file("files/motd", "managed by tend\n");
    master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\nsource = \"files/motd\"\n",
            target.display()
        ),
    );
    master.state_file(
        "broken.toml",
        "[broken]\ntype = \"cmd.run\"\ncommand = \"exit 3\"\n",
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
        minions,
    }
}

#[test]
fn every_command_in_table_and_json() {
    let s = setup();
    let m = &s.master;

    // minions
    let table = m.expect(&["minions"], 0);
    assert!(
        table.starts_with("ID"),
        "minions table has a header: {table}"
    );
    for id in ["web1", "web2"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} in the minions table: {table}"));
        assert!(row.contains("accepted") && row.contains("yes"), "{row}");
    }
    let list = m.expect_json(&["minions"], 0);
    assert_eq!(list.len(), 2, "{list:?}");
    for v in &list {
        assert_eq!(v["connected"], true, "{v}");
        assert_eq!(v["key"], "accepted", "{v}");
        assert!(v["facts"]["kernel"].is_string(), "facts in {v}");
        assert!(v["last_seen"].is_string(), "{v}");
    }

    // minion show
    let shown = m.expect(&["minion", "show", "web1"], 0);
    for want in [
        "web1",
        "connected:   yes",
        "facts:",
        "kernel",
        "recent events:",
    ] {
        assert!(
            shown.contains(want),
            "`minion show` shows {want:?}: {shown}"
        );
    }
    let v = &m.expect_json(&["minion", "show", "web1"], 0)[0];
    assert_eq!(v["id"], "web1");
    assert!(
        v["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:")),
        "{v}"
    );
    assert!(
        v["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["tag"] == "minion/web1/up")),
        "the minion's recent events: {v}"
    );
    let out = m.tend(&["minion", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no minion \"ghost\""),
        "{}",
        stderr(&out)
    );

    // apply: dry run, for real, and a failing state
    let dry = m.expect(&["apply", "web1", "motd", "--test"], 0);
    assert!(dry.contains("would") && dry.contains("job "), "{dry}");
    assert!(
        !s.tmp.path().join("motd").exists(),
        "a dry run changed nothing"
    );
    let job = &m.expect_json(&["apply", "web1", "motd"], 0)[0];
    assert_eq!(job["status"], "changed", "{job}");
    assert_eq!(job["minions"][0]["states"][0]["result"], "changed", "{job}");
    assert!(
        s.tmp.path().join("motd").exists(),
        "the apply made the file"
    );
    let again = m.expect(&["apply", "web1", "motd"], 0);
    assert!(
        again.contains("1 ok"),
        "a second apply changes nothing: {again}"
    );
    let failed = m.expect(&["apply", "web1", "broken"], 1);
    assert!(
        failed.contains("FAILED") && failed.contains("failed"),
        "{failed}"
    );
    // `minion show` now lists its jobs, newest first.
    let shown = &m.expect_json(&["minion", "show", "web1"], 0)[0];
    let jobs = shown["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 4, "{shown}");
    assert_eq!(jobs[0]["states"][0], "broken", "{shown}");
    assert!(
        m.expect(&["minion", "show", "web1"], 0)
            .contains("recent jobs:")
    );

    // run
    let ran = m.expect(&["run", "web*", "--", "echo hello-from-$(hostname)"], 0);
    assert_eq!(ran.matches("hello-from-").count(), 2, "{ran}");
    assert!(ran.contains("2 ok") && ran.contains(": ok ("), "{ran}");
    let run_json = &m.expect_json(&["run", "web2", "--", "exit 4"], 1)[0];
    assert_eq!(run_json["minions"][0]["minion"], "web2", "{run_json}");
    assert_eq!(run_json["minions"][0]["status"], "failed", "{run_json}");
    assert_eq!(
        run_json["status"], "failed",
        "the run job's own status: {run_json}"
    );
    assert!(run_json["finished"].is_string(), "{run_json}");

    // ping: answers, and one that does not
    let pinged = m.expect(&["ping", "*"], 0);
    assert!(pinged.contains("2 of 2 answered"), "{pinged}");
    // A minion the master does not know is refused before anything is
    // sent (tests/tests/first_week.rs has the whole rule).
    let out = m.tend(&["ping", "web1,ghost", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("ghost"), "{}", stderr(&out));

    // jobs
    let jobs = m.expect(&["jobs"], 0);
    assert!(jobs.starts_with("ID") && jobs.contains("failed"), "{jobs}");
    let listed = m.expect_json(&["jobs"], 0);
    assert!(listed.len() >= 5, "{listed:?}");
    let id = listed[0]["id"].as_u64().expect("job id").to_string();
    let one = m.expect(&["jobs", "show", &id], 0);
    assert!(one.starts_with(&format!("job {id}")), "{one}");
    assert_eq!(
        m.expect_json(&["jobs", "show", &id], 0)[0]["id"],
        listed[0]["id"]
    );
    let out = m.tend(&["jobs", "show", "999999"]);
    assert_eq!(out.status.code(), Some(2), "an unknown job is an error");
    assert!(stderr(&out).contains("no job 999999"), "{}", stderr(&out));

    // events
    let events = m.expect(&["events", "--limit", "5"], 0);
    assert!(events.starts_with("STORED"), "{events}");
    assert_eq!(events.lines().count(), 6, "a header and 5 events: {events}");
    let evs = m.expect_json(&["events", "--tag", "minion/*/up"], 0);
    assert_eq!(evs.len(), 2, "{evs:?}");
    for e in &evs {
        for key in ["id", "stored", "minion", "seq", "tag", "time", "data"] {
            assert!(e.get(key).is_some(), "event JSON has {key}: {e}");
        }
    }

    // status, keys, reactor
    let status = m.expect(&["status"], 0);
    assert!(
        status.contains("COUNTER") && status.contains("events_stored"),
        "{status}"
    );
    let counters = &m.expect_json(&["status"], 0)[0]["counters"];
    assert!(counters["events_stored"].as_u64() > Some(0), "{counters}");
    // New keys turned away at the pending cap (none here): counted, and
    // `tend status` says so loudly only when there were some.
    assert_eq!(
        counters["pending_keys_dropped"].as_u64(),
        Some(0),
        "{counters}"
    );
    assert!(!status.contains("PENDING KEYS DROPPED"), "{status}");
    let keys = m.expect(&["keys", "list"], 0);
    assert!(
        keys.contains("master key:") && keys.contains("web2"),
        "{keys}"
    );
    let keys = &m.expect_json(&["keys", "list"], 0)[0];
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "{keys}");
    // reactor test, offline: why a rule would (not) act on an event.
    let rule = s.tmp.path().join("r.toml");
    std::fs::write(
        &rule,
        "[[rule]]\nname = \"r\"\non = \"minion/*/beacon/motd/*\"\nwhen = 'event.data.kind == \"modified\"'\n[[rule.action]]\napply = [\"motd\"]\n",
    )
    .unwrap();
    let ev = s.tmp.path().join("e.json");
    std::fs::write(
        &ev,
        r#"{"minion": "web1", "tag": "minion/web1/beacon/motd/modified", "data": {"kind": "modified", "path": "/etc/motd"}}"#,
    )
    .unwrap();
    let (rule, ev) = (rule.to_str().unwrap(), ev.to_str().unwrap());
    let told = m.expect(&["reactor", "test", rule, "--event", ev], 0);
    assert!(
        told.contains("rule \"r\"") && told.contains("is true"),
        "{told}"
    );
    let v = &m.expect_json(&["reactor", "test", rule, "--event", ev], 0)[0];
    assert_eq!(v["matched"][0]["rule"], "r", "{v}");
    assert_eq!(v["matched"][0]["holds"], true, "{v}");
    assert_eq!(v["matched"][0]["actions"][0], "apply", "{v}");
    assert!(m.expect(&["reactor", "reload"], 0).contains("0 rule(s)"));
    assert_eq!(m.expect_json(&["reactor", "reload"], 0)[0]["rules"], 0);

    // `--output` is checked, and TEND_MASTER picks the master.
    let out = m.tend(&["minions", "--output", "yaml"]);
    assert_eq!(out.status.code(), Some(2), "--output yaml is refused");
    let out = Command::new(bin("tend"))
        .arg("minions")
        .env("TEND_MASTER", &m.control)
        .output()
        .unwrap();
    assert!(
        out.status.success() && stdout(&out).contains("web2"),
        "{}",
        stderr(&out)
    );
    drop(s.minions);
}

#[test]
fn without_a_master_every_command_says_so_in_one_line() {
    // Built first: what is timed below is tend, not cargo.
    bin("tend");
    let tmp = tempfile::tempdir().unwrap();
    let missing = format!("ipc://{}", tmp.path().join("control.sock").display());
    // A socket file with nobody behind it, as a killed master leaves.
    let stale_path = tmp.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale_path).unwrap());
    let stale = format!("ipc://{}", stale_path.display());
    let tcp = format!("tcp://127.0.0.1:{}", free_port());
    let commands: &[&[&str]] = &[
        &["events"],
        &["events", "--follow"],
        &["minions"],
        &["minion", "show", "web1"],
        &["apply", "web1", "motd"],
        &["run", "web1", "--", "true"],
        &["ping", "*"],
        &["jobs"],
        &["status"],
        &["keys", "list"],
    ];
    for endpoint in [&missing, &stale, &tcp] {
        for args in commands {
            let started = std::time::Instant::now();
            let out = tend_at(endpoint, args);
            let e = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "tend {args:?} at {endpoint}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "one line: {e}");
            assert!(
                e.contains(endpoint.as_str()) && e.contains("Is tend-master running?"),
                "tend {args:?} at {endpoint} says what failed and what to check: {e}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "tend {args:?} at {endpoint} fails at once, not after a timeout ({:?})",
                started.elapsed()
            );
        }
    }
}

#[test]
fn follow_shows_events_within_100ms_and_survives_a_master_restart() {
    let mut s = setup();
    let (mut all, rx) = tail(
        &s.master,
        &["--tag", "minion/*/event/live/**", "--since", "10m"],
    );
    let (mut web2_only, rx2) = tail(&s.master, &["--minion", "web2", "--since", "10m"]);
    // Once the tail shows this one it is running (--since shows it even if
    // it was stored before the tail's first look).
    assert!(s.minions[0].send("live/warmup", 1).status.success());
    let (_, e) = next_event(&rx, "the warm-up event");
    assert_eq!(e["tag"], "minion/web1/event/live/warmup");

    // Latency: from stored to printed, for several events (the median is
    // the figure: this machine is shared).
    let mut delays = Vec::new();
    for i in 0..7 {
        let tag = format!("live/{i}");
        let out = s.minions[0].send(&tag, 1);
        assert!(out.status.success(), "{}", stderr(&out));
        let (at, e) = next_event(&rx, &tag);
        assert_eq!(
            e["tag"],
            format!("minion/web1/event/{tag}"),
            "in order, nothing else: {e}"
        );
        delays.push(at.duration_since(stored_at(&e)).unwrap_or_default());
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        median <= Duration::from_millis(100),
        "the tail shows an event within 100 ms of it being stored: {delays:?}"
    );

    // The minion filter: web2's tail shows only web2's events.
    assert!(s.minions[1].send("live/web2", 1).status.success());
    loop {
        let (_, e) = next_event(&rx2, "web2's event");
        assert_eq!(e["minion"], "web2", "only web2's events: {e}");
        if e["tag"] == "minion/web2/event/live/web2" {
            break;
        }
    }

    // The master goes away (killed: no goodbye), events are sent meanwhile
    // (the minion holds them), and it comes back: the tail goes on with
    // every event, once, in order.
    s.master.daemon().kill9();
    let out = s.minions[0].send("live/while-down", 3);
    assert!(out.status.success(), "{}", stderr(&out));
    s.master.start();
    assert!(s.minions[0].send("live/after", 1).status.success());
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let (_, e) = next_event(&rx, "the events sent while the master was down, and after");
        seen.push(e["tag"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        seen,
        [
            "minion/web2/event/live/web2",
            "minion/web1/event/live/while-down",
            "minion/web1/event/live/while-down",
            "minion/web1/event/live/while-down",
            "minion/web1/event/live/after",
        ],
        "every event once, in order"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing shown twice"
    );
    assert!(
        all.try_wait().unwrap().is_none(),
        "the tail is still running"
    );
    let _ = all.kill();
    let _ = web2_only.kill();
    let stderr = {
        let mut s = String::new();
        use std::io::Read;
        all.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert!(
        stderr.contains("reconnecting") && stderr.contains("reconnected"),
        "the tail says it lost the master and found it again: {stderr}"
    );
}

#[test]
fn a_bad_tag_glob_ends_the_tail_with_the_masters_reason() {
    let s = setup();
    let out = s
        .master
        .tend(&["events", "--follow", "--tag", "minion/[web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad tag glob"), "{}", stderr(&out));
}

/// Runs `tend` on a pseudo-terminal (util-linux `script`), so its stdout is
/// a terminal.
fn on_a_terminal(master: &Master, args: &str, no_color: bool) -> String {
    let mut cmd = Command::new("script");
    cmd.args(["-qec"])
        .arg(format!(
            "{} --master {} {args}",
            bin("tend").display(),
            master.control
        ))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .env_remove("NO_COLOR");
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd
        .output()
        .expect("util-linux `script` runs tend on a terminal");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn colour_on_a_terminal_only_and_never_with_no_color() {
    let s = setup();
    let coloured = on_a_terminal(&s.master, "minions", false);
    assert!(
        coloured.contains("\x1b[32myes\x1b[0m"),
        "on a terminal, connected minions show in green: {coloured:?}"
    );
    let plain = on_a_terminal(&s.master, "minions", true);
    assert!(plain.contains("web1"), "{plain}");
    assert!(!plain.contains('\x1b'), "NO_COLOR: no colour: {plain:?}");
    // Many minions on a terminal: a progress line on stderr while they
    // answer, cleared before each result and at the end.
    let pinged = on_a_terminal(&s.master, "ping '*'", true);
    assert!(
        pinged.contains("2/2 answered") && pinged.contains("\r\x1b[K"),
        "a progress line on a terminal: {pinged:?}"
    );
    assert!(pinged.contains("2 of 2 answered"), "{pinged:?}");
    // Piped (every other test checks this too).
    let piped = stdout(&s.master.tend(&["minions"]));
    assert!(
        piped.contains("yes") && !piped.contains('\x1b'),
        "{piped:?}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let tend = |args: &[&str]| Command::new(bin("tend")).args(args).output().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _tend"),
        ("zsh", "#compdef tend"),
        ("fish", "complete -c tend"),
    ] {
        let out = tend(&["completions", shell]);
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell} completion: {marker}");
        for sub in ["events", "apply", "minion", "completions"] {
            assert!(script.contains(sub), "{shell} completion knows `{sub}`");
        }
    }
    let out = tend(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is refused");

    let page = stdout(&tend(&["man"]));
    assert!(page.contains(".TH tend 1"), "tend(1) on stdout: {page}");
    let dir = tempfile::tempdir().unwrap();
    let out = tend(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "tend.1",
        "tend-events.1",
        "tend-apply.1",
        "tend-minion-show.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("man page {page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let events = std::fs::read_to_string(dir.path().join("tend-events.1")).unwrap();
    assert!(events.contains("follow"), "the man page documents --follow");

    // --help has examples, everywhere.
    for sub in [
        "events", "apply", "run", "ping", "minions", "minion", "jobs", "keys", "status",
    ] {
        let help = stdout(&tend(&[sub, "--help"]));
        assert!(
            help.contains("Example"),
            "`tend {sub} --help` has examples: {help}"
        );
    }
}

#[test]
fn run_results_show_as_each_minion_answers() {
    let s = setup();
    // Whichever minion takes the lock first sleeps; the other answers at once.
    let lock = s.tmp.path().join("lock");
    let mut child = Command::new(bin("tend"))
        .arg("--master")
        .arg(&s.master.control)
        .args(["run", "web*", "--"])
        .arg(format!(
            "mkdir {} 2>/dev/null && sleep 3; echo done",
            lock.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    let first_at = started.elapsed();
    assert!(first.ends_with("ok") || first.contains(": ok ("), "{first}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let all_at = started.elapsed();
    assert!(child.wait().unwrap().success());
    assert!(
        all_at - first_at >= Duration::from_secs(2),
        "the quick minion's result showed before the slow one finished \
         (first after {first_at:?}, all after {all_at:?}): {first} / {rest:?}"
    );
}

#[test]
fn an_operator_over_tcp_is_accepted_then_follows_events() {
    let s = setup();
    let home = s.tmp.path().join("operator-home");
    let tcp = |args: &[&str]| -> Command {
        let mut c = Command::new(bin("tend"));
        c.arg("--master")
            .arg(&s.master.command_endpoint)
            .args(["--name", "alice"])
            .args(args)
            .env("XDG_CONFIG_HOME", &home)
            .env_remove("TEND_MASTER");
        c
    };
    // First contact: a key is made, and the master has not accepted it.
    let out = tcp(&["minions"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("has not accepted operator \"alice\"")
            && e.contains("tend keys accept --operator alice"),
        "says what to do: {e}"
    );
    assert!(
        home.join("tend/operator.key").exists(),
        "the operator's key was made"
    );
    assert!(
        s.master
            .expect(&["keys", "accept", "--operator", "alice"], 0)
            .contains("alice")
    );

    // Accepted: every command works over TCP, sealed.
    let out = tcp(&["minions"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("web1") && stdout(&out).contains("web2"));
    // The master's key was pinned on first use.
    let pins = std::fs::read_dir(home.join("tend/masters"))
        .unwrap()
        .count();
    assert_eq!(pins, 1, "the master's fingerprint is recorded");

    // A live tail over TCP.
    let (mut child, rx) = tail_of(
        tcp(&[]),
        &["--since", "1m", "--tag", "minion/*/event/remote/**"],
    );
    assert!(s.minions[0].send("remote/one", 1).status.success());
    let (_, v) = next_event(&rx, "the remote tail's event");
    assert_eq!(v["tag"], "minion/web1/event/remote/one");
    let _ = child.kill();
    let _ = child.wait();

    // Rejected: refused again, in one line.
    s.master
        .expect(&["keys", "reject", "--operator", "alice"], 0);
    let out = tcp(&["minions"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// Issue 15, item 18: completion asks the master. `tend ping <TAB>` offers
/// minion ids, `tend apply web1 <TAB>` state names, `tend jobs show <TAB>`
/// recent job ids (the shell's side is `source <(COMPLETE=bash tend)`;
/// fish's protocol, one candidate a line, is the simplest to read).
#[test]
fn completion_offers_minion_ids_state_names_and_job_ids_from_the_master() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = tend_e2e::Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "motd.toml",
        &format!(
            "[motd]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"hi\\n\"\n",
            tmp.path().join("motd").display()
        ),
    );
    master.state_file(
        "web/nginx.toml",
        "[nginx]\ntype = \"file.absent\"\npath = \"/nonexistent/tend-test\"\n",
    );
    master.start();
    let mut minion = tend_e2e::Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    master.expect(&["apply", "web1", "motd"], 0);
    let job = master.tend_json(&["jobs", "--limit", "1"])[0]["id"]
        .as_u64()
        .unwrap();
    let complete = |words: &[&str]| {
        let out = std::process::Command::new(tend_e2e::bin("tend"))
            .env("COMPLETE", "fish")
            .env("TEND_MASTER", &master.control)
            .arg("--")
            .arg("tend")
            .args(words)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let offered = complete(&["ping", "w"]);
    assert!(offered.lines().any(|l| l == "web1\tconnected"), "{offered}");
    let offered = complete(&["apply", "web1", ""]);
    let names: Vec<&str> = offered.lines().filter(|l| !l.starts_with('-')).collect();
    assert_eq!(names, ["motd", "web.nginx"], "{offered}");
    let offered = complete(&["jobs", "show", ""]);
    assert!(
        offered
            .lines()
            .any(|l| l.starts_with(&format!("{job}\tapply web1 motd"))),
        "{offered}"
    );
    // No master: no candidates, no error.
    let out = std::process::Command::new(tend_e2e::bin("tend"))
        .env("COMPLETE", "fish")
        .env("TEND_MASTER", "ipc:///nonexistent/tend.sock")
        .args(["--", "tend", "ping", ""])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .all(|l| l.starts_with('-')),
        "{out:?}"
    );
}
