//! The benchmarks. Each prints its figures (min / median / p99 / max for
//! timings; throughput where it applies) as a table, or one JSON object
//! with `--json`. None asserts a time.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use serde_json::{Value, json};
use tend_proto::v1::{ApplyCommand, PingMinions, control_reply, control_request};

use crate::cluster::{Cluster, hand_write, wait};
use crate::edits::{one_edit, start};
use crate::fleet::{Fleet, FleetConfig};
use crate::summary::Summary;

/// Prints a benchmark's result: a table for people, or JSON.
pub struct Report {
    name: &'static str,
    title: String,
    timings: Vec<(String, Summary)>,
    figures: Vec<(String, Value, String)>,
}

impl Report {
    pub fn new(name: &'static str, title: impl Into<String>) -> Self {
        Self {
            name,
            title: title.into(),
            timings: Vec::new(),
            figures: Vec::new(),
        }
    }

    fn timing(&mut self, what: &str, samples: &[Duration]) {
        self.timings.push((what.to_string(), Summary::of(samples)));
    }

    fn figure(&mut self, what: &str, value: impl Into<Value>, unit: &str) {
        self.figures
            .push((what.to_string(), value.into(), unit.to_string()));
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            let mut obj = serde_json::Map::new();
            obj.insert("benchmark".into(), json!(self.name));
            for (what, s) in &self.timings {
                obj.insert(what.replace(' ', "_"), s.json());
            }
            for (what, v, unit) in &self.figures {
                obj.insert(what.replace(' ', "_"), json!({"value": v, "unit": unit}));
            }
            println!("{}", Value::Object(obj));
            return;
        }
        println!("{}", self.title);
        if !self.timings.is_empty() {
            println!(
                "{:<32} {:>6} {:>9} {:>9} {:>9} {:>9}",
                "(ms)", "n", "min", "median", "p99", "max"
            );
            for (what, s) in &self.timings {
                println!("{}", s.row(what));
            }
        }
        for (what, v, unit) in &self.figures {
            let v = match v {
                Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string(),
            };
            println!("{what:<32} {v:>12} {unit}");
        }
    }
}

pub fn drift(edits: usize) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    let mut restored = Vec::new();
    let mut stored = Vec::new();
    for i in 0..edits + 5 {
        let text = format!("drift {i}\n");
        let (r, s, _) = one_edit(&c, || Ok(hand_write(&c.managed, &text)?))?;
        if i >= 5 {
            restored.push(r);
            stored.push(s);
        }
    }
    let mut report = Report::new(
        "drift",
        format!("drift: a managed file edited by hand, {edits} times"),
    );
    report.timing("write -> restored", &restored);
    report.timing("write -> event stored", &stored);
    Ok(report)
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time a process used so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 here.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Share of one core a process used over `window`, in percent.
fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / window.as_secs_f64() * 100.0
}

/// Raises the open-file limit as far as allowed: a fleet of thousands of
/// connections needs far more than the usual 1024, and the master started
/// from here inherits it.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let wanted = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

fn master_only(dir: &std::path::Path, rules: usize) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(dir, true)?;
    c.bench_rules(rules)?;
    c.start_master()?;
    Ok(c)
}

fn fleet(c: &Cluster, count: usize, events_per_sim: u64) -> anyhow::Result<Fleet> {
    Fleet::start(FleetConfig {
        count,
        prefix: "sim".into(),
        event_endpoint: c.event_endpoint(),
        command_endpoint: c.command_endpoint(),
        events_per_sim,
    })
}

/// Waits until every simulated minion has its session and the master has
/// heard what it is (its `up`).
fn wait_fleet(c: &Cluster, f: &Fleet, count: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait(
        timeout,
        &format!("{count} simulated minions to connect"),
        || Ok(f.connected() >= count),
    )?;
    wait(timeout, "the master to know them all", || {
        Ok(c.minions()?.iter().filter(|m| m.connected).count() >= count)
    })?;
    Ok(start.elapsed())
}

