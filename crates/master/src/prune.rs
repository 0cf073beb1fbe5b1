//! Retention: events and finished jobs older than `retention`, and events
//! beyond `max_events`, are removed from the store, a few thousand per
//! transaction so ingestion never waits long behind it. Events the reactor
//! has not evaluated yet are never removed: they wait for it.

use std::sync::Arc;
use std::time::Duration;

use tend_store::{Pruned, Store, StoreError};
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
            store.prune_jobs(before_us, BATCH).map(|removed| Pruned {
                removed,
                held_for_reactor: false,
            })
        })
        .await
    } else {
        Pruned::default()
    };
    add(&master.counters.events_pruned, events.removed as u64);
    add(&master.counters.jobs_pruned, jobs.removed as u64);
    if events.removed > 0 || jobs.removed > 0 {
        tracing::info!(
            events = events.removed,
            jobs = jobs.removed,
            retention = %master.cfg.retention,
            max_events = ?max_events,
            "removed what is past retention"
        );
    }
    // Events are removed only once reacted to: a reactor behind (or held
    // back by a failing store) keeps them, and the store grows past its
    // limits until it catches up.
    if events.held_for_reactor {
        tracing::warn!(
            reactor_queue = master.reactor_backlog(),
            retention = %master.cfg.retention,
            max_events = ?max_events,
            "events past retention are kept until the reactor has evaluated them"
        );
    }
}

/// Runs one pruning step on the blocking pool until it removes less than a
/// whole batch (or fails, which is logged); returns how many went, and
/// whether some were kept for the reactor.
async fn in_batches(
    master: &Master,
    what: &str,
    step: impl Fn(&Store) -> Result<Pruned, StoreError> + Clone + Send + 'static,
) -> Pruned {
    let mut out = Pruned::default();
    loop {
        let (store, step) = (master.store.clone(), step.clone());
        match tokio::task::spawn_blocking(move || step(&store)).await {
            Ok(Ok(n)) => {
                out.removed += n.removed;
                out.held_for_reactor |= n.held_for_reactor;
                if n.removed < BATCH {
                    return out;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot remove old {what}");
                return out;
            }
            Err(_) => return out,
        }
    }
}
