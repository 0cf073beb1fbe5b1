//! Retention: events and finished jobs older than `retention`, and events
//! beyond `max_events`, are removed from the store, a few thousand per
//! transaction so ingestion never waits long behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::master::{Master, add};

/// Records removed per store transaction.
const BATCH: usize = 5_000;
/// How often to look when only `max_events` is set, and at most.
const EVERY_MAX: Duration = Duration::from_secs(600);
const EVERY_MIN: Duration = Duration::from_secs(1);

pub async fn run(master: Arc<Master>, shutdown: CancellationToken) {
    // Validated when the config was loaded.
    let retention = master.cfg.retention_period().unwrap_or(None);
    let max_events = master.cfg.max_events;
    if retention.is_none() && max_events.is_none() {
        return;
    }
    // A tenth of the retention: nothing lives much more than 10 % longer
    // than asked.
    let every = retention.map_or(Duration::from_secs(60), |r| {
        (r / 10).clamp(EVERY_MIN, EVERY_MAX)
    });
    loop {
        prune_once(&master, retention, max_events).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn prune_once(master: &Master, retention: Option<Duration>, max_events: Option<u64>) {
    let before_us = retention.map_or(0, |r| {
        tend_proto::now_us().saturating_sub(r.as_micros().min(i64::MAX as u128) as i64)
    });
    let (mut events, mut jobs) = (0, 0);
    loop {
        let store = master.store.clone();
        match tokio::task::spawn_blocking(move || store.prune_events(before_us, max_events, BATCH))
            .await
        {
            Ok(Ok(n)) => {
                events += n;
                if n < BATCH {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot remove old events");
                break;
            }
            Err(_) => break,
        }
    }
    if retention.is_some() {
        loop {
            let store = master.store.clone();
            match tokio::task::spawn_blocking(move || store.prune_jobs(before_us, BATCH)).await {
                Ok(Ok(n)) => {
                    jobs += n;
                    if n < BATCH {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot remove old jobs");
                    break;
                }
                Err(_) => break,
            }
        }
    }
    add(&master.counters.events_pruned, events as u64);
    add(&master.counters.jobs_pruned, jobs as u64);
    if events > 0 || jobs > 0 {
        tracing::info!(
            events,
            jobs,
            retention = %master.cfg.retention,
            max_events = ?max_events,
            "removed what is past retention"
        );
    }
}