pub fn ingest(minions: usize, events: u64, rules: usize) -> anyhow::Result<Report> {
    crate::workload::check()?;
    let tmp = tempfile::tempdir()?;
    let c = master_only(tmp.path(), rules)?;
    let total = minions as u64 * events;
    // Connect first, then publish: the figure is ingest, not handshakes.
    let f = fleet(&c, minions, events)?;
    wait_fleet(&c, &f, minions, Duration::from_secs(60))?;
    f.go();
    let start = Instant::now();
    let mut rss_peak: f64 = 0.0;
    let pid = c.master_pid().context("master pid")?;
    wait(
        Duration::from_secs(600),
        "every event to be acknowledged",
        || {
            rss_peak = rss_peak.max(rss_mib(pid));
            Ok(f.stats.acked.load(std::sync::atomic::Ordering::Relaxed) >= total)
        },
    )?;
    let stored_in = start.elapsed();
    wait(
        Duration::from_secs(600),
        "every event through the rules",
        || Ok(c.counter("events_evaluated")? >= total),
    )?;
    let took = start.elapsed();
    let stored = c.counter("events_stored")?;
    let lost = c.counter("events_lost")?;
    let dup = c.counter("events_duplicate")?;
    let reactions = c.counter("reactions")?;
    f.stop();
    if reactions != 0 {
        bail!("conditions that are never true acted {reactions} times");
    }
    let mut r = Report::new(
        "ingest",
        format!(
            "ingest: {minions} simulated minions x {events} events, {rules} rules on the master"
        ),
    );
    r.figure(
        "stored, per second",
        total as f64 / stored_in.as_secs_f64(),
        "events/s",
    );
    r.figure(
        "stored and through the rules, per second",
        total as f64 / took.as_secs_f64(),
        "events/s",
    );
    r.figure("events", total, "");
    r.figure("seconds", took.as_secs_f64(), "s");
    r.figure("events stored (all kinds)", stored, "");
    r.figure("lost", lost, "(must be 0)");
    r.figure("stored twice (dropped as duplicates)", dup, "");
    r.figure("rules matched and acted", reactions, "");
    r.figure("master peak RSS", rss_peak, "MiB");
    r.figure(
        "event data (file-beacon shaped JSON)",
        crate::workload::data(1).len() as f64,
        "bytes",
    );
    Ok(r)
}

pub fn fanout(minions: usize, runs: usize) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let c = master_only(tmp.path(), 0)?;
    let f = fleet(&c, minions, 0)?;
    wait_fleet(&c, &f, minions, Duration::from_secs(120))?;
    let mut samples = Vec::new();
    let mut client = c.client()?;
    for _ in 0..runs + 1 {
        let start = Instant::now();
        let mut answered = 0;
        let mut failed = 0;
        client.call(
            control_request::Body::Apply(ApplyCommand {
                target: "sim-*".into(),
                states: vec!["motd".into()],
                test: false,
                timeout_ms: 30_000,
            }),
            Some(Duration::from_secs(60)),
            |r| {
                if let Some(control_reply::Body::Job(j)) = r.body {
                    answered = j.minions.len();
                    failed = j.minions.iter().filter(|m| m.status != "ok").count();
                }
                true
            },
        )?;
        if answered != minions || failed > 0 {
            bail!("{answered} of {minions} answered, {failed} not ok");
        }
        samples.push(start.elapsed());
    }
    samples.remove(0); // warm-up
    f.stop();
    let mut r = Report::new(
        "fanout",
        format!("fanout: one apply to {minions} simulated minions, {runs} runs"),
    );
    r.timing("apply -> every reply in", &samples);
    Ok(r)
}

pub fn scale(minions: usize) -> anyhow::Result<Report> {
    raise_fd_limit(8 * minions as u64 + 4096);
    let tmp = tempfile::tempdir()?;
    let c = master_only(tmp.path(), 0)?;
    let pid = c.master_pid().context("master pid")?;
    let idle_rss = rss_mib(pid);
    let start = Instant::now();
    let f = crate::fleet::SpreadFleet::start(FleetConfig {
        count: minions,
        prefix: "sim".into(),
        event_endpoint: c.event_endpoint(),
        command_endpoint: c.command_endpoint(),
        events_per_sim: 0,
    })?;
    wait(
        Duration::from_secs(300),
        &format!("{minions} simulated minions to connect"),
        || Ok(f.connected() >= minions),
    )?;
    let took = start.elapsed();
    wait(
        Duration::from_secs(300),
        "the master to count them all",
        || Ok(c.counter("minions_connected")? as usize >= minions),
    )?;
    // Heartbeat round trips over a few intervals.
    f.stats.heartbeat_rtt_us.lock().expect("rtt").clear();
    std::thread::sleep(Duration::from_secs(3));
    let rtt: Vec<Duration> = f
        .stats
        .heartbeat_rtt_us
        .lock()
        .expect("rtt")
        .iter()
        .map(|us| Duration::from_micros(*us))
        .collect();
    let rss = rss_mib(pid);
    let connected = c.counter("minions_connected")?;
    f.stop();
    let mut r = Report::new(
        "scale",
        format!("scale: {minions} simulated minions (command sessions) connecting to one master"),
    );
    if !rtt.is_empty() {
        r.timing("heartbeat round trip", &rtt);
    }
    r.figure("all connected after", took.as_secs_f64(), "s");
    r.figure("connected (master's count)", connected, "");
    r.figure("master RSS idle", idle_rss, "MiB");
    r.figure("master RSS connected", rss, "MiB");
    Ok(r)
}

