//! A master alone, with a fleet of simulated minions on it.

use super::prelude::*;

pub(super) fn master_only(dir: &std::path::Path, rules: usize) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(dir, true)?;
    c.bench_rules(rules)?;
    c.start_master()?;
    Ok(c)
}

pub(super) fn fleet(c: &Cluster, count: usize, events_per_sim: u64) -> anyhow::Result<Fleet> {
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
pub(super) fn wait_fleet(
    c: &Cluster,
    f: &Fleet,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
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
