//! Healing while cut off (issue 17): drift -> restored with the master,
//! then, the master stopped, restored by the minion itself from its
//! standing orders, side by side in one run; and the minion's footprint
//! while it enforces (its local reactor, CEL included, loaded).

use super::prelude::*;

pub fn autonomy(edits: usize, seconds: u64) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let mut c = Cluster::with(
        tmp.path(),
        true,
        "master_timeout_ms = 1000\nautonomy_after_ms = 300\n",
    )?;
    // The restore rule with a CEL condition, so that the minion's figures
    // while it enforces include the CEL engine compiled and running.
    std::fs::write(
        tmp.path().join("master/reactor.d/restore-motd.toml"),
        "[[rule]]\nname = \"restore-motd\"\non = \"minion/*/beacon/motd/*\"\n\
         when = 'event.data.path != \"\" && event.minion == \"demo-minion\"'\n\n\
         [[rule.action]]\napply = [\"motd\"]\n",
    )?;
    c.start_master()?;
    c.start_minion()?;
    let out = c.tend(&["apply", "demo-minion", "motd"])?;
    if !out.status.success() {
        bail!(
            "the first apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let orders = tmp.path().join("minion/data/orders");
    wait(
        Duration::from_secs(20),
        "the minion's standing orders",
        || Ok(orders.exists()),
    )?;
    let pid = c.minion_pid().context("minion pid")?;
    // With the master: the same edits, timed the same way.
    let mut with_master = Vec::new();
    for i in 0..edits + 5 {
        let (r, _, _) = one_edit(&c, || Ok(hand_write(&c.managed, &format!("drift {i}\n"))?))?;
        if i >= 5 {
            with_master.push(r);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_standing_by = rss_mib(pid);
    c.stop_master();
    let log = tmp.path().join("minion/minion.log");
    wait(Duration::from_secs(20), "the minion to enforce", || {
        Ok(std::fs::read_to_string(&log)?.contains("enforcing the standing orders here"))
    })?;
    let mut local = Vec::new();
    for i in 0..edits + 5 {
        hand_write(&c.managed, &format!("cut off {i}\n"))?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(10);
        let restored = loop {
            if c.is_managed() {
                break t0.elapsed();
            }
            if Instant::now() > deadline {
                bail!("the minion did not restore the file within 10 s");
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        if i >= 5 {
            local.push(restored);
        }
        // The restore's own write settles (its event is the job's) before
        // the next edit, as with the master.
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_percent(pid, Duration::from_secs(seconds.max(1)));
    let mut r = Report::new(
        "autonomy",
        format!(
            "drift -> restored with the master, then by the minion itself cut off; {edits} edits each"
        ),
    );
    r.timing("with the master: write -> restored", &with_master);
    r.timing("cut off, local: write -> restored", &local);
    r.figure(
        "minion RSS, orders loaded, standing by",
        rss_standing_by,
        "MiB",
    );
    r.figure(
        "minion RSS, enforcing (rules and CEL compiled and run), after the local jobs",
        rss_mib(pid),
        "MiB",
    );
    r.figure(
        format!("minion CPU, enforcing, idle {seconds} s").as_str(),
        cpu,
        "% of a core",
    );
    Ok(r)
}
