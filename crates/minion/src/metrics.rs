//! The minion's Prometheus metrics (`metrics_listen` in minion.toml):
//! events per beacon, beacon errors and drops, the outbox, the link to the
//! master, state runs and commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tend_bus::BusStats;
use tend_daemon::metrics::{Histogram, Render, Text};

#[derive(Default)]
pub struct BeaconCounts {
    pub events: u64,
    pub errors: u64,
    pub dropped: u64,
}

#[derive(Default)]
pub struct MinionMetrics {
    /// By beacon name; kept across reloads (a counter never goes back).
    pub beacons: Mutex<BTreeMap<String, BeaconCounts>>,
    /// Events written to the outbox (from beacons, scripts, the minion).
    pub events_written: AtomicU64,
    pub outbox_unacked: AtomicU64,
    pub outbox_bytes: AtomicU64,
    pub outbox_acked_seq: AtomicU64,
    pub connected: AtomicBool,
    /// Masters this minion has a session with (of those it lists).
    pub masters_connected: AtomicU64,
    pub apply_seconds: Histogram,
    pub run_seconds: Histogram,
    /// State results by outcome (ok, changed, failed, ...).
    pub state_results: Mutex<BTreeMap<&'static str, u64>>,
}

impl MinionMetrics {
    /// One event from beacon `name`: kinds "error" and "dropped" are the
    /// beacon's own reports.
    pub fn beacon_event(
        &self,
        name: &str,
        kind: &str,
        data: &serde_json::Map<String, serde_json::Value>,
    ) {
        let mut b = self.beacons.lock().unwrap_or_else(|p| p.into_inner());
        // On every beacon event: no allocation once the beacon is known.
        if !b.contains_key(name) {
            b.insert(name.to_string(), BeaconCounts::default());
        }
        let Some(c) = b.get_mut(name) else { return };
        c.events += 1;
        match kind {
            "error" => c.errors += 1,
            "dropped" => c.dropped += data.get("dropped").and_then(|d| d.as_u64()).unwrap_or(0),
            _ => {}
        }
    }

    pub fn state_result(&self, outcome: &'static str) {
        *self
            .state_results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }
}

pub fn render(
    m: Arc<MinionMetrics>,
    bus: Arc<BusStats>,
    beacons_running: Arc<AtomicU64>,
) -> Render {
    Arc::new(move |t: &mut Text| {
        {
            let b = m.beacons.lock().unwrap_or_else(|p| p.into_inner());
            t.counters(
                "tend_minion_beacon_events_total",
                "Events beacons produced (their errors and drop reports included), by beacon.",
                "beacon",
                b.iter().map(|(k, c)| (k.as_str(), c.events)),
            );
            t.counters(
                "tend_minion_beacon_errors_total",
                "Errors beacons reported (a watched path gone, a command that cannot run), by beacon.",
                "beacon",
                b.iter().map(|(k, c)| (k.as_str(), c.errors)),
            );
            t.counters(
                "tend_minion_beacon_dropped_total",
                "Events a beacon's rate_limit dropped (counted and reported), by beacon.",
                "beacon",
                b.iter().map(|(k, c)| (k.as_str(), c.dropped)),
            );
        }
        t.gauge(
            "tend_minion_beacons",
            "Beacons running.",
            beacons_running.load(Ordering::Relaxed) as f64,
        );
        t.counter(
            "tend_minion_events_written_total",
            "Events written to the outbox.",
            m.events_written.load(Ordering::Relaxed),
        );
        t.gauge(
            "tend_minion_outbox_events",
            "Events in the outbox the master has not acknowledged yet.",
            m.outbox_unacked.load(Ordering::Relaxed) as f64,
        );
        t.gauge(
            "tend_minion_outbox_bytes",
            "Size of the outbox on disk.",
            m.outbox_bytes.load(Ordering::Relaxed) as f64,
        );
        t.gauge(
            "tend_minion_acked_seq",
            "Highest event seq the master acknowledged as stored.",
            m.outbox_acked_seq.load(Ordering::Relaxed) as f64,
        );
        t.gauge(
            "tend_minion_connected",
            "1 when the minion has a session with its master (with several, any).",
            if m.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        t.gauge(
            "tend_minion_masters_connected",
            "How many of its masters the minion has a session with.",
            m.masters_connected.load(Ordering::Relaxed) as f64,
        );
        {
            let r = m.state_results.lock().unwrap_or_else(|p| p.into_inner());
            t.counters(
                "tend_minion_state_results_total",
                "States applied, by outcome.",
                "outcome",
                r.iter().map(|(k, v)| (*k, *v)),
            );
        }
        t.histograms(
            "tend_minion_job_duration_seconds",
            "How long state runs and commands took on this minion.",
            "kind",
            &[("apply", &m.apply_seconds), ("run", &m.run_seconds)],
        );
        t.counter_set("tend_minion_bus", "Bus", bus.snapshot());
    })
}
