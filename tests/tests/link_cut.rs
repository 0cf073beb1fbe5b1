//! A long cut of the network between a minion and its master: the minion
//! in its own network namespace behind a veth pair, every packet dropped
//! both ways for 60 s (and 120 s) while it keeps producing events. Within 5 s of the
//! heal the master must have every event, and the minion must not have
//! grown past 32 MB on the way (no resend storm piling up in its queues).
//!
//! This kernel has no netem and no iptables: the cut is a `pfifo` qdisc of
//! length 0 on the router namespace's interfaces, which drops every packet
//! it forwards, silently to both ends, as an iptables DROP rule there
//! would. Where namespaces cannot be made (not
//! root, no `ip`), the test prints "skipped: <reason>".

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tend_e2e::{Master, Minion, bin, wait_until};

const CONVERGED_WITHIN: Duration = Duration::from_secs(5);
const RSS_LIMIT_KB: u64 = 32 * 1024;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The minion's network namespace, joined to this one (the master's)
/// through a router namespace: master -- veth -- router -- veth -- minion.
/// The cut drops packets in the router, so neither end's TCP hears of it
/// (a drop on an end's own interface would be reported to its sender).
/// Removed when dropped.
struct Netns {
    name: String,
    router: String,
    outer: String,
    router_links: [String; 2],
    master_ip: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let x = id % 250;
        let n = Self {
            name: format!("tend-cut-{id}"),
            router: format!("tend-rtr-{id}"),
            outer: format!("tco{id}"),
            router_links: [format!("tcr{id}"), format!("tcs{id}")],
            master_ip: format!("10.213.{x}.1"),
        };
        let (ns, rt) = (n.name.as_str(), n.router.as_str());
        let inner = format!("tci{id}");
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "netns", "add", rt])?;
        let [r1, r2] = &n.router_links;
        run(&[
            "ip", "link", "add", &n.outer, "type", "veth", "peer", "name", r1, "netns", rt,
        ])?;
        run(&[
            "ip", "netns", "exec", rt, "ip", "link", "add", r2, "type", "veth", "peer", "name",
            &inner, "netns", ns,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", n.master_ip),
            "dev",
            &n.outer,
        ])?;
        run(&["ip", "link", "set", &n.outer, "up"])?;
        run(&[
            "ip",
            "route",
            "add",
            &format!("10.214.{x}.0/24"),
            "via",
            &format!("10.213.{x}.254"),
        ])?;
        let in_rt = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", rt];
            all.extend_from_slice(args);
            run(&all)
        };
        in_rt(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{x}.254/24"),
            "dev",
            r1,
        ])?;
        in_rt(&[
            "ip",
            "addr",
            "add",
            &format!("10.214.{x}.254/24"),
            "dev",
            r2,
        ])?;
        in_rt(&["ip", "link", "set", r1, "up"])?;
        in_rt(&["ip", "link", "set", r2, "up"])?;
        in_rt(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend_from_slice(args);
            run(&all)
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("10.214.{x}.2/24"),
            "dev",
            &inner,
        ])?;
        in_ns(&["ip", "link", "set", &inner, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.214.{x}.254"),
        ])?;
        // Check now that the cut can be made (and undone).
        n.cut()?;
        n.heal()?;
        Ok(n)
    }

    /// Every packet dropped in the router, both ways.
    fn cut(&self) -> Result<(), String> {
        for link in &self.router_links {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.router,
                "tc",
                "qdisc",
                "add",
                "dev",
                link,
                "root",
                "pfifo",
                "limit",
                "0",
            ])?;
        }
        Ok(())
    }

    fn heal(&self) -> Result<(), String> {
        for link in &self.router_links {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.router,
                "tc",
                "qdisc",
                "del",
                "dev",
                link,
                "root",
            ])?;
        }
        Ok(())
    }

    /// Starts the minion configured in `dir` inside the namespace.
    fn start_minion(&self, dir: &Path) -> Child {
        let log = std::fs::File::create(dir.join("minion.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(bin("tend-minion"))
            .arg("--config")
            .arg(dir.join("minion.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the minion in its namespace");
        let socket = dir.join("data/minion.sock");
        wait_until(Duration::from_secs(20), "the minion's local socket", || {
            socket.exists().then_some(())
        });
        child
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "netns", "del", &self.router]);
        let _ = run(&["ip", "link", "del", &self.outer]);
    }
}

