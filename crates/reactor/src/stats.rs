//! What each rule did while in force: how often it acted, how often its
//! condition or an action failed, the last failure, and when it last
//! acted. Shared by the reactor's thread (which counts) and whoever shows
//! it (`tend rules`, the metrics), so it is counters behind an `Arc`, kept
//! across a reload for a rule of the same name.
//!
//! Failures are logged at a bounded rate: the first of a rule at once,
//! then at most one line a minute per rule, saying how many came since.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a rule's failures are logged at most, after its first.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What went wrong with a rule: its condition, or one of its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleFailure {
    /// The `when` condition could not be evaluated on an event (a missing
    /// key, a value of the wrong type): the rule did not act.
    Condition,
    /// An action could not be carried out (a template that does not
    /// render, a target that names no minion, a full action queue).
    Action,
}

/// One rule's counters, as they stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleCounts {
    /// Times the rule acted.
    pub fires: u64,
    /// Events its condition could not be evaluated on.
    pub condition_errors: u64,
    /// Actions that could not be carried out.
    pub action_errors: u64,
    /// The last failure, condition or action ("" when none).
    pub last_error: String,
    /// When it happened, microseconds since the Unix epoch (0: never).
    pub last_error_us: i64,
    /// When the rule last acted, microseconds since the Unix epoch (0: never).
    pub last_fired_us: i64,
}

/// A rule's counters, shared between the reactor's thread and readers.
#[derive(Debug, Default)]
pub struct RuleStats {
    fires: AtomicU64,
    condition_errors: AtomicU64,
    action_errors: AtomicU64,
    last_fired_us: AtomicI64,
    last: Mutex<LastError>,
}

#[derive(Debug, Default)]
struct LastError {
    text: String,
    at_us: i64,
    /// When a failure was last logged, and how many came since.
    logged: Option<Instant>,
    unlogged: u64,
}

impl RuleStats {
    /// The rule acted.
    pub fn fired(&self) {
        self.fires.fetch_add(1, Ordering::Relaxed);
        self.last_fired_us
            .store(tend_proto::now_us(), Ordering::Relaxed);
    }

    /// The rule `rule` (from `file`) failed with `error`: counted, kept as
    /// its last error, and logged unless it was logged less than a minute
    /// ago (the next line says how many came in between).
    pub fn failed(&self, rule: &str, file: &str, kind: RuleFailure, error: &str) {
        let counter = match kind {
            RuleFailure::Condition => &self.condition_errors,
            RuleFailure::Action => &self.action_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.text != error {
            last.text = error.to_string();
        }
        last.at_us = tend_proto::now_us();
        let due = last.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if !due {
            last.unlogged += 1;
            return;
        }
        let since = std::mem::take(&mut last.unlogged);
        last.logged = Some(Instant::now());
        drop(last);
        let what = match kind {
            RuleFailure::Condition => "rule condition could not be evaluated; the rule did not act",
            RuleFailure::Action => "rule action failed",
        };
        tracing::warn!(
            rule,
            file,
            error,
            more_since_last_logged = since,
            "{what} (logged at most once a minute per rule; `tend rules` counts every one)"
        );
    }

    /// The counters as they stand.
    pub fn counts(&self) -> RuleCounts {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        RuleCounts {
            fires: self.fires.load(Ordering::Relaxed),
            condition_errors: self.condition_errors.load(Ordering::Relaxed),
            action_errors: self.action_errors.load(Ordering::Relaxed),
            last_error: last.text.clone(),
            last_error_us: last.at_us,
            last_fired_us: self.last_fired_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_kind_and_the_last_is_kept() {
        let s = RuleStats::default();
        s.failed("r", "r.toml", RuleFailure::Condition, "No such key: kind");
        s.failed("r", "r.toml", RuleFailure::Condition, "No such key: kind");
        s.failed("r", "r.toml", RuleFailure::Action, "no minion matches");
        s.fired();
        let c = s.counts();
        assert_eq!((c.fires, c.condition_errors, c.action_errors), (1, 2, 1));
        assert_eq!(c.last_error, "no minion matches");
        assert!(c.last_error_us > 0 && c.last_fired_us > 0);
        // The second condition error and the action error came within the
        // minute: not logged, waiting to be counted in the next line.
        assert_eq!(s.last.lock().unwrap().unlogged, 2);
    }
}
