//! The master under a fleet of simulated minions: ingest, fan-out, scale,
//! restart.

use super::prelude::*;

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
