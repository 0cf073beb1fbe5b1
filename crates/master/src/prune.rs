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
    let events = in_batches(master, "events", move |store| {
        store.prune_events(before_us, max_events, BATCH)
    })
    .await;
    let jobs = if retention.is_some() {
        in_batches(master, "jobs", move |store| {
            store.prune_jobs(before_us, BATCH)
        })
        .await
    } else {
        0
    };
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

/// Runs one pruning step on the blocking pool until it removes less than a
/// whole batch (or fails, which is logged); returns how many went.
async fn in_batches(
    master: &Master,
    what: &str,
    step: impl Fn(&tend_store::Store) -> Result<usize, tend_store::StoreError> + Clone + Send + 'static,
) -> usize {
    let mut removed = 0;
    loop {
        let (store, step) = (master.store.clone(), step.clone());
        match tokio::task::spawn_blocking(move || step(&store)).await {
            Ok(Ok(n)) => {
                removed += n;
                if n < BATCH {
                    return removed;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot remove old {what}");
                return removed;
            }
            Err(_) => return removed,
        }
    }
}
