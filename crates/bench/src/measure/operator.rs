//! What an operator waits for: one `tend apply`, and `tend events
//! --follow` printing an event.

use super::prelude::*;

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
