//! Daemon start to ready: master start -> control socket answers; minion
//! start -> first answered ping.

use super::prelude::*;

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
