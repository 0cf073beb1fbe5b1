//! Hand edits of the managed file, and the story the events tell about
//! each: shared by the demo and the drift benchmark.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tend_proto::v1::StoredEvent;

use crate::cluster::{Cluster, wait};

/// After a hand edit at `written_us`: the edit's beacon event, the job it
/// triggered, and the job's own (caused) write, once all are stored.
pub struct Story {
    pub edit: StoredEvent,
    pub job: u64,
}

fn story(events: &[StoredEvent]) -> Option<Story> {
    let ev = |e: &StoredEvent| e.event.clone().unwrap_or_default();
    let edit = events
        .iter()
        .find(|e| ev(e).tag.contains("/beacon/motd/") && ev(e).cause == 0)?;
    let edit_seq = ev(edit).seq;
    let job = events.iter().find_map(|e| {
        let e = ev(e);
        if !e.tag.contains("/job/") {
            return None;
        }
        let data: serde_json::Value = serde_json::from_slice(&e.data).ok()?;
        (data["trigger_seq"] == edit_seq).then(|| data["job"].as_u64())?
    })?;
    events.iter().any(|e| ev(e).cause == job).then(|| Story {
        edit: edit.clone(),
        job,
    })
}

fn last_id(c: &Cluster) -> anyhow::Result<u64> {
    Ok(c.events_after(0)?.last().map_or(0, |e| e.id))
}

/// Makes one hand edit and waits for it to be undone. Returns (write ->
/// restored, write -> event stored, the story).
pub fn one_edit(
    c: &Cluster,
    edit: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration, Story)> {
    let after = last_id(c)?;
    let written_us = tend_proto::now_us();
    let t0 = Instant::now();
    edit()?;
    // Spin on the file itself: what a user would see.
    let deadline = t0 + Duration::from_secs(10);
    let restored = loop {
        if c.is_managed() {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the file was not restored within 10 s");
        }
        std::thread::sleep(Duration::from_micros(20));
    };
    let mut found = None;
    wait(
        Duration::from_secs(10),
        "the edit, the job and the restore to be stored",
        || {
            found = story(&c.events_after(after)?);
            Ok(found.is_some())
        },
    )?;
    let story = found.context("story")?;
    let stored = Duration::from_micros((story.edit.stored_us - written_us).max(0) as u64);
    if std::env::var_os("TEND_BENCH_DEBUG").is_some() {
        let emitted = story.edit.event.as_ref().map_or(0, |e| e.time_us);
        eprintln!(
            "emit {} stored {}",
            emitted - written_us,
            story.edit.stored_us - emitted
        );
    }
    Ok((restored, stored, story))
}

pub fn start(dir: &std::path::Path) -> anyhow::Result<Cluster> {
    let mut c = Cluster::new(dir, true)?;
    c.start_master()?;
    c.start_minion()?;
    let out = c.tend(&["apply", "demo-minion", "motd"])?;
    if !out.status.success() {
        bail!(
            "the first apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(c)
}
