//! The master's Prometheus metrics (`metrics_listen` in master.toml): what
//! it stored and refused, what the reactor did, queue depths, job
//! durations, connected minions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tend_daemon::metrics::{Histogram, Render, Text};

use crate::master::Master;

/// What the master measures beyond its counters.
#[derive(Default)]
pub struct MasterMetrics {
    /// How long jobs took, by kind.
    pub apply_seconds: Histogram,
    pub run_seconds: Histogram,
    /// The id of the last stored event the reactor evaluated: the events
    /// after it, up to the last stored, wait for it.
    pub reactor_cursor: AtomicU64,
    /// Messages from the bus waiting to be stored, when last looked at.
    pub ingest_queue: AtomicU64,
}

impl MasterMetrics {
    pub fn job_finished(&self, kind: &str, took: std::time::Duration) {
        match kind {
            "apply" => self.apply_seconds.observe(took),
            "run" => self.run_seconds.observe(took),
            _ => {}
        }
    }
}

/// Help text for each of the master's counters.
fn help(name: &str) -> &'static str {
    match name {
        "events_stored" => "Events written to the store.",
        "events_duplicate" => "Events received again after they were stored (replays).",
        "events_lost" => "Events minions no longer held when the master asked for them.",
        "reactions" => "Rules that matched an event and acted.",
        "reactions_throttled" => "Actions a throttle (once_within, max_rate) held back.",
        "reactions_coalesced" => "Reactions folded into an apply already running or pending.",
        "jobs_started" => "Jobs started (applies and runs, by hand or by rules).",
        "jobs_failed" => "Jobs in which some minion failed or did not answer.",
        "local_events_dropped" => {
            "Master events dropped: the ingest queue was full, or the store refused writes."
        }
        "reactor_groups_evicted" => {
            "Reactor groups forgotten to stay under a rule's max_groups (oldest first)."
        }
        "actions_refused" => "Rule actions refused because the action queue was full.",
        "store_failures" => "Store writes that failed (a full disk, an I/O error).",
        "jobs_interrupted" => {
            "Jobs found unfinished at start (the master stopped) and marked interrupted."
        }
        "events_evaluated" => "Stored events the reactor evaluated against the rules.",
        "events_pruned" => "Events removed: past retention, or beyond max_events.",
        "jobs_pruned" => "Finished jobs removed: past retention.",
        _ => "A tend-master counter.",
    }
}

pub fn render(master: Weak<Master>) -> Render {
    Arc::new(move |t: &mut Text| {
        let Some(m) = master.upgrade() else { return };
        for (name, value) in m.counters.snapshot() {
            t.counter(&format!("tend_master_{name}_total"), help(name), value);
        }
        t.counter_set("tend_master_bus", "Bus", m.bus_stats.snapshot());
        t.counter(
            "tend_master_pending_keys_dropped_total",
            "Pending keys dropped, oldest first, to stay under the cap (tend_bus::MAX_PENDING per kind).",
            m.keys.pending_dropped(),
        );
        t.gauge(
            "tend_master_minions_connected",
            "Minions with a live session.",
            m.bus.connected().len() as f64,
        );
        let known = m.minions.lock().map(|k| k.len()).unwrap_or(0);
        t.gauge(
            "tend_master_minions_known",
            "Minions the master has heard from.",
            known as f64,
        );
        t.gauge(
            "tend_master_rules",
            "Reactor rules in force.",
            m.rules().len() as f64,
        );
        t.gauge(
            "tend_master_reactor_queue",
            "Stored events waiting for the reactor.",
            m.reactor_backlog() as f64,
        );
        t.gauge(
            "tend_master_actions_running",
            "Rule actions (runs, applies, webhooks) running.",
            m.actions.running() as f64,
        );
        t.gauge(
            "tend_master_actions_waiting",
            "Rule actions waiting for one of max_actions.",
            m.actions.waiting() as f64,
        );
        t.gauge(
            "tend_master_store_failing",
            "1 while the store refuses writes (events are not acknowledged), else 0.",
            if m.store_failing().is_some() {
                1.0
            } else {
                0.0
            },
        );
        t.gauge(
            "tend_master_ingest_queue",
            "Messages from minions waiting to be stored.",
            m.metrics.ingest_queue.load(Ordering::Relaxed) as f64,
        );
        let local = m.local.max_capacity() - m.local.capacity();
        t.gauge(
            "tend_master_local_queue",
            "Events the master made itself, waiting to be stored.",
            local as f64,
        );
        t.gauge(
            "tend_master_last_event_id",
            "Store id of the last event stored.",
            *m.stored.borrow() as f64,
        );
        t.histograms(
            "tend_master_job_duration_seconds",
            "How long jobs took, from start to the last minion's answer.",
            "kind",
            &[
                ("apply", &m.metrics.apply_seconds),
                ("run", &m.metrics.run_seconds),
            ],
        );
    })
}
