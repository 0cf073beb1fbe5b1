//! Idle footprint: RSS and CPU of a minion (file beacon; every beacon
//! type) and of the master.

use super::prelude::*;

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
