//! What the master counts and measures: the counters `tend status` and the
//! metrics endpoint show, job durations, the ingest queue's depth. One
//! [`Stats`] is shared by every component; each adds what it did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tend_daemon::metrics::Histogram;

macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Default)]
        pub struct $name { $($(#[$fm])* pub $field: AtomicU64,)* }
        impl $name {
            /// Every counter, by name, as it stands.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// What the master itself counted.
    pub struct Counters {
        /// Events written to the store.
        events_stored,
        /// Events received again after they were stored (replays).
        events_duplicate,
        /// Events minions no longer held when the master asked for them.
        events_lost,
        /// Rules that matched an event and acted.
        reactions,
        /// Actions a throttle (once_within, max_rate) held back.
        reactions_throttled,
        /// Reactions folded into an apply already running or pending for
        /// the same minion and states.
        reactions_coalesced,
        /// Jobs started.
        jobs_started,
        /// Jobs in which some minion failed or did not answer.
        jobs_failed,
        /// Local events dropped: the ingest queue was full, or the store
        /// refused writes and more waited than are kept.
        local_events_dropped,
        /// Stored events the reactor evaluated against the rules.
        events_evaluated,
        /// Reactor groups forgotten to stay under a rule's `max_groups`.
        reactor_groups_evicted,
        /// Rule actions refused because the action queue was full.
        actions_refused,
        /// Store transactions that failed (a full disk, an I/O error).
        store_failures,
        /// Jobs found unfinished at start and marked interrupted.
        jobs_interrupted,
        /// Events removed: past `retention`, or beyond `max_events`.
        events_pruned,
        /// Finished jobs removed: past `retention`.
        jobs_pruned,
    }
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The master's counters and measurements.
#[derive(Default)]
pub struct Stats {
    pub counters: Counters,
    /// How long applies took.
    pub apply_seconds: Histogram,
    /// How long runs took.
    pub run_seconds: Histogram,
    /// Messages from the bus waiting to be stored, when last looked at.
    pub ingest_queue: AtomicU64,
}

impl Stats {
    /// Records how long a job of `kind` took.
    pub fn job_finished(&self, kind: &str, took: Duration) {
        match kind {
            "apply" => self.apply_seconds.observe(took),
            "run" => self.run_seconds.observe(took),
            _ => {}
        }
    }
}
