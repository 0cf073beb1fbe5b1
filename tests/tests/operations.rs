//! Running tend as a service: Prometheus metrics scraped from both
//! daemons, systemd readiness (`Type=notify`), the unit files checked by
//! `systemd-analyze verify`, JSON logs.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tend_e2e::{Master, Minion, bin, free_port, run_daemon, tend_at, wait_until};

/// `GET /metrics`, parsed as the Prometheus text format by an independent
/// parser.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tend\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
}

/// The value of `name` (with labels `want`), if it is there.
fn value(s: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn metrics_are_scraped_from_both_daemons_and_move_when_events_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let master_metrics = format!("127.0.0.1:{}", free_port());
    let minion_metrics = format!("127.0.0.1:{}", free_port());
    let watched = tmp.path().join("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let mut master = Master::new(
        &tmp.path().join("master"),
        &format!("metrics_listen = {master_metrics:?}"),
    );
    master.state_file(
        "hello.toml",
        &format!(
            "[hello]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"hi\\n\"\n",
            tmp.path().join("hello").display()
        ),
    );
    master.start();
    let mut minion = Minion::new(
        &tmp.path().join("minion"),
        "web1",
        &master,
        &format!(
            "metrics_listen = {minion_metrics:?}\n[[beacon]]\nname = \"watch\"\ntype = \"file\"\npaths = [{:?}]\n",
            watched.display()
        ),
    );
    minion.start();
    master.wait_connected("web1");

    let before = scrape(&master_metrics);
    assert_eq!(
        value(&before, "tend_master_minions_connected", &[]),
        Some(1.0)
    );
    let stored_before =
        value(&before, "tend_master_events_stored_total", &[]).expect("events stored");
    for name in [
        "tend_master_events_duplicate_total",
        "tend_master_reactions_total",
        "tend_master_store_failing",
        "tend_master_reactor_queue",
        "tend_master_ingest_queue",
        "tend_master_bus_events_in_total",
        "tend_master_bus_frames_bad_total",
        "tend_master_rules",
    ] {
        assert!(
            value(&before, name, &[]).is_some(),
            "the master exports {name}"
        );
    }

    // A file written on the minion: a beacon event, stored.
    std::fs::write(watched.join("a"), "x").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the beacon's event to be counted on the minion",
        || {
            let m = scrape(&minion_metrics);
            (value(
                &m,
                "tend_minion_beacon_events_total",
                &[("beacon", "watch")],
            ) >= Some(1.0))
            .then_some(())
        },
    );
    wait_until(
        Duration::from_secs(10),
        "the master to count the stored event",
        || {
            let m = scrape(&master_metrics);
            (value(&m, "tend_master_events_stored_total", &[]) > Some(stored_before)).then_some(())
        },
    );
    let minion_now = scrape(&minion_metrics);
    assert_eq!(value(&minion_now, "tend_minion_connected", &[]), Some(1.0));
    assert_eq!(value(&minion_now, "tend_minion_beacons", &[]), Some(1.0));
    assert!(value(&minion_now, "tend_minion_events_written_total", &[]) >= Some(1.0));
    assert!(value(&minion_now, "tend_minion_outbox_bytes", &[]).is_some());
    assert!(value(&minion_now, "tend_minion_outbox_events", &[]).is_some());

    // An apply: job durations on both sides.
    let out = master.tend(&["apply", "web1", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = scrape(&master_metrics);
    assert_eq!(
        value(&m, "tend_master_job_duration_seconds", &[("kind", "apply")]),
        Some(1.0),
        "one apply in the master's job histogram"
    );
    assert_eq!(value(&m, "tend_master_jobs_started_total", &[]), Some(1.0));
    let n = scrape(&minion_metrics);
    assert_eq!(
        value(&n, "tend_minion_job_duration_seconds", &[("kind", "apply")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &n,
            "tend_minion_state_results_total",
            &[("outcome", "changed")]
        ),
        Some(1.0)
    );

    // Every metric either daemon exports is in docs/metrics.md (the bus's
    // counters by their name, in its own table).
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .unwrap();
    let mut undocumented = Vec::new();
    for scrape in [&m, &n] {
        for sample in &scrape.samples {
            let family = sample
                .metric
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            let bus = ["tend_master_bus_", "tend_minion_bus_"]
                .iter()
                .find_map(|p| family.strip_prefix(p))
                .map(|rest| rest.trim_end_matches("_total"));
            let documented = match bus {
                Some(name) => doc.contains(&format!("| `{name}` |")),
                None => doc.contains(&format!("| `{family}` |")),
            };
            if !documented && !undocumented.contains(&family.to_string()) {
                undocumented.push(family.to_string());
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "metrics not in docs/metrics.md: {undocumented:?}"
    );

    // Anything but GET /metrics is refused, and the daemon goes on.
    let mut s = std::net::TcpStream::connect(&master_metrics).unwrap();
    s.write_all(b"DELETE /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(master.tend(&["status"]).status.success());
}

#[test]
fn metrics_are_off_by_default_and_a_bad_address_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let master = Master::new(&tmp.path().join("m"), "metrics_listen = \"localhost\"");
    // --check-config catches it too.
    let (code, err) = run_daemon("tend-master", &master.config(), &["--check-config"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("master.toml") && err.contains("metrics_listen") && err.contains("localhost"),
        "{err}"
    );
    // The minion too.
    let minion = Minion::new(
        &tmp.path().join("n"),
        "web1",
        &master,
        "metrics_listen = \"nowhere:1\"",
    );
    let (code, err) = run_daemon(
        "tend-minion",
        &minion.dir.join("minion.toml"),
        &["--check-config"],
    );
    assert!(
        code != 0 && err.contains("minion.toml") && err.contains("metrics_listen"),
        "{err}"
    );

    // Without metrics_listen the master listens on its two bus ports and
    // nothing else.
    let mut plain = Master::new(&tmp.path().join("plain"), "");
    plain.start();
    let pid = plain.daemon().child.id();
    let out = Command::new("ss")
        .args(["-Hltnp"])
        .output()
        .expect("ss (iproute2)");
    let listening: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect();
    assert_eq!(
        listening.len(),
        2,
        "only the event and command ports: {listening:?}"
    );
}

/// A process as systemd would start it, with `$NOTIFY_SOCKET`.
fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (sock, path)
}

fn next_notice(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_is_sent_once_the_sockets_serve_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (sock, path) = notify_socket(tmp.path());
    let master = Master::new(&tmp.path().join("master"), "");
    let mut child = Command::new(bin("tend-master"))
        .arg("--config")
        .arg(master.config())
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next_notice(&sock);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    // At READY the control socket answers at once.
    let out = tend_at(&master.control, &["status"]);
    assert!(
        out.status.success(),
        "ready, and serving: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // WatchdogSec: it keeps saying it is alive.
    assert_eq!(next_notice(&sock), "WATCHDOG=1");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = wait_until(Duration::from_secs(10), "STOPPING=1", || {
        let n = next_notice(&sock);
        (n == "STOPPING=1").then_some(n)
    });
    assert_eq!(stopping, "STOPPING=1");
    assert!(child.wait().unwrap().success());

    // The minion too.
    let (sock, path) = notify_socket(&tmp.path().join("master"));
    let minion = Minion::new(&tmp.path().join("minion"), "web1", &master, "");
    let mut child = Command::new(bin("tend-minion"))
        .arg("--config")
        .arg(minion.dir.join("minion.toml"))
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next_notice(&sock);
    assert!(
        ready.starts_with("READY=1\n") && ready.contains("minion web1"),
        "{ready}"
    );
    assert!(
        minion.dir.join("data/minion.sock").exists(),
        "the local socket is bound at READY"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed and cannot be (needs root and apt-get); \
             the unit files were not verified"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    // verify checks that ExecStart's program exists and that the man page
    // in Documentation= is installed: point both at what this build made.
    let man = tmp.path().join("man/man1");
    let out = Command::new(bin("tend"))
        .args(["man", "--dir"])
        .arg(&man)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut units = Vec::new();
    for unit in ["tend-master", "tend-minion"] {
        let text = std::fs::read_to_string(root.join(format!("{unit}.service"))).unwrap();
        let text = text.replace(
            &format!("/usr/bin/{unit}"),
            &bin(unit).display().to_string(),
        );
        let path = tmp.path().join(format!("{unit}.service"));
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .env("MANPATH", tmp.path().join("man"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify has nothing to say: {err}"
    );
}

/// systemd-analyze, installed from Debian's `systemd` package if missing
/// (CI runs as root on Debian).
fn systemd_analyze() -> Option<String> {
    let found = || {
        Command::new("systemd-analyze")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return Some("systemd-analyze".into());
    }
    let root = Command::new("id").arg("-u").output().ok()?.stdout == b"0\n";
    if !root {
        return None;
    }
    eprintln!("installing systemd (for systemd-analyze) with apt-get");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "systemd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    found().then(|| "systemd-analyze".into())
}

#[test]
fn logs_are_json_with_one_config_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("m"), "[log]\nformat = \"json\"");
    master.start();
    let log = std::fs::read_to_string(tmp.path().join("m/master.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("tend-master ready"))
        .unwrap_or_else(|| panic!("the ready line in {log}"));
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("a JSON log line: {e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["fields"]["fingerprint"].is_string(), "{v}");
}

#[test]
fn events_and_jobs_past_retention_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "retention = \"4s\"");
    master.state_file(
        "hello.toml",
        &format!(
            "[hello]\ntype = \"file.managed\"\npath = {:?}\ncontents = \"hi\\n\"\n",
            tmp.path().join("hello").display()
        ),
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("minion"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    assert!(minion.send("old", 5).status.success());
    for _ in 0..2 {
        assert!(master.tend(&["apply", "web1", "hello"]).status.success());
    }
    assert_eq!(master.events(&["--tag", "minion/web1/event/old"]).len(), 5);
    wait_until(
        Duration::from_secs(20),
        "the old events and job to be removed",
        || {
            let counters = master.counters();
            (master
                .events(&["--tag", "minion/web1/event/old"])
                .is_empty()
                && counters["jobs_pruned"].as_u64() >= Some(1))
            .then_some(())
        },
    );
    // The newest job stays (ids go on from it); new events are stored as
    // ever, and the minion's old seqs are still known (not stored again).
    assert_eq!(master.tend_json(&["jobs"]).len(), 1);
    assert!(minion.send("new", 1).status.success());
    wait_until(Duration::from_secs(10), "a new event", || {
        (master.events(&["--tag", "minion/web1/event/new"]).len() == 1).then_some(())
    });
    assert!(
        master
            .events(&["--tag", "minion/web1/event/old"])
            .is_empty()
    );
    assert!(master.counters()["events_pruned"].as_u64() >= Some(5));

    // A bad retention stops the master with the key named.
    let bad = Master::new(&tmp.path().join("bad"), "retention = \"soon\"");
    let (code, err) = run_daemon("tend-master", &bad.config(), &["--check-config"]);
    assert!(
        code != 0 && err.contains("`retention`") && err.contains("soon"),
        "{err}"
    );
}
