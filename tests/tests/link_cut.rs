//! A long cut of the network between a minion and its master: the minion
//! in its own network namespace behind a veth pair, every packet dropped
//! both ways for 60 s (and 120 s) while it keeps producing events. Within 5 s of the
//! heal the master must have every event, and the minion must not have
//! grown past 32 MB on the way (no resend storm piling up in its queues).
//!
//! The namespaces and the cut are `tend_e2e::netns::Netns`: packets
//! dropped in a router namespace between the two, silently to both ends
//! (an iptables DROP rule where iptables works, else a `pfifo` qdisc of
//! length 0: this kernel has no netem). Where namespaces cannot be made
//! (not root, no `ip`), the test prints "skipped: <reason>".

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tend_e2e::netns::Netns;
use tend_e2e::{Master, Minion, bin, wait_until};

const CONVERGED_WITHIN: Duration = Duration::from_secs(5);
const RSS_LIMIT_KB: u64 = 32 * 1024;

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
    let Some(net) = Netns::create_or_skip() else {
        return;
    };
    println!("the cut: {:?}", net.cut_by());
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    // The master on the veth address, with the default heartbeat and
    // presence timeout (what a real deployment has).
    let config = std::fs::read_to_string(master.config())
        .unwrap()
        .replace("tcp://127.0.0.1:", &format!("tcp://{}:", net.master_ip()))
        .replace("heartbeat_ms = 200\n", "")
        .replace("presence_timeout_ms = 1000\n", "");
    std::fs::write(master.config(), config).unwrap();
    let events = master.event_endpoint.replace("127.0.0.1", net.master_ip());
    let commands = master
        .command_endpoint
        .replace("127.0.0.1", net.master_ip());
    master.start();
    let minion = Minion::with_endpoints(&tmp.path().join("m1"), "m1", &events, &commands, "");
    // The default master_timeout too.
    let minion_toml = minion.dir.join("minion.toml");
    let config = std::fs::read_to_string(&minion_toml)
        .unwrap()
        .replace("master_timeout_ms = 1000\n", "");
    std::fs::write(&minion_toml, config).unwrap();
    let daemon = net.start_minion(&minion.dir);
    let pid = daemon.child.id();
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