/// Kills the child when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn acked(master: &Master, id: &str) -> u64 {
    master
        .tend_json(&["minions"])
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["acked_seq"].as_u64())
        .unwrap_or(0)
}

#[test]
fn after_a_60_s_cut_the_master_has_every_event_within_5_s_of_the_heal() {
    cut_and_heal(Duration::from_secs(60));
}

#[test]
fn after_a_120_s_cut_the_master_has_every_event_within_5_s_of_the_heal() {
    cut_and_heal(Duration::from_secs(120));
}

fn cut_and_heal(cut: Duration) {
    let net = match Netns::create() {
        Ok(n) => n,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    // The master on the veth address, with the default heartbeat and
    // presence timeout (what a real deployment has).
    let config = std::fs::read_to_string(master.config())
        .unwrap()
        .replace("tcp://127.0.0.1:", &format!("tcp://{}:", net.master_ip))
        .replace("heartbeat_ms = 200\n", "")
        .replace("presence_timeout_ms = 1000\n", "");
    std::fs::write(master.config(), config).unwrap();
    let events = master.event_endpoint.replace("127.0.0.1", &net.master_ip);
    let commands = master.command_endpoint.replace("127.0.0.1", &net.master_ip);
    master.start();
    let minion = Minion::with_endpoints(&tmp.path().join("m1"), "m1", &events, &commands, "");
    // The default master_timeout too.
    let minion_toml = minion.dir.join("minion.toml");
    let config = std::fs::read_to_string(&minion_toml)
        .unwrap()
        .replace("master_timeout_ms = 1000\n", "");
    std::fs::write(&minion_toml, config).unwrap();
    let child = Kill(net.start_minion(&minion.dir));
    let pid = child.0.id();
    master.wait_connected("m1");

    // Events all along, about 1,000 a second (60,000 written during the
    // cut, for the master to take in after the heal).
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, last) = (stop.clone(), last.clone());
        let dir = minion.dir.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = Command::new(bin("tend-minion"))
                    .arg("--config")
                    .arg(dir.join("minion.toml"))
                    .args(["send", "cut", "{}", "--count", "100"])
                    .output()
                    .expect("run tend-minion send");
                assert!(
                    out.status.success(),
                    "send failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                if let Some(seq) = text
                    .rsplit("..=")
                    .next()
                    .and_then(|s| s.trim().parse().ok())
                {
                    last.store(seq, Ordering::SeqCst);
                }
                // Pacing the load, not waiting for a condition.
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kb(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    wait_until(
        Duration::from_secs(30),
        "events flowing before the cut",
        || (acked(&master, "m1") > 500).then_some(()),
    );

    net.cut().unwrap();
    std::thread::sleep(cut);
    net.heal().unwrap();
    let healed = Instant::now();
    let healed_at = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    // Whatever was sent up to the heal must arrive.
    let target = last.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(150),
        "every event sent up to the heal acknowledged",
        || (acked(&master, "m1") >= target).then_some(()),
    );
    let took = healed.elapsed();
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    println!(
        "converged {took:?} after the heal; minion peak RSS {} kB",
        peak
    );
    // Shown with --nocapture, or when the test fails: where the time went.
    println!("healed at {healed_at} (UTC)");
    for log in [minion.dir.join("minion.log"), master.dir.join("master.log")] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        println!(
            "--- the end of {}:\n{}",
            log.display(),
            lines[from..].join("\n")
        );
    }
    assert!(
        took <= CONVERGED_WITHIN,
        "the master had every event only {took:?} after the heal of a {cut:?} cut"
    );
    assert!(
        peak < RSS_LIMIT_KB,
        "the minion's RSS peaked at {peak} kB (limit {RSS_LIMIT_KB} kB)"
    );
}
