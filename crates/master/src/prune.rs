//! Retention: events and finished jobs older than `retention`, and events
//! beyond `max_events`, are removed from the store, a few thousand per
//! transaction so ingestion never waits long behind it. Events the reactor
//! has not evaluated yet are never removed: they wait for it.

use std::sync::Arc;
use std::time::Duration;

use tend_store::{Pruned, StoreError};
use tokio_util::sync::CancellationToken;

use crate::stats::{Stats, add};
use crate::store::{Backend, Storage};

/// What pruning needs: the store, and how long and how much to keep.
pub struct Retention {
    pub storage: Arc<Storage>,
    pub stats: Arc<Stats>,
    /// `retention` as written in master.toml, for the log.
    pub retention: String,
    /// `retention`; None keeps events forever.
    pub period: Option<Duration>,
    /// At most this many events are kept.
    pub max_events: Option<u64>,
}

/// Records removed per store transaction.
const BATCH: usize = 5_000;
/// How often to look when only `max_events` is set, and at most.
const EVERY_MAX: Duration = Duration::from_secs(600);
const EVERY_MIN: Duration = Duration::from_secs(1);

impl Retention {
    /// Prunes now and then until `shutdown`; returns at once when there is
    /// nothing to prune (no retention, no `max_events`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let retention = self.period;
        let max_events = self.max_events;
        if retention.is_none() && max_events.is_none() {
            return;
        }
        // A tenth of the retention: nothing lives much more than 10 % longer
        // than asked.
        let every = retention.map_or(Duration::from_secs(60), |r| {
            (r / 10).clamp(EVERY_MIN, EVERY_MAX)
        });
        loop {
            self.prune_once(retention, max_events).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn prune_once(&self, retention: Option<Duration>, max_events: Option<u64>) {
        let before_us = retention.map_or(0, |r| {
            tend_proto::now_us().saturating_sub(r.as_micros().min(i64::MAX as u128) as i64)
        });
        let events = self
            .in_batches("events", move |store| {
                store.prune_events(before_us, max_events, BATCH)
            })
            .await;
        let jobs = if retention.is_some() {
            self.in_batches("jobs", move |store| {
                store.prune_jobs(before_us, BATCH).map(|removed| Pruned {
                    removed,
                    held_for_reactor: false,
                })
            })
            .await
        } else {
            Pruned::default()
        };
        add(&self.stats.counters.events_pruned, events.removed as u64);
        add(&self.stats.counters.jobs_pruned, jobs.removed as u64);
        if events.removed > 0 || jobs.removed > 0 {
            tracing::info!(
                events = events.removed,
                jobs = jobs.removed,
                retention = %self.retention,
                max_events = ?max_events,
                "removed what is past retention"
            );
        }
        // Events are removed only once reacted to: a reactor behind (or held
        // back by a failing store) keeps them, and the store grows past its
        // limits until it catches up.
        if events.held_for_reactor {
            tracing::warn!(
                reactor_queue = self.storage.reactor_backlog(),
                retention = %self.retention,
                max_events = ?max_events,
                "events past retention are kept until the reactor has evaluated them"
            );
        }
    }

    /// Runs one pruning step on the blocking pool until it removes less than a
    /// whole batch (or fails, which is logged); returns how many went, and
    /// whether some were kept for the reactor.
    async fn in_batches(
        &self,
        what: &str,
        step: impl Fn(&dyn Backend) -> Result<Pruned, StoreError> + Clone + Send + 'static,
    ) -> Pruned {
        let mut out = Pruned::default();
        loop {
            let (store, step) = (self.storage.backend(), step.clone());
            match tokio::task::spawn_blocking(move || step(store.as_ref())).await {
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
}
