//! The master's Prometheus metrics (`metrics_listen` in master.toml): what
//! it stored and refused, what the reactor did, queue depths, job
//! durations, connected minions.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tend_bus::{BusStats, KeyStore, MasterBus};
use tend_daemon::metrics::{Render, Text};

use crate::actions::ActionLimit;
use crate::emit::Emitter;
use crate::minions::Minions;
use crate::rules::RuleSet;
use crate::stats::Stats;
use crate::store::Storage;

/// What the metrics endpoint reads, from every component.
pub struct MetricsView {
    pub stats: Arc<Stats>,
    pub bus_stats: Arc<BusStats>,
    pub bus: Arc<MasterBus>,
    pub keys: Arc<KeyStore>,
    pub minions: Arc<Minions>,
    pub rules: Arc<RuleSet>,
    pub storage: Arc<Storage>,
    pub actions: Arc<ActionLimit>,
    /// The master's own events waiting to be stored.
    pub emitter: Emitter,
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

/// The metrics, read at each scrape, while the master lives.
pub fn render(view: Weak<MetricsView>) -> Render {
    Arc::new(move |t: &mut Text| {
        let Some(m) = view.upgrade() else { return };
        for (name, value) in m.stats.counters.snapshot() {
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
        let known = m.minions.count();
        t.gauge(
            "tend_master_minions_known",
            "Minions the master has heard from.",
            known as f64,
        );
        t.gauge(
            "tend_master_rules",
            "Reactor rules in force.",
            m.rules.current().len() as f64,
        );
        let rules = m.rules.current();
        let counts: Vec<(&str, tend_reactor::RuleCounts)> =
            rules.iter().map(|r| (&*r.name, r.stats.counts())).collect();
        t.counters(
            "tend_master_rule_fires_total",
            "Times each rule in force acted.",
            "rule",
            counts.iter().map(|(n, c)| (*n, c.fires)),
        );
        t.counters(
            "tend_master_rule_condition_errors_total",
            "Events a rule's condition could not be evaluated on (the rule did not act).",
            "rule",
            counts.iter().map(|(n, c)| (*n, c.condition_errors)),
        );
        t.counters(
            "tend_master_rule_action_errors_total",
            "Rule actions that could not be carried out (a template, a target, a full queue).",
            "rule",
            counts.iter().map(|(n, c)| (*n, c.action_errors)),
        );
        t.gauge(
            "tend_master_reactor_queue",
            "Stored events waiting for the reactor.",
            m.storage.reactor_backlog() as f64,
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
            if m.storage.failing().is_some() {
                1.0
            } else {
                0.0
            },
        );
        t.gauge(
            "tend_master_ingest_queue",
            "Messages from minions waiting to be stored.",
            m.stats.ingest_queue.load(Ordering::Relaxed) as f64,
        );
        let local = m.emitter.waiting();
        t.gauge(
            "tend_master_local_queue",
            "Events the master made itself, waiting to be stored.",
            local as f64,
        );
        t.gauge(
            "tend_master_last_event_id",
            "Store id of the last event stored.",
            m.storage.last_stored() as f64,
        );
        t.histograms(
            "tend_master_job_duration_seconds",
            "How long jobs took, from start to the last minion's answer.",
            "kind",
            &[
                ("apply", &m.stats.apply_seconds),
                ("run", &m.stats.run_seconds),
            ],
        );
    })
}