pub fn restart(minions: usize) -> anyhow::Result<Report> {
    raise_fd_limit(8 * minions as u64 + 4096);
    let tmp = tempfile::tempdir()?;
    let mut c = master_only(tmp.path(), 0)?;
    let f = fleet(&c, minions, 0)?;
    wait_fleet(&c, &f, minions, Duration::from_secs(120))?;
    let sessions = f.stats.sessions.load(std::sync::atomic::Ordering::Relaxed);
    c.kill_master();
    let killed = Instant::now();
    let ready = c.start_master()?;
    let start = Instant::now();
    wait(
        Duration::from_secs(300),
        "every simulated minion to reconnect",
        || {
            Ok(f.stats.sessions.load(std::sync::atomic::Ordering::Relaxed)
                >= sessions + minions as u64
                && f.connected() >= minions)
        },
    )?;
    let back = start.elapsed();
    let total = killed.elapsed();
    f.stop();
    let mut r = Report::new(
        "restart",
        format!("restart: the master killed (-9) and restarted under {minions} simulated minions"),
    );
    r.figure("master start -> ready", ready.as_secs_f64() * 1000.0, "ms");
    r.figure(
        "ready -> all reconnected",
        back.as_secs_f64() * 1000.0,
        "ms",
    );
    r.figure(
        "kill -> all reconnected",
        total.as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(r)
}

pub fn startup(runs: usize) -> anyhow::Result<Report> {
    let mut master_ready = Vec::new();
    let mut minion_ping = Vec::new();
    for _ in 0..runs {
        let tmp = tempfile::tempdir()?;
        let mut c = Cluster::new(tmp.path(), true)?;
        master_ready.push(c.start_master()?);
        let start = Instant::now();
        c.spawn_minion()?;
        let mut client = c.client()?;
        wait(
            Duration::from_secs(20),
            "the minion's first answered ping",
            || {
                let mut ok = false;
                let _ = client.call(
                    control_request::Body::Ping(PingMinions {
                        target: "demo-minion".into(),
                        timeout_ms: 1000,
                    }),
                    Some(Duration::from_secs(2)),
                    |r| {
                        if let Some(control_reply::Body::Pong(p)) = r.body {
                            ok = p.ok;
                        }
                        true
                    },
                );
                Ok(ok)
            },
        )?;
        minion_ping.push(start.elapsed());
        c.stop();
    }
    let mut r = Report::new("startup", format!("startup: {runs} cold starts"));
    r.timing("master start -> ready", &master_ready);
    r.timing("minion start -> first ping", &minion_ping);
    Ok(r)
}

pub fn apply(runs: usize) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    let mut samples = Vec::new();
    for _ in 0..runs + 3 {
        let start = Instant::now();
        let out = c.tend(&["apply", "demo-minion", "motd"])?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "tend apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        samples.push(took);
    }
    samples.drain(..3);
    let mut r = Report::new(
        "apply",
        format!("apply: `tend apply` of one state to one minion, {runs} runs"),
    );
    r.timing("CLI start -> exit", &samples);
    Ok(r)
}

/// `tend events --follow`: how long after an event is stored the tail
/// prints it, and after `tend-minion send` handed it over.
pub fn follow(events: usize) -> anyhow::Result<Report> {
    use std::io::BufRead;
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    let mut tail = c.spawn_tend(&[
        "events",
        "--follow",
        "--json",
        "--since",
        "1m",
        "--tag",
        "minion/*/event/follow/**",
    ])?;
    let stdout = tail.stdout.take().context("the tail's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let at = std::time::SystemTime::now();
            if tx.send((at, line)).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> anyhow::Result<(std::time::SystemTime, Value)> {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow::anyhow!("the tail did not print {what} within 20 s"))?;
        Ok((at, serde_json::from_str(&line)?))
    };
    // --since shows it even if it was stored before the tail's first look:
    // once it is printed, the tail is running.
    c.send("follow/warm", 1)?;
    next("the warm-up event")?;
    let (mut stored_to_shown, mut sent_to_shown) = (Vec::new(), Vec::new());
    for i in 0..events {
        let sent = std::time::SystemTime::now();
        let out = c.send(&format!("follow/{i}"), 1)?;
        if !out.status.success() {
            bail!("send failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (at, e) = next("an event")?;
        let stored = e["stored"]
            .as_str()
            .and_then(|s| humantime::parse_rfc3339(s).ok())
            .context("the event's stored time")?;
        stored_to_shown.push(at.duration_since(stored).unwrap_or_default());
        sent_to_shown.push(at.duration_since(sent).unwrap_or_default());
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let mut r = Report::new(
        "follow",
        format!("follow: `tend events --follow`, {events} events sent one at a time"),
    );
    r.timing("stored -> printed", &stored_to_shown);
    r.timing("send started -> printed", &sent_to_shown);
    Ok(r)
}

/// Every beacon type, at its default interval, as an operator would turn
/// them all on: config files under /etc, the system's logins, a command.
pub const ALL_BEACONS: &str = "\
[[beacon]]\nname = \"etc\"\ntype = \"file\"\npaths = [\"/etc\"]\nrecursive = true\ninclude = [\"*.conf\"]\n\
[[beacon]]\nname = \"cpu\"\ntype = \"cpu\"\n\
[[beacon]]\nname = \"load\"\ntype = \"load\"\n1m = [0.0, 8.0]\n\
[[beacon]]\nname = \"memory\"\ntype = \"memory\"\n\
[[beacon]]\nname = \"swap\"\ntype = \"swap\"\n\
[[beacon]]\nname = \"disk\"\ntype = \"disk\"\n\
[[beacon]]\nname = \"net\"\ntype = \"network\"\n\
[[beacon]]\nname = \"daemons\"\ntype = \"process\"\nnames = [\"sshd\", \"cron\"]\n\
[[beacon]]\nname = \"services\"\ntype = \"service\"\nunits = [\"ssh.service\"]\n\
[[beacon]]\nname = \"conn\"\ntype = \"connection\"\n\
[[beacon]]\nname = \"logins\"\ntype = \"login\"\n\
[[beacon]]\nname = \"uptime\"\ntype = \"command\"\ncommand = \"cat /proc/uptime\"\n\
[[beacon]]\nname = \"heartbeat\"\ntype = \"heartbeat\"\n";

pub fn footprint(seconds: u64) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let c = start(tmp.path())?;
    // A second minion with every beacon, measured over the same window.
    let tmp_all = tempfile::tempdir()?;
    let mut all = Cluster::with(tmp_all.path(), true, ALL_BEACONS)?;
    all.start_master()?;
    all.start_minion()?;
    let window = Duration::from_secs(seconds.max(1));
    let (mpid, npid, apid) = (
        c.master_pid().context("pid")?,
        c.minion_pid().context("pid")?,
        all.minion_pid().context("pid")?,
    );
    // Settle after startup, then measure all over the same window.
    std::thread::sleep(Duration::from_secs(2));
    let minion_cpu_thread = std::thread::spawn(move || cpu_percent(npid, window));
    let all_cpu_thread = std::thread::spawn(move || cpu_percent(apid, window));
    let master_cpu = cpu_percent(mpid, window);
    let minion_cpu = minion_cpu_thread.join().unwrap_or(0.0);
    let all_cpu = all_cpu_thread.join().unwrap_or(0.0);
    let mut r = Report::new(
        "footprint",
        format!("footprint: idle, measured over {seconds} s"),
    );
    r.figure("minion RSS, file beacon", rss_mib(npid), "MiB");
    r.figure("minion CPU, file beacon", minion_cpu, "% of a core");
    r.figure(
        "minion RSS, all 13 beacon types at default intervals",
        rss_mib(apid),
        "MiB",
    );
    r.figure(
        "minion CPU, all 13 beacon types at default intervals",
        all_cpu,
        "% of a core",
    );
    // Without systemd the service beacon says so once and goes idle: the
    // figures above then leave out its `systemctl show` every 10 s.
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    r.figure(
        "  of which the service beacon runs systemctl",
        if systemd {
            "yes"
        } else {
            "no: no systemd here, it is idle"
        },
        "",
    );
    r.figure("master RSS", rss_mib(mpid), "MiB");
    r.figure("master CPU", master_cpu, "% of a core");
    let size = |b: &str| {
        std::fs::metadata(c.bin.join(b)).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
    };
    r.figure("tend-minion binary", size("tend-minion"), "MiB");
    r.figure("tend-master binary", size("tend-master"), "MiB");
    Ok(r)
}

/// What one look of the process beacon costs on a busy box: `extra`
/// sleeping processes are started, then the beacon's incremental look
/// (list /proc, read only new pids' names) is timed against a full scan
/// (read every process's name), side by side.
pub fn processes(extra: usize, looks: usize) -> anyhow::Result<Report> {
    use tend_beacons::Processes;
    let mut children = Vec::new();
    for _ in 0..extra {
        children.push(
            std::process::Command::new("sleep")
                .arg("600")
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let total = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count();
    let mut r = Report::new(
        "processes",
        format!("process beacon: one look with {total} processes running, {looks} looks"),
    );
    let mut incremental = Processes::new(&["sshd", "cron"]);
    incremental.scan().map_err(anyhow::Error::msg)?;
    let reads_before = incremental.reads;
    let mut inc = Vec::new();
    for _ in 0..looks {
        let t = Instant::now();
        incremental.scan().map_err(anyhow::Error::msg)?;
        inc.push(t.elapsed());
    }
    let mut full = Vec::new();
    for _ in 0..looks {
        let t = Instant::now();
        Processes::new(&["sshd", "cron"])
            .scan()
            .map_err(anyhow::Error::msg)?;
        full.push(t.elapsed());
    }
    r.timing("incremental look (the beacon)", &inc);
    r.timing("full process-table scan", &full);
    r.figure(
        "names read per incremental look",
        (incremental.reads - reads_before) as f64 / looks as f64,
        "comm files",
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(r)
}

/// The minion's outbox end to end: `tend-minion send` bursts, until the
/// master acknowledged them all; with fsync on and off, side by side.
pub fn outbox(events: u64) -> anyhow::Result<Report> {
    let mut r = Report::new(
        "outbox",
        format!("outbox: {events} events from one minion, through its outbox to the store"),
    );
    for fsync in [true, false] {
        let tmp = tempfile::tempdir()?;
        let mut c = Cluster::with(
            tmp.path(),
            true,
            &format!("[outbox]\nfsync = {fsync}\nmax_bytes = 1073741824\n"),
        )?;
        c.start_master()?;
        c.start_minion()?;
        let start = Instant::now();
        let out = c.send("bench", events)?;
        if !out.status.success() {
            bail!("send failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let last: u64 = String::from_utf8_lossy(&out.stdout)
            .rsplit("..=")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .context("send output")?;
        let written = start.elapsed();
        wait(Duration::from_secs(600), "every event acknowledged", || {
            Ok(c.minions()?.iter().any(|m| m.acked_seq >= last))
        })?;
        let took = start.elapsed();
        let label = if fsync { "fsync on" } else { "fsync off" };
        r.figure(
            &format!("written to the outbox, {label}"),
            events as f64 / written.as_secs_f64(),
            "events/s",
        );
        r.figure(
            &format!("stored and acknowledged, {label}"),
            events as f64 / took.as_secs_f64(),
            "events/s",
        );
    }
    Ok(r)
}

/// The cost of sealing: the same event batches framed and unframed with
/// and without ChaCha20-Poly1305, in this process, side by side.
pub fn seal(events: u64) -> anyhow::Result<Report> {
    use std::sync::Arc;
    use tend_bus::wire::Channel;
    use tend_bus::wire::{Initiator, Responder};
    let master = Responder::new(Arc::new(tend_bus::Identity::ephemeral()?));
    let (init, hello) = Initiator::start(
        Arc::new(tend_bus::Identity::ephemeral()?),
        "bench",
        tend_proto::v1::PeerKind::Minion,
        "bench",
    )?;
    let opened = init.finish(&master.on_hello(&hello, b"measure")?)?;
    let authed = master.on_auth(&opened.auth, b"measure")?;
    let batch = tend_proto::v1::EventBatch {
        events: (0..200)
            .map(|i| tend_proto::v1::Event {
                minion: "bench".into(),
                seq: i + 1,
                tag: "minion/bench/beacon/file/modified".into(),
                time_us: 1_700_000_000_000_000,
                data: br#"{"path":"/etc/motd","kind":"modified","sha256":"e66919eb5161792e2af07ccb8209a55d12ec869dfa6919eb5161792e2af07ccb"}"#.to_vec(),
                cause: 0,
            })
            .collect(),
        oldest_seq: 1,
    };
    let rounds = (events / 200).max(1);
    let run = |sealed: bool| -> anyhow::Result<f64> {
        let start = Instant::now();
        for _ in 0..rounds {
            let body = batch.encode_to_vec();
            let frame = if sealed {
                opened.session.seal(Channel::Events, &body)
            } else {
                tend_bus::wire::handshake_frame(&body)
            };
            let (h, b) = tend_bus::wire::decode(&frame, 64 << 20)?;
            let plain = if sealed {
                authed.session.open(Channel::Events, &h, b)?
            } else {
                b.to_vec()
            };
            let back = tend_proto::v1::EventBatch::decode(plain.as_slice())?;
            std::hint::black_box(back);
        }
        Ok((rounds * 200) as f64 / start.elapsed().as_secs_f64())
    };
    // Interleaved, three times each, the best of each kept: the machine
    // is shared and noisy.
    let (mut plain, mut sealed) = (0f64, 0f64);
    for _ in 0..3 {
        plain = plain.max(run(false)?);
        sealed = sealed.max(run(true)?);
    }
    let mut r = Report::new(
        "seal",
        "seal: encode + frame + decode of 200-event batches, one core, with and without sealing",
    );
    r.figure("without sealing", plain, "events/s");
    r.figure("with sealing", sealed, "events/s");
    r.figure(
        "cost of sealing",
        (1.0 - sealed / plain) * 100.0,
        "% of throughput",
    );
    Ok(r)
}

/// The minion's side of an apply: `count` `file.managed` states, run once
/// to create the files, then timed while they are already correct (the
/// engine compares contents, mode and owner; it does not rewrite).
pub fn states(count: usize, runs: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&format!(
            "[f{i}]\ntype = \"file.managed\"\npath = \"{}/f{i}.conf\"\ncontents = \"setting_{i} = {}\\n\"\nmode = \"0644\"\n\n",
            dir.path().display(),
            "x".repeat(200)
        ));
    }
    let set = tend_state::parse_state_file("bench.toml", "bench", &text)?;
    let ledger = tend_state::Ledger::default();
    let opts = tend_state::ApplyOptions {
        test: false,
        job: 1,
        ledger: Some(&ledger),
        backup_dir: None,
    };
    let first = Instant::now();
    tend_state::apply(&set, &opts);
    let created = first.elapsed();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let results = tend_state::apply(&set, &opts);
        samples.push(start.elapsed());
        if results
            .iter()
            .any(|r| r.outcome != tend_proto::v1::Outcome::Ok as i32)
        {
            bail!("a state that was correct reported a change");
        }
    }
    let mut r = Report::new(
        "states",
        format!("states: {count} file.managed states, already correct, {runs} runs"),
    );
    r.timing(&format!("apply {count} correct states"), &samples);
    r.figure(
        "first apply (creating them)",
        created.as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(r)
}

/// The reactor alone: events per second through tag matching and CEL
/// conditions with 10, 100 and 1,000 rules, in this process (each event
/// matches one rule in a hundred and evaluates both clauses of its
/// condition; the ingest benchmark's workload).
pub fn rules(events: usize) -> anyhow::Result<Report> {
    crate::workload::check()?;
    let mut r = Report::new(
        "rules",
        format!("rules: {events} events through the reactor, one core"),
    );
    let batch: Vec<tend_proto::v1::Event> = (0..events)
        .map(|i| tend_proto::v1::Event {
            minion: format!("web{}", i % 50),
            seq: i as u64 + 1,
            tag: format!("minion/web{}/event/bench/{}", i % 50, i % 100),
            time_us: 1,
            data: crate::workload::data(i as u64 + 1),
            cause: 0,
        })
        .collect();
    for n in [10, 100, 1000] {
        let text = crate::workload::rules(n, "fire = \"x\"");
        let rules = std::sync::Arc::new(tend_reactor::Rules::from_texts(&[(
            "bench.toml".into(),
            text,
        )])?);
        let mut reactor = tend_reactor::Reactor::new(rules);
        let now = tokio::time::Instant::now();
        let start = Instant::now();
        let mut fired = 0;
        for e in &batch {
            fired += reactor.on_event(e, now).len();
        }
        let took = start.elapsed();
        if fired != 0 {
            bail!("conditions that are never true fired {fired} times");
        }
        r.figure(
            &format!("{n} rules"),
            events as f64 / took.as_secs_f64(),
            "events/s",
        );
    }
    Ok(r)
}
